"""The three benchmark models of issue 2 (MLP, CNN, transformer encoder), shared by the
benchmarks; each benchmark picks its own batch and sequence sizes."""

from __future__ import annotations

import torch
from torch import nn


def mlp(batch: int = 128):
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                          nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    return model, torch.randn(batch, 784), torch.randint(0, 10, (batch,))


def cnn(batch: int = 64):
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    model = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), nn.Flatten(), nn.Linear(128 * 4 * 4, 10))
    return model, torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=256, nhead=4, dim_feedforward=1024, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
        self.head = nn.Linear(256, 10)

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


def transformer(batch: int = 16, seq: int = 128):
    return Encoder(), torch.randn(batch, seq, 256), torch.randint(0, 10, (batch,))


class GPT2Small(nn.Module):
    """GPT-2 small's shape (12 layers, d=768, 12 heads, vocab 50257), random init, from
    ``transformers``; ``forward`` returns the logits of the last position (classification-style
    loss like the other benchmark models)."""

    def __init__(self):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(n_positions=1024, n_embd=768, n_layer=12, n_head=12)
        self.lm = GPT2LMHeadModel(cfg)

    def forward(self, ids):
        return self.lm(input_ids=ids).logits[:, -1]


def gpt2(batch: int = 8, seq: int = 256):
    """GPT-2-small-sized (124M parameters): for the GPU run; far too slow for 2 CPU cores."""
    return GPT2Small(), torch.randint(0, 50257, (batch, seq)), torch.randint(0, 50257, (batch,))
