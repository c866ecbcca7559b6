"""%load_ext gradsight and the %gradsight line magic, in a real IPython shell."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradsight as gs

pytest.importorskip("IPython")


@pytest.fixture()
def shell():
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "gradsight")
    return ip


def test_magic_lists_watchers_and_latest_findings(shell, capsys):
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    d = nn.Sequential(nn.Linear(4, 1))
    wg = gs.watch(g, name="generator", on_nonfinite="skip")
    wd = gs.watch(d, name="discriminator")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gs.GradsightWarning)
        x = torch.randn(8, 4)
        x[0, 0] = float("nan")
        g(x).sum().backward()
        wg.step()
    shell.run_line_magic("gradsight", "")
    out = capsys.readouterr().out
    assert "generator: 1 steps, 4 layers watched (on_nonfinite='skip')" in out
    assert "discriminator: 0 steps" in out and "no findings" in out
    assert "nan_origin" in out
    shell.run_line_magic("gradsight", "nobody")
    assert "no live watcher named 'nobody'" in capsys.readouterr().out
    wg.close()
    wd.close()
    shell.run_line_magic("gradsight", "")
    out = capsys.readouterr().out  # other tests' watchers may still be alive in this process
    assert "generator:" not in out and "discriminator:" not in out


def test_magic_without_watchers(monkeypatch):
    from gradsight import bus, magics

    monkeypatch.setattr(bus, "active_watchers", lambda: [])
    assert "no live watchers" in magics.status("")


def test_long_gradcheck_shows_a_progress_bar_short_one_does_not(monkeypatch, capsys):
    import gradsight.progress as progress

    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    gs.gradcheck(torch.tanh, x, mode="full")
    assert "gradcheck" not in capsys.readouterr().err  # quick: silent
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)  # as if every check ran long
    gs.gradcheck(torch.tanh, x, mode="full")
    assert "gradcheck" in capsys.readouterr().err  # tqdm.auto falls back to text outside a notebook
