"""theta_0: a declared seed is checked whatever the manifest's 'initial' says; a theta_0 no seed
reproduces is reported unverified, and the reference Proof-of-Learning's Kolmogorov-Smirnov
test of each layer against its initialisation law is offered for it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from exactforge.cli import main
from exactforge.data import load_digits
from exactforge.models import native as M
from exactforge.trace.record import TraceRecorder, record_native
from exactforge.verify import verify_trace

from hostile import rechain

DIGITS = load_digits()
SPEC = M.ModelSpec("fcn", 64, 10, (16,))


@pytest.fixture
def seed1(tmp_path):
    d = str(tmp_path / "t")
    record_native(d, SPEC, DIGITS, steps=4, batch_size=32, lr=0.05, seed=1)
    return d


def test_a_seeded_trace_is_verified(seed1):
    rep = verify_trace(seed1)
    assert rep.accepted and rep.initial == "seeded" and rep.initial_verified


def test_a_declared_seed_is_checked_when_theta_0_is_called_given(seed1):
    def claim(m):
        m["initial"], m["seed"] = "given", 0  # theta_0 came from seed 1

    rechain(seed1, manifest_edit=claim)
    rep = verify_trace(seed1)
    assert not rep.valid and "seed 0" in rep.reason


def test_a_given_theta_0_without_a_seed_is_reported_unverified(seed1, capsys):
    def claim(m):
        m["initial"] = "given"
        del m["seed"]

    rechain(seed1, manifest_edit=claim)
    rep = verify_trace(seed1)
    assert rep.accepted and rep.initial == "given" and not rep.initial_verified
    assert main(["verify", seed1, "--quiet"]) == 0
    assert "theta_0 given, unverified" in capsys.readouterr().out


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def _record(out, model):
    X, y = torch.from_numpy(DIGITS.X), torch.from_numpy(DIGITS.y)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with TraceRecorder(out, model, opt, DIGITS, batch_size=32, steps=3) as rec:
        for idx in np.random.default_rng(0).choice(len(DIGITS), (3, 32)):
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(idx)


def test_the_initialisation_test_passes_a_fresh_model(tmp_path, capsys):
    d = str(tmp_path / "fresh")
    _record(d, _mlp())
    rep = verify_trace(d, model=_mlp(), initial_test=True)
    assert rep.accepted and not rep.initial_verified
    assert rep.initial_test and all(t["passed"] for t in rep.initial_test)
    assert {t["tensor"] for t in rep.initial_test} == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_the_initialisation_test_rejects_a_model_trained_before_its_trace(tmp_path):
    model = _mlp()
    X, y = torch.from_numpy(DIGITS.X), torch.from_numpy(DIGITS.y)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):  # training that the trace does not show
        loss = torch.nn.functional.cross_entropy(model(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = str(tmp_path / "pretrained")
    _record(d, model)
    assert verify_trace(d, model=_mlp()).accepted  # without the test: nothing to see
    rep = verify_trace(d, model=_mlp(), initial_test=True)
    assert rep.valid and not rep.accepted and "not distributed as a fresh initialisation" in rep.reason
    assert main(["verify", d, "--initial-test", "--quiet"]) == 2  # a torch trace needs the verifier's model
    assert os.path.exists(d)
