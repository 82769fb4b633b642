"""A token model under a SharedBatch: the embedding table's gradient sums each token's rows over
every process's positions (each process holding different tokens, some none of a token, a
padding token) with one process's bits, for 1, 2 and 3 processes, under DDP or not."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

import exactforge.nn as xnn

from conftest import spawn_group

BATCH, LENGTH, VOCAB = 7, 5, 17


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.embed = nn.Embedding(VOCAB, 4, padding_idx=0)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4 * LENGTH, 3)

    def forward(self, ids):
        return self.out(self.norm(self.embed(ids)).flatten(1))


def _data():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=g)
    ids[ids >= 15] = 3
    ids[0, :3] = 16  # a token on the first process only (its sum is the rows of one process)
    ids[-1, 0] = 15  # and a token held once, by the last
    return ids, torch.randint(0, 3, (BATCH,), generator=g)


def _grads(net, model, ids, y, mode):
    xnn.cross_entropy(net(ids), y, mode=mode).backward()
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


def _worker(rank, world, out, ddp):
    from torch.nn.parallel import DistributedDataParallel

    from exactforge.distributed import SharedBatch, exact_allreduce_hook

    ids, y = _data()
    cuts = np.linspace(0, BATCH, world + 1).astype(int)
    shared = SharedBatch()
    model = xnn.reproducible(_Tokens(), mode=shared)
    net = model
    if ddp:
        net = DistributedDataParallel(model)
        net.register_comm_hook(shared, exact_allreduce_hook)
    part = slice(cuts[rank], cuts[rank + 1])
    np.savez(os.path.join(out, f"rank{rank}.npz"), **_grads(net, model, ids[part], y[part], shared))


@pytest.mark.slow
@pytest.mark.parametrize("world, ddp", [(1, False), (2, False), (3, True)])
def test_an_embedding_gradient_over_processes_is_one_processs(world, ddp, tmp_path):
    spawn_group(world, tmp_path, _worker, str(tmp_path), ddp)
    ids, y = _data()
    model = xnn.reproducible(_Tokens())
    ref = _grads(model, model, ids, y, "exact")
    assert not ref["embed.weight"][0].any()  # the padding token's row
    for rank in range(world):
        got = np.load(tmp_path / f"rank{rank}.npz")
        for k, v in ref.items():
            assert np.array_equal(got[k].view(np.uint32), v.view(np.uint32)), (rank, k)
