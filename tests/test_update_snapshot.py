"""When the weights are copied for the update norm: just before a torch optimizer's step (so
the copy never sits through forward and backward, on top of the activations), or at the
forward's start for updates made by hand — and the update norms are exact either way."""

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(update: str, steps: int = 4):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if update != "manual" else None
    w = gs.watch(model, optimizer=opt if update == "optimizer=" else None, histogram_every=1)
    held_in_forward = []
    model[0].register_forward_pre_hook(lambda m, a: held_in_forward.append(w._capture._snapshot is not None))
    truth, measured = [], []
    for _ in range(steps):
        loss = model(torch.randn(8, 6)).pow(2).mean()
        loss.backward()
        before = [p.detach().clone() for p in model.parameters()]
        if opt is None:
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
        else:
            opt.step()
            opt.zero_grad()
        truth.append([float(((p.detach() - b) ** 2).sum()) for p, b in zip(model.parameters(), before, strict=True)])
        if update != "optimizer=":
            w.step(loss)
        measured.append(w.last_record().param_update_sumsq.astype(float))
    w.close()
    return np.array(truth), np.array(measured), held_in_forward


@pytest.mark.parametrize("update", ["optimizer=", "global hook"])
def test_a_torch_optimizer_update_is_measured_without_a_copy_held_through_forward(update):
    truth, measured, held = _train(update)
    np.testing.assert_allclose(measured, truth, rtol=1e-4)
    assert not any(held)  # the copy is taken at the optimizer's step, not at the forward's start


def test_updates_made_by_hand_are_measured_from_the_second_measuring_step():
    truth, measured, held = _train("manual")
    assert np.isnan(measured[0]).all()  # no optimizer seen yet: the first measuring step learns that
    np.testing.assert_allclose(measured[1:], truth[1:], rtol=1e-4)
    assert held[1:] == [True] * 3
