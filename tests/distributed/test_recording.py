"""A trace recorded by several processes (each holding part of every batch, under
DistributedDataParallel with exact_allreduce_hook) records the global batches and the world size,
and verifies at epsilon = 0 on one process."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import exactforge.nn as xnn

from conftest import spawn_group

BATCH, STEPS = 30, 4


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 10))


def _batches(n):
    rng = np.random.default_rng(3)
    return [rng.choice(n, BATCH, replace=False) for _ in range(STEPS)]


def _worker(rank, world, out):
    from torch.nn.parallel import DistributedDataParallel

    from exactforge.data import load_digits
    from exactforge.distributed import SharedBatch, exact_allreduce_hook
    from exactforge.trace.record import TraceRecorder

    data = load_digits()
    X, y = torch.from_numpy(data.X), torch.from_numpy(data.y)
    shared = SharedBatch()
    module = xnn.reproducible(_net(), mode=shared)
    model = DistributedDataParallel(module)
    model.register_comm_hook(shared, exact_allreduce_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cuts = np.linspace(0, BATCH, world + 1).astype(int)
    with TraceRecorder(
        out, module, opt, data, batch_size=BATCH, steps=STEPS, loss_fn=xnn.cross_entropy, checkpoint_every=2
    ) as rec:
        for idx in _batches(len(data)):
            mine = idx[cuts[rank] : cuts[rank + 1]]
            loss = xnn.cross_entropy(model(X[mine]), y[mine], mode=shared)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(mine)


def _alone(out):
    """The same training on one process, without torch.distributed."""
    from exactforge.data import load_digits
    from exactforge.trace.record import TraceRecorder

    data = load_digits()
    X, y = torch.from_numpy(data.X), torch.from_numpy(data.y)
    model = xnn.reproducible(_net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with TraceRecorder(
        out, model, opt, data, batch_size=BATCH, steps=STEPS, loss_fn=xnn.cross_entropy, checkpoint_every=2
    ) as rec:
        for idx in _batches(len(data)):
            loss = xnn.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(idx)


@pytest.mark.slow
def test_a_trace_recorded_by_several_processes_verifies_on_one(tmp_path):
    """Recorded by 2 and by 3 processes: each declares its world size, holds the global batches,
    verifies at epsilon = 0 on one process, and holds the checkpoints one process records."""
    from exactforge.trace import Trace
    from exactforge.verify import verify_trace

    alone = str(tmp_path / "alone")
    _alone(alone)
    ref = Trace.open(alone)
    for world in (2, 3):
        out = str(tmp_path / f"trace{world}")
        (tmp_path / f"group{world}").mkdir()
        spawn_group(world, tmp_path / f"group{world}", _worker, out)
        trace = Trace.open(out)
        man = json.loads(open(os.path.join(out, "manifest.json")).read())
        assert man["environment"]["world_size"] == world
        want = _batches(1797)
        for t in range(STEPS):
            assert np.array_equal(np.asarray(trace.record(t).batch), want[t])  # the global batch
        for t in range(0, STEPS + 1, 2):
            mine, theirs = trace.load_checkpoint(t), ref.load_checkpoint(t)
            assert mine.keys() == theirs.keys()
            for k in mine:  # the same bits
                assert (mine[k].dtype, mine[k].shape, mine[k].tobytes()) == (
                    theirs[k].dtype,
                    theirs[k].shape,
                    theirs[k].tobytes(),
                ), (world, t, k)
        report = verify_trace(out, model=xnn.reproducible(_net()), epsilon=0.0)
        assert report.accepted and report.max_error == 0.0
