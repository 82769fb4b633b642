"""Data augmentation whose draws a verifier can recompute: keyed to (seed, step, example).

torchvision's RandomCrop and RandomHorizontalFlip draw from torch's global RNG in batch order:
the crop an example gets depends on where it sits in the batch and on every draw before it,
and no trace holds that stream, so an augmented loop cannot be replayed. ``KeyedAugment``
draws each example's crop offset, flip and quarter turn from a hash of (seed, step, dataset
index of the example), like keyed dropout: a pure function that follows the example under any
batch order. The transforms themselves are copies (padding with zeros, slicing, reversing,
rotating by multiples of 90 degrees), so they give the same bits on every machine.

In a recorded loop::

    aug = KeyedAugment(crop_padding=4, hflip=True, seed=1)
    with TraceRecorder(..., augment=aug) as rec:
        for idx in batches:
            x = rec.augment(X[idx], idx)      # this step's draws
            ...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch

from .functional import _splitmix, _word

__all__ = ["KeyedAugment", "torch_crop_flip", "normalize"]

_FIELDS = {"crop_padding": int, "hflip": bool, "rot90": bool, "seed": int}
MAX_PADDING = 64


@dataclass(frozen=True)
class KeyedAugment:
    """Random crop of the input's size from the image padded with ``crop_padding`` zeros on
    every side (torchvision's ``RandomCrop(size, padding=crop_padding)``), then a horizontal
    flip with probability 1/2 (``hflip``), then a rotation by 0, 90, 180 or 270 degrees, each
    with probability 1/4 (``rot90``; square images). Inputs are (batch, channels, height,
    width)."""

    crop_padding: int = 0
    hflip: bool = False
    rot90: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for k, kind in _FIELDS.items():
            v = getattr(self, k)
            if type(v) is not kind:
                raise ValueError(f"{k}: expected {kind.__name__}, got {v!r}")
        if not 0 <= self.crop_padding <= MAX_PADDING:
            raise ValueError(f"crop_padding: expected 0..{MAX_PADDING}, got {self.crop_padding}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed: expected an integer in 0..2^63-1, got {self.seed}")

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.rot90

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "KeyedAugment":
        """From a manifest's ``augment`` entry (untrusted: exactly these fields, bounded)."""
        if not isinstance(d, dict) or set(d) != set(_FIELDS):
            raise ValueError(f"augment: expected exactly the fields {sorted(_FIELDS)}")
        return cls(**d)

    def draws(self, step: int, examples: Any) -> np.ndarray:
        """(len(examples), 4) integers: row i is example i's (crop row, crop column, flip,
        quarter turns)."""
        ex = np.asarray(examples)
        if ex.ndim != 1 or not np.issubdtype(ex.dtype, np.integer):
            raise ValueError("examples: expected a 1-D sequence of integer dataset indices")
        # a tag apart from dropout's layer numbers keeps the two streams independent
        base = _splitmix(_splitmix(_splitmix(_word(self.seed)) ^ _word(step)) ^ _word(2**62 + 7))
        h = _splitmix(_splitmix(base ^ ex.astype(np.int64).astype(np.uint64))[:, None] ^ np.arange(4, dtype=np.uint64))
        span = np.uint64(2 * self.crop_padding + 1)
        out = np.zeros((len(ex), 4), dtype=np.int64)
        out[:, 0] = (h[:, 0] >> np.uint64(11)) % span
        out[:, 1] = (h[:, 1] >> np.uint64(11)) % span
        out[:, 2] = (h[:, 2] >> np.uint64(63)) if self.hflip else 0
        out[:, 3] = (h[:, 3] >> np.uint64(62)) if self.rot90 else 0
        return out

    def __call__(self, x: torch.Tensor, *, step: int, examples: Any) -> torch.Tensor:
        """The augmented batch: example i drawn with the key (seed, step, examples[i])."""
        if x.dim() != 4:
            raise ValueError(f"x: expected images (batch, channels, height, width), got shape {tuple(x.shape)}")
        if len(np.asarray(examples)) != x.shape[0]:
            raise ValueError(f"examples: expected one dataset index per example ({x.shape[0]})")
        if self.rot90 and x.shape[2] != x.shape[3]:
            raise ValueError(f"rot90: quarter turns keep the shape of square images only, got {tuple(x.shape[2:])}")
        if not self.active:
            return x
        d = self.draws(step, examples)
        p, H, W = self.crop_padding, x.shape[2], x.shape[3]
        padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
        out = []
        for i in range(x.shape[0]):
            img = padded[i, :, d[i, 0] : d[i, 0] + H, d[i, 1] : d[i, 1] + W]
            if d[i, 2]:
                img = img.flip(-1)
            if d[i, 3]:
                img = torch.rot90(img, int(d[i, 3]), dims=(1, 2))
            out.append(img)
        return torch.stack(out).contiguous()


def torch_crop_flip(x: torch.Tensor, generator: Optional[torch.Generator] = None, padding: int = 4) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding) then RandomHorizontalFlip, image by image, drawn
    from torch's RNG (or ``generator``) in batch order and logged nowhere: what the reference
    Proof-of-Learning's CIFAR loop does. For writing such proofs and measuring what replaying
    them costs; a recorded loop uses KeyedAugment."""
    H, W = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    out = []
    for img in padded:
        i, j = (int(v) for v in torch.randint(0, 2 * padding + 1, (2,), generator=generator))
        crop = img[:, i : i + H, j : j + W]
        out.append(crop.flip(-1) if bool(torch.rand((), generator=generator) < 0.5) else crop)
    return torch.stack(out)


def normalize(x: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """torchvision's Normalize, as it runs after its transforms: (x - mean) / std per channel
    (axis 1), two IEEE operations in x's dtype. The proof writer and the verifier share it, so
    the inputs they feed are the same bits."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m, s = (torch.tensor([float(v) for v in vs], dtype=x.dtype).reshape(shape) for vs in (mean, std))
    return (x - m) / s
