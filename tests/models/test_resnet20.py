"""ResNet-20: the reference's parameter names and count, and on the reproducible path gradients
that match autograd's and keep their bits under any batch order and thread count; a recorded
CIFAR-style loop (keyed crops and flips) verifies at epsilon 0 under a shuffled batch order."""

from __future__ import annotations

import copy

import pytest
import torch

import exactforge
import exactforge.nn as xnn
from exactforge.cli import main
from exactforge.models.zoo import build_model


def test_resnet20_has_the_references_shape():
    m = build_model("resnet20", (3, 32, 32), 10)
    assert sum(p.numel() for p in m.parameters()) == 269_722  # "0.27M"
    keys = list(m.state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"] and "layer3.2.bn2.running_var" in keys
    assert keys[-2:] == ["linear.weight", "linear.bias"]


@pytest.mark.slow
def test_reproducible_resnet20_matches_autograd_and_ignores_order_and_threads():
    torch.manual_seed(0)
    net = build_model("resnet20", (3, 16, 16), 10, seed=1)
    x = torch.randn(6, 3, 16, 16)
    y = torch.randint(0, 10, (6,))

    def grads(m, loss, xs, ys):
        m.zero_grad()
        loss(m(xs), ys).backward()
        return [p.grad.clone() for p in m.parameters()]

    g64 = grads(xnn.reproducible(copy.deepcopy(net).double()), xnn.cross_entropy, x.double(), y)
    t64 = grads(copy.deepcopy(net).double(), torch.nn.functional.cross_entropy, x.double(), y)
    assert max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g64, t64)) < 1e-10
    rep = xnn.reproducible(copy.deepcopy(net))
    state = copy.deepcopy(rep.state_dict())
    g = grads(rep, xnn.cross_entropy, x, y)
    perm = torch.tensor([3, 5, 0, 1, 4, 2])
    rep.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(g, grads(rep, xnn.cross_entropy, x[perm], y[perm])))
    before = exactforge.get_num_threads(), torch.get_num_threads()
    try:
        exactforge.set_num_threads(1)
        torch.set_num_threads(1)
        rep.load_state_dict(state)
        assert all(torch.equal(a, b) for a, b in zip(g, grads(rep, xnn.cross_entropy, x, y)))
    finally:
        exactforge.set_num_threads(before[0])
        torch.set_num_threads(before[1])


@pytest.mark.slow
def test_a_recorded_resnet20_loop_with_keyed_crops_verifies_under_any_order(tmp_path):
    out = str(tmp_path / "t")
    train = ["train", "--model", "resnet20", "--dataset", "digits", "--augment", "crop-flip", "--steps", "3"]
    assert main(train + ["--batch-size", "12", "--checkpoint-every", "2", "--out", out, "--quiet"]) == 0
    assert main(["verify", out, "--permute-batches", "5", "--threads", "1", "--quiet"]) == 0
