"""Writing a proof in the reference's format from a plain torch loop: for tests, examples and
the side-by-side study (a proof exactforge did not record, made the way the reference makes
them)."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from ..data import Dataset
from ..nn.augment import normalize as normalize_inputs
from ..nn.augment import torch_crop_flip

__all__ = ["write_reference_proof"]


def write_reference_proof(
    out: str,
    model: Any,
    data: Dataset,
    *,
    steps: int,
    batch_size: int,
    save_freq: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    normalize: Optional[Sequence[Sequence[float]]] = None,
    seed: int = 0,
    random_crop_flip: bool = False,
) -> str:
    """Trains ``model`` as the reference's ``train.py`` does and writes its proof folder
    ``out``: per-epoch permutations cut into batches (``indices.npy``), ``model_step_<i>``
    (``torch.save`` of net, optimizer and scheduler state) before step i every ``save_freq``
    steps and after the last, SGD with MultiStepLR over steps, cross-entropy.
    ``random_crop_flip``: the CIFAR loop's RandomCrop(padding 4) and RandomHorizontalFlip,
    drawn from torch's RNG and logged nowhere, as the reference does. Returns ``out``."""
    import torch

    os.makedirs(out, exist_ok=False)
    rng = np.random.default_rng(seed)
    n = len(data)
    epochs = -(-steps * batch_size // n)
    seq = np.concatenate([rng.permutation(n) for _ in range(epochs)])[: steps * batch_size]
    indices = seq.reshape(steps, batch_size).astype(np.int64)
    np.save(os.path.join(out, "indices.npy"), indices)
    with open(os.path.join(out, "hash.txt"), "w") as f:
        f.write("0" * 64)  # no torchvision data set here: a placeholder the importer reports as unchecked
    X = torch.from_numpy(data.X).reshape(n, *(data.shape or (data.dim,)))
    y = torch.from_numpy(data.y)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma) if milestones else None
    loss_fn = torch.nn.CrossEntropyLoss()
    torch.manual_seed(seed)
    model.train()

    def save(i: int) -> None:
        state = {"net": model.state_dict(), "optimizer": opt.state_dict()}
        if sched is not None:
            state["scheduler"] = sched.state_dict()
        torch.save(state, os.path.join(out, f"model_step_{i}"))

    for i in range(steps):
        if i % save_freq == 0:
            save(i)
        xb = X[torch.from_numpy(indices[i])]
        if random_crop_flip:
            xb = torch_crop_flip(xb)
        if normalize is not None:  # torchvision's Normalize, after the transforms
            xb = normalize_inputs(xb, *normalize)
        opt.zero_grad()
        loss_fn(model(xb), y[torch.from_numpy(indices[i])]).backward()
        opt.step()
        if sched is not None:
            sched.step()
    save(steps)
    return out
