"""Writing a proof in the reference's format from a plain torch loop: for tests, examples and
the side-by-side study (a proof exactforge did not record, made the way the reference makes
them)."""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any, Optional, Sequence

import numpy as np

from ..data import Dataset
from ..nn.augment import normalize as normalize_inputs
from ..nn.augment import torch_crop_flip

__all__ = ["write_reference_proof", "write_cifar10_folder"]


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
    ``random_crop_flip``: the CIFAR-10 loop's RandomHorizontalFlip and RandomCrop(padding 4),
    drawn from torch's global generator and logged nowhere, as the reference does: the generator
    is not reseeded (it continues from the model's initialisation, as in the reference's
    process), the DataLoader's base seed is drawn first, then each example's flip and crop.
    Returns ``out``."""
    import torch

    os.makedirs(out, exist_ok=False)
    rng = np.random.default_rng(seed)
    n = len(data)
    epochs = -(-steps * batch_size // n)
    seq = np.concatenate([rng.permutation(n) for _ in range(epochs)])[: steps * batch_size]
    indices = seq.reshape(steps, batch_size).astype(np.int64)
    np.save(os.path.join(out, "indices.npy"), indices)
    from .importer import reference_data_hash

    with open(os.path.join(out, "hash.txt"), "w") as f:
        # the reference's text hash where the data came from torchvision's files; a placeholder,
        # which the importer reports as unchecked, for data in other forms
        f.write(reference_data_hash(data) or "0" * 64)
    X = torch.from_numpy(data.X).reshape(n, *(data.shape or (data.dim,)))
    y = torch.from_numpy(data.y)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma) if milestones else None
    loss_fn = torch.nn.CrossEntropyLoss()
    if random_crop_flip:
        torch.empty((), dtype=torch.int64).random_()  # the DataLoader's base seed, as iter() draws it
    else:
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


class _Py2Pickler(pickle._Pickler):  # type: ignore[misc,name-defined]
    """Byte strings as Python 2 pickled its str (BINSTRING): CIFAR-10's real batches were
    written so, and torchvision reads them with ``encoding='latin1'`` (str keys)."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write(  # type: ignore[attr-defined]
            pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj
        )
        self.memoize(obj)  # type: ignore[attr-defined]

    dispatch[bytes] = save_bytes  # type: ignore[assignment]


def write_cifar10_folder(root: str, n: int = 320, seed: int = 7) -> str:
    """``root/cifar-10-batches-py`` as torchvision holds CIFAR-10, with ``n // 5`` random
    images in each of the five training batches (and 64 in ``test_batch``): for trying the
    reference's ``train.py`` and exactforge's import without the real files. The same bytes for
    the same (n, seed) on every machine. Returns the folder."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        m = n // 5 if name != "test_batch" else 64
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, m).tolist(),
            b"data": rng.integers(0, 256, (m, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * m,
        }
        with open(os.path.join(folder, name), "wb") as f:
            _Py2Pickler(f, protocol=2).dump(batch)
    meta = {b"label_names": [str(i).encode() for i in range(10)], b"num_cases_per_batch": n // 5, b"num_vis": 3072}
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        _Py2Pickler(f, protocol=2).dump(meta)
    return folder
