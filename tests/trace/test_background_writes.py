"""A recorder writes its files through one background thread: same order, same atomic writes;
a failed write surfaces in the loop, and what reached the disk is a valid prefix."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch

from exactforge.data import load_dataset
from exactforge.trace import Trace
from exactforge.trace import writer as W
from exactforge.trace.record import TraceRecorder
from exactforge.verify import verify_trace

DATA = load_dataset("digits")
X, Y = torch.from_numpy(DATA.X), torch.from_numpy(DATA.y)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 10))


def loop(out, steps, every=2):
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    with TraceRecorder(out, m, opt, DATA, checkpoint_every=every, batch_size=8) as rec:
        for _ in range(steps):
            idx = rng.choice(len(DATA), 8, replace=False)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(X[idx]), Y[idx]).backward()
            opt.step()
            rec.step(idx)


def test_a_recorded_trace_is_whole_when_the_block_ends(tmp_path):
    loop(str(tmp_path / "t"), 9)
    tr = Trace.open(str(tmp_path / "t"))
    assert tr.complete and tr.num_records == 9
    assert verify_trace(str(tmp_path / "t"), model=model()).accepted


def test_a_failed_background_write_is_raised_and_leaves_a_valid_prefix(tmp_path, monkeypatch):
    real, calls = W.atomic_write, []

    def failing(path, data):
        calls.append(path)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real(path, data)

    monkeypatch.setattr(W, "atomic_write", failing)
    with pytest.raises(OSError, match="No space left"):
        loop(str(tmp_path / "t"), 12)
    monkeypatch.setattr(W, "atomic_write", real)
    tr = Trace.open(str(tmp_path / "t"))
    assert not tr.complete and tr.num_records < 12
    rep = verify_trace(str(tmp_path / "t"), model=model(), allow_partial=True)
    assert rep.valid and rep.accepted and rep.partial
