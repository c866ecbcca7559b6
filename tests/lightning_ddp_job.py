"""One process of a Lightning ``Trainer(strategy="ddp", accelerator="cpu", devices=2)`` job with the
gradsight callback, run by tests/test_integrations_lightning_ddp.py as ``python this.py OUT`` in two
processes started together with the torchrun variables (``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``/``MASTER_PORT``), as ``torchrun`` or a cluster would (Lightning's own launcher
would start rank 1 again at the second fit).

Two fits in a row, each a scenario: ``healthy``, then ``nan_rank1`` (rank 1's batch holds a NaN at
step ``NAN_STEP``). Each rank writes ``OUT/<scenario>/rank<r>.json``: its findings, ``w.ranks()``,
its steps, the GradsightWarnings it raised, and what the dashboard of its live watcher shows (rank
dropdown, the rank-that-went-wrong-first line); rank 0 also writes the dashboard's Ranks tab as
``OUT/<scenario>/ranks_tab.png``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

import gradsight as gs
from gradsight.integrations.lightning import GradsightCallback

STEPS = 6
NAN_STEP = 3


class Tiny(pl.LightningModule):
    def __init__(self, nan_rank: int | None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        self.nan_rank = nan_rank

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_rank == self.nan_rank and batch_idx == NAN_STEP:
            x = x.clone()
            x[0, 0] = float("nan")
        return ((self(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class DashboardProbe(pl.Callback):
    """At the end of training, while the watcher is still live (teardown closes it): its dashboard."""

    def __init__(self, cb: GradsightCallback, out: Path):
        self.cb, self.out = cb, out
        self.seen: dict = {}

    def on_train_end(self, trainer, pl_module):
        from gradsight.widgets.dashboard import RANKS_TAB

        dash = self.cb.watcher.dashboard()
        dash.tabs.selected_index = RANKS_TAB
        png = bytes(dash.images["ranks"].value)
        if trainer.global_rank == 0:
            (self.out / "ranks_tab.png").write_bytes(png)
        self.seen = {"titles": list(dash.tabs.titles), "rank_options": [list(o) for o in dash.rank_choice.options],
                     "rank_value": dash.rank_choice.value, "note": dash.rank_note.value, "png_bytes": len(png),
                     "header": dash.header.value}
        dash.close()


def fit(out: Path, scenario: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(STEPS * 16, 8, generator=g), torch.randn(STEPS * 16, 1, generator=g)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    cb = GradsightCallback()
    probe = DashboardProbe(cb, out)
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=STEPS, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[cb, probe])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gs.GradsightWarning)
        trainer.fit(Tiny(nan_rank=1 if scenario == "nan_rank1" else None), data)
    w = cb.watcher
    result = {
        "rank": w.rank, "world_size": w.world_size, "closed": w.closed,
        "findings": w.findings().astype({"step": int}).to_dict("records"),
        "ranks": w.ranks().to_dict("records"),
        "steps": w.steps()["step"].tolist(),
        "warnings": [str(c.message) for c in caught if issubclass(c.category, gs.GradsightWarning)],
        "dashboard": probe.seen,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result, default=str))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    for scenario in ("healthy", "nan_rank1"):
        fit(out / scenario, scenario)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
