"""Models with known faults (and healthy controls) for the detector tests.

Each scenario trains a small model on a fixed synthetic task under ``gs.watch`` and
returns what the tests look at: the watcher, the live warnings, and the step at which
the fault was planted where that matters. Everything is seeded and CPU-sized, so each
scenario runs in well under a second or two on 2 cores.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradsight as gs
from gradsight.warnings import GradsightWarning


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is fastest and immune to other processes competing for cores.
    Use as ``pytestmark = pytest.mark.usefixtures("one_thread")`` after importing it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@dataclass
class Run:
    watcher: gs.Watcher
    model: nn.Module
    warnings: list = field(default_factory=list)   # GradsightWarning messages, in order
    losses: list = field(default_factory=list)

    def findings(self):
        return self.watcher.findings()


def train(model: nn.Module, opt: torch.optim.Optimizer, batch, steps: int, loss_fn, *, clip: float | None = None,
          scaler=None, autocast: torch.dtype | None = None, watch: dict | None = None,
          on_step=None, watch_optimizer: bool = True) -> Run:
    """A plain training loop under gs.watch(model, optimizer=opt) (or without optimizer=, closing
    each step with w.step()); records GradsightWarnings."""
    gen = torch.Generator().manual_seed(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GradsightWarning)
        w = gs.watch(model, optimizer=opt if watch_optimizer else None, **(watch or {}))
        run = Run(w, model)
        for step in range(steps):
            if on_step is not None:
                on_step(step, model)
            x, y = batch(gen)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                out = model(x)
                loss = loss_fn(out, y)
            if scaler is not None:
                scaler.scale(loss).backward()
                if clip is not None:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                if clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
            run.losses.append(float(loss.detach()))
            if not watch_optimizer:
                w.step(loss)
            elif scaler is None:
                w.step(loss)  # with optimizer= the step is closed already: this records its loss
    run.warnings = [str(c.message) for c in caught if issubclass(c.category, GradsightWarning)]
    return run


def classification(n: int = 64, d: int = 32, k: int = 10):
    def batch(gen):
        x = torch.randn(n, d, generator=gen)
        return x, (x[:, :k] * torch.arange(1, k + 1)).argmax(dim=1)  # learnable labels
    return batch


def regression(n: int = 64, d: int = 32, k: int = 10, scale: float = 3.0):
    def batch(gen):
        x = torch.randn(n, d, generator=gen)
        return x, x[:, :k] * scale
    return batch


def he_mlp(d: int = 32, width: int = 128, out: int = 10) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


# --- healthy controls -------------------------------------------------------------------

def healthy_mlp(steps: int = 50) -> Run:
    torch.manual_seed(0)
    model = he_mlp()
    return train(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), classification(),
                 steps, F.cross_entropy)


def healthy_cnn(steps: int = 50) -> Run:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def batch(gen):
        x = torch.randn(32, 3, 16, 16, generator=gen)
        return x, (x.mean(dim=(2, 3)) * torch.tensor([1.0, -1.0, 0.5])).sum(1).gt(0).long() * 3

    return train(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), batch, steps,
                 F.cross_entropy)


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 64, d: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, x):
        return self.head(self.encoder(self.emb(x)))


def healthy_transformer(steps: int = 50) -> Run:
    torch.manual_seed(0)
    model = TinyTransformer()

    def batch(gen):
        x = torch.randint(0, 64, (16, 12), generator=gen)
        return x, x.roll(1, dims=1)  # predict the previous token

    return train(model, torch.optim.AdamW(model.parameters(), lr=1e-3), batch, steps,
                 lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)))


# --- faults ---------------------------------------------------------------------------------

def deep_sigmoid(steps: int = 30, depth: int = 16) -> Run:
    """16 x (Linear + Sigmoid): each sigmoid scales gradients by <= 0.25 — they vanish."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 10))
    return train(model, torch.optim.SGD(model.parameters(), lr=0.1), classification(), steps, F.cross_entropy)


def saturated_tanh(steps: int = 12) -> Run:
    """Tanh ('1') after a Linear initialised with std 2: |pre-activation| ~ 10, outputs pinned at +-1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    nn.init.normal_(model[0].weight, std=2.0)
    return train(model, torch.optim.SGD(model.parameters(), lr=0.01), classification(), steps, F.cross_entropy)


class TwoHeads(nn.Module):
    """Two independent regression heads; ``big`` is initialised with std 1 (He would be ~0.18)."""

    def __init__(self):
        super().__init__()
        self.healthy = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
        self.big = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
        for m in self.big:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1.0)

    def forward(self, x):
        return self.healthy(x), self.big(x)


def large_init(steps: int = 20) -> Run:
    torch.manual_seed(0)
    model = TwoHeads()
    return train(model, torch.optim.Adam(model.parameters(), lr=1e-3), regression(k=4, scale=1.0), steps,
                 lambda out, y: F.mse_loss(out[0], y) + F.mse_loss(out[1], y))


def dead_relu(steps: int = 30, revive_at: int | None = None) -> Run:
    """A ReLU ('3') after a Linear ('2') whose bias is -10: no unit ever fires. With
    ``revive_at``, the bias is reset to +1 at that step and the units come back."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[2].bias.fill_(-10.0)

    def on_step(step, m):
        if step == revive_at:
            with torch.no_grad():
                m[2].bias.fill_(1.0)

    return train(model, torch.optim.SGD(model.parameters(), lr=0.01), regression(d=16, k=4, scale=1.0), steps,
                 F.mse_loss, on_step=on_step)


class LogFeatures(nn.Module):
    """log of a Linear output: NaN for every negative value (forward)."""

    def forward(self, x):
        return torch.log(x)  # LOG_LINE


class SafeSqrt(nn.Module):
    """sqrt inside torch.where: the forward is finite, the backward is NaN for x < 0."""

    def forward(self, x):
        return torch.where(x > 0, torch.sqrt(x), torch.zeros_like(x))  # SQRT_LINE


def forward_nan(steps: int = 5, nan_trace: str = "module") -> Run:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), LogFeatures(), nn.Linear(16, 4))
    return train(model, torch.optim.SGD(model.parameters(), lr=0.01), regression(d=8, k=4), steps, F.mse_loss,
                 watch={"nan_trace": nan_trace})


def backward_nan(steps: int = 5, nan_trace: str = "module") -> Run:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), SafeSqrt(), nn.Linear(16, 4))
    return train(model, torch.optim.SGD(model.parameters(), lr=0.01), regression(d=8, k=4), steps, F.mse_loss,
                 watch={"nan_trace": nan_trace})


def nan_in_loss(steps: int = 3, nan_trace: str = "op") -> Run:
    """The model is fine; the loss takes the sqrt of negative numbers (NaN forward and backward)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return train(model, torch.optim.SGD(model.parameters(), lr=0.01), regression(d=8, k=4), steps,
                 lambda out, y: torch.sqrt(out - 100.0).mean(),  # LOSS_LINE
                 watch={"nan_trace": nan_trace})


class TinyGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by 1e-38 (below bf16's smallest normal)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * 1e-38


class ShrinkGrad(nn.Module):
    def forward(self, x):
        return TinyGrad.apply(x)


def bf16_underflow(steps: int = 12) -> Run:
    """bf16 autocast on CPU; ShrinkGrad ('3') makes every gradient before it tiny."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), ShrinkGrad(), nn.ReLU(),
                          nn.Linear(64, 4))
    return train(model, torch.optim.SGD(model.parameters(), lr=0.01), regression(d=16, k=4, scale=1.0), steps,
                 lambda out, y: F.mse_loss(out.float(), y), autocast=torch.bfloat16)


class InfGrad(torch.autograd.Function):
    """Identity forward; an Inf in the backward (a gradient that overflows at any loss scale)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad + float("inf")


class OverflowingGrad(nn.Module):
    def __init__(self, active: bool = True):
        super().__init__()
        self.active = active

    def forward(self, x):
        return InfGrad.apply(x) if self.active else x


def grad_scaler(steps: int = 12, init_scale: float = 2.0 ** 20, always_inf: bool = False,
                watch_optimizer: bool = True) -> Run:
    """float16 autocast on CPU with torch.amp.GradScaler('cpu'): the initial loss scale is too large,
    so the first steps overflow float16 and are skipped while the scale halves (a calibration
    run). With ``always_inf`` a layer's gradient is Inf at any scale: every step is skipped."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), OverflowingGrad(always_inf), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return train(model, opt, regression(d=16, k=4, scale=1.0), steps, lambda out, y: F.mse_loss(out.float(), y),
                 scaler=scaler, autocast=torch.float16, watch={"scaler": scaler}, watch_optimizer=watch_optimizer)


def diverging_lr(steps: int = 12) -> Run:
    """A He-initialised MLP with SGD at lr 0.5 on regression: the loss grows ~30x per step
    and overflows to Inf/NaN a few steps in."""
    torch.manual_seed(0)
    model = he_mlp()
    return train(model, torch.optim.SGD(model.parameters(), lr=0.5), regression(), steps, F.mse_loss)


def aggressive_clipping(steps: int = 12, max_norm: float = 1e-3, watch_optimizer: bool = True) -> Run:
    """clip_grad_norm_ with max_norm 1e-3 while the gradient norm is ~4: clipped ~4000x every step."""
    torch.manual_seed(0)
    model = he_mlp()
    return train(model, torch.optim.SGD(model.parameters(), lr=0.05), classification(), steps,
                 F.cross_entropy, clip=max_norm, watch_optimizer=watch_optimizer)


# --- real architectures, random init (issue 10: zero false alarms, role-aware thresholds) ---------

def _token_batch(vocab: int, n: int = 8, seq: int = 16):
    def batch(gen):
        x = torch.randint(0, vocab, (n, seq), generator=gen)
        return x, x.roll(1, dims=1)
    return batch


class HFCausalLM(nn.Module):
    """A random-init GPT-2 from ``transformers`` (config built in code, nothing downloaded)."""

    def __init__(self, dropout: float = 0.1, n_layer: int = 2):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        cfg = GPT2Config(vocab_size=512, n_positions=32, n_embd=64, n_layer=n_layer, n_head=4,
                         resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                         bos_token_id=0, eos_token_id=0)
        self.lm = GPT2LMHeadModel(cfg)

    def forward(self, x):
        return self.lm(input_ids=x).logits


class HFClassifier(nn.Module):
    """A random-init BERT sequence classifier (issue 10's false-alarm case, smaller)."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        cfg = BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, num_labels=3, max_position_embeddings=32)
        self.bert = BertForSequenceClassification(cfg)

    def forward(self, x):
        return self.bert(input_ids=x).logits


class ResNetish(nn.Module):
    """A small ResNet-style CNN: conv-BN-ReLU stem, two residual blocks, pooled head."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                                  nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False),
                                                  nn.BatchNorm2d(c)) for _ in range(2))
        self.act = nn.ReLU()
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = self.act(x + b(x))
        return self.head(x.mean(dim=(2, 3)))


def _image_batch(n: int = 16, size: int = 12):
    def batch(gen):
        x = torch.randn(n, 3, size, size, generator=gen)
        return x, (x.mean(dim=(2, 3)) * torch.tensor([1.0, -1.0, 0.5])).sum(1).gt(0).long() * 3
    return batch


def _seq_ce(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def bench_transformer() -> nn.Module:
    """The benchmark transformer (benchmarks/models.py), at a test-sized width."""
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            return self.head(self.encoder(x).mean(dim=1))

    return Encoder()


def _bench_batch(gen):
    x = torch.randn(8, 12, 32, generator=gen)
    return x, (x[:, :, :10].mean(dim=1)).argmax(dim=1)


HEALTHY = {
    # name: (model factory, batch, loss)
    "mlp": (he_mlp, classification(), F.cross_entropy),
    "cnn_bn": (ResNetish, _image_batch(), F.cross_entropy),
    "transformer": (bench_transformer, _bench_batch, F.cross_entropy),
    "gpt2": (HFCausalLM, _token_batch(512), _seq_ce),
    "bert": (HFClassifier, _token_batch(512), lambda out, y: F.cross_entropy(out, y[:, 0] % 3)),
}
OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=3e-4),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.01),
}


def healthy(name: str, optimizer: str, steps: int = 60, watch: dict | None = None) -> Run:
    """One of the healthy architectures, trained ``steps`` steps with AdamW 3e-4 or SGD 0.01."""
    torch.manual_seed(0)
    factory, batch, loss_fn = HEALTHY[name]
    model = factory()
    return train(model, OPTIMIZERS[optimizer](model.parameters()), batch, steps, loss_fn, watch=watch)


# --- issue 10's cases ------------------------------------------------------------------------------

def deep_relu_3he(steps: int = 3, depth: int = 12) -> Run:
    """A 12-layer ReLU MLP initialised at three times He's std: gradients grow ~3x per layer."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for k in range(depth):
        lin = nn.Linear(32 if k == 0 else 64, 64 if k < depth - 1 else 10)
        nn.init.normal_(lin.weight, std=3.0 * (2.0 / lin.in_features) ** 0.5)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()] if k < depth - 1 else [lin]
    model = nn.Sequential(*layers)
    # a learning rate small enough that the weights stay as initialised: the findings are about the init
    return train(model, torch.optim.SGD(model.parameters(), lr=1e-9), classification(), steps, F.cross_entropy)


class DeadCNN(nn.Module):
    """conv1 -> relu1 -> conv2 (bias -100: every pre-activation negative) -> relu2 -> head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            self.conv2.bias.fill_(-100.0)

    def forward(self, x):
        return self.head(self.relu2(self.conv2(self.relu1(self.conv1(x)))).mean(dim=(2, 3)))


def dead_cnn(steps: int = 3) -> Run:
    torch.manual_seed(0)
    model = DeadCNN()
    return train(model, torch.optim.SGD(model.parameters(), lr=0.01), _image_batch(), steps, F.cross_entropy)


class Block(nn.Module):
    def __init__(self, d: int = 32):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.act = nn.GELU()
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return x + self.drop(self.act(self.fc(x)))


def fp16_flush(steps: int = 3, factor: float = 1e-8) -> Run:
    """float16 autocast on CPU, loss x 1e-8: every gradient flushes to zero in the backward."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.Sequential(Block(), Block(), nn.Identity()), nn.Linear(32, 10))
    return train(model, torch.optim.SGD(model.parameters(), lr=0.01), classification(), steps,
                 lambda out, y: F.cross_entropy(out.float(), y) * factor, autocast=torch.float16)
