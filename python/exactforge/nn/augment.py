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
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .functional.dropout import _splitmix, _word

__all__ = ["KeyedAugment", "StreamAugment", "augment_from_dict", "torch_crop_flip", "normalize"]

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
    """torchvision's RandomHorizontalFlip then RandomCrop(size, padding), image by image, drawn
    from torch's RNG (or ``generator``) in batch order as torchvision draws them (the flip's
    ``rand(1) < 0.5``, then the crop's row and column by ``randint``) and logged nowhere: what
    the reference Proof-of-Learning's CIFAR-10 loop does. For writing such proofs and measuring
    what replaying them without their draws costs; a recorded loop uses KeyedAugment."""
    H, W = x.shape[-2:]
    out = []
    for img in x:
        if bool(torch.rand(1, generator=generator) < 0.5):
            img = img.flip(-1)
        i = int(torch.randint(0, 2 * padding + 1, size=(1,), generator=generator).item())
        j = int(torch.randint(0, 2 * padding + 1, size=(1,), generator=generator).item())
        out.append(_padded_crop(img, i, j, padding, H, W))
    return torch.stack(out)


def _padded_crop(img: torch.Tensor, i: int, j: int, padding: int, H: int, W: int) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding) at row i, column j: the image padded with zeros
    on every side, then an H x W window (copies only: the same bits on every machine)."""
    padded = torch.nn.functional.pad(img, (padding, padding, padding, padding)) if padding else img
    return padded[:, i : i + H, j : j + W]


def normalize(x: torch.Tensor, mean: Any, std: Any) -> torch.Tensor:
    """torchvision's Normalize, as it runs after its transforms: (x - mean) / std per channel
    (axis 1), two IEEE operations in x's dtype. The proof writer and the verifier share it, so
    the inputs they feed are the same bits."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m, s = (torch.tensor([float(v) for v in vs], dtype=x.dtype).reshape(shape) for vs in (mean, std))
    return (x - m) / s


# -- the reference's augmentation, drawn from a recovered torch stream --------------------------

STREAM_TRANSFORMS = ("hflip", "crop")
_STREAM_FIELDS = {"kind": str, "transforms": list, "padding": int, "words": str, "batch_size": int, "workers": int}
_SNAPSHOT = 1 << 16  # outputs between kept generator states


class StreamAugment:
    """torchvision's ``RandomHorizontalFlip()`` and ``RandomCrop(size, padding)``, composed in
    the order ``transforms`` names them (the Proof-of-Learning reference's CIFAR-10 loop: flip,
    then crop with padding 4), each draw taken from one torch CPU stream as a DataLoader with
    ``num_workers`` = ``workers`` takes them: ``words`` are the stream's 624 untempered words
    where the DataLoader draws its base seed (recovered by :mod:`exactforge.pol.recover`).

    With no workers, example k of the run (k = step * batch_size + position in the batch) takes
    3 outputs from base seed + 2 on: the flip's uniform (flip if below 1/2), then the crop's
    row and column (x % (2 padding + 1)). With workers, worker w seeds a fresh generator with
    the base seed + w and serves batches w, w + workers, ... in turn. The transforms are copies
    (reversing, zero padding, slicing), so the inputs are the same bits torchvision's uint8 path
    gives after ``ToTensor``."""

    kind = "torch-stream"

    def __init__(
        self,
        words: str,
        *,
        batch_size: int,
        transforms: Any = STREAM_TRANSFORMS,
        padding: int = 4,
        workers: int = 0,
        batches: Any = None,
    ) -> None:
        from .mt19937 import N

        if not isinstance(words, str) or len(words) != 8 * N:
            raise ValueError(f"words: expected the generator's {N} words as {8 * N} hex digits")
        try:
            self._words = np.array([int(words[i : i + 8], 16) for i in range(0, 8 * N, 8)], dtype=np.uint32)
        except ValueError:
            raise ValueError("words: expected hex digits") from None
        t = list(transforms)
        if not t or len(t) != len(set(t)) or not set(t) <= set(STREAM_TRANSFORMS):
            raise ValueError(f"transforms: expected distinct names from {list(STREAM_TRANSFORMS)}, got {t!r}")
        for k, v, lo, hi in (
            ("padding", padding, 0, MAX_PADDING),
            ("batch_size", batch_size, 1, 1 << 20),
            ("workers", workers, 0, 1024),
        ):
            if type(v) is not int or not lo <= v <= hi:
                raise ValueError(f"{k}: expected an integer in {lo}..{hi}, got {v!r}")
        self.words, self.transforms, self.padding = words, tuple(t), padding
        self.batch_size, self.workers = batch_size, workers
        self._batches = batches  # step -> the logged dataset indices (to follow permuted batches)
        self._per = sum(1 if n == "hflip" else 2 for n in self.transforms)
        self._snaps: Dict[Any, List[np.ndarray]] = {}

    def to_dict(self) -> Dict[str, Any]:
        return {
            "kind": self.kind,
            "transforms": list(self.transforms),
            "padding": self.padding,
            "words": self.words,
            "batch_size": self.batch_size,
            "workers": self.workers,
        }

    @classmethod
    def from_dict(cls, d: Any, batches: Any = None) -> "StreamAugment":
        """From a manifest's ``augment`` entry (untrusted: exactly these fields, bounded)."""
        if not isinstance(d, dict) or set(d) != set(_STREAM_FIELDS) or d.get("kind") != cls.kind:
            raise ValueError(f"augment: expected exactly the fields {sorted(_STREAM_FIELDS)} with kind {cls.kind!r}")
        for k, kind in _STREAM_FIELDS.items():
            if type(d[k]) is not kind:
                raise ValueError(f"augment: {k} must be a {kind.__name__}")
        return cls(
            d["words"],
            batch_size=d["batch_size"],
            transforms=d["transforms"],
            padding=d["padding"],
            workers=d["workers"],
            batches=batches,
        )

    def _outputs(self, key: Any, first: int, count: int) -> np.ndarray:
        """Tempered outputs first .. first+count-1 of the stream ``key`` (None: the main one from
        ``words``; an int: a worker's, seeded with it), from the nearest kept state."""
        from . import mt19937 as mt

        snaps = self._snaps.setdefault(
            key, [self._words if key is None else mt.generate(mt.init_genrand(key), 2 * mt.N)[mt.N :]]
        )
        s = min(first // _SNAPSHOT, len(snaps) - 1)
        while s < first // _SNAPSHOT:  # keep a state every _SNAPSHOT outputs on the way
            snaps.append(mt.generate(snaps[s], _SNAPSHOT + mt.N)[_SNAPSHOT:])
            s += 1
        off = first - s * _SNAPSHOT
        return mt.temper(mt.generate(snaps[s], off + count)[off:])

    def base_seed(self) -> int:
        hi, lo = (int(v) for v in self._outputs(None, 0, 2))
        return ((hi << 32) | lo) % (1 << 63)

    def draws(self, step: int, count: int) -> np.ndarray:
        """(count, 3) integers: flip, crop row, crop column of positions 0..count-1 of step's
        batch (0 where a transform is absent)."""
        if self.workers == 0:
            key, first = None, 2 + (step * self.batch_size) * self._per
        else:
            w = step % self.workers
            key = (self.base_seed() + w) & 0xFFFFFFFF
            first = (step // self.workers) * self.batch_size * self._per
        x = self._outputs(key, first, count * self._per).reshape(count, self._per).astype(np.int64)
        out = np.zeros((count, 3), dtype=np.int64)
        c, span = 0, 2 * self.padding + 1
        for name in self.transforms:
            if name == "hflip":
                out[:, 0] = (x[:, c] & 0xFFFFFF) < (1 << 23)  # torch.rand(1) < 0.5
                c += 1
            else:
                out[:, 1], out[:, 2] = x[:, c] % span, x[:, c + 1] % span
                c += 2
        return out

    def _positions(self, step: int, examples: Any) -> np.ndarray:
        """Each example's position in the step's logged batch (a permuted batch keeps its draws)."""
        ex = np.asarray(examples, dtype=np.int64)
        logged = None if self._batches is None else np.asarray(self._batches(step), dtype=np.int64)
        if logged is None or (len(logged) == len(ex) and np.array_equal(logged, ex)):
            return np.arange(len(ex))
        free: Dict[int, List[int]] = {}
        for p, e in enumerate(logged.tolist()):
            free.setdefault(e, []).append(p)
        try:
            return np.array([free[e].pop(0) for e in ex.tolist()], dtype=np.int64)
        except (KeyError, IndexError):
            raise ValueError(f"examples: not the logged batch of step {step}") from None

    def __call__(self, x: torch.Tensor, *, step: int, examples: Any) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"x: expected images (batch, channels, height, width), got shape {tuple(x.shape)}")
        pos = self._positions(step, examples)
        d = self.draws(step, int(pos.max()) + 1 if len(pos) else 0)[pos]
        p, H, W = self.padding, x.shape[2], x.shape[3]
        out = []
        for i in range(x.shape[0]):
            img = x[i]
            for name in self.transforms:
                if name == "hflip" and d[i, 0]:
                    img = img.flip(-1)
                elif name == "crop":
                    img = _padded_crop(img, int(d[i, 1]), int(d[i, 2]), p, H, W)
            out.append(img)
        return torch.stack(out).contiguous()


def augment_from_dict(d: Any, batches: Any = None) -> Any:
    """A manifest's ``augment`` entry: a KeyedAugment, or a StreamAugment (``kind``)."""
    if isinstance(d, dict) and "kind" in d:
        return StreamAugment.from_dict(d, batches)
    return KeyedAugment.from_dict(d)
