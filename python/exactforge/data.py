"""Datasets. The embedded default is scikit-learn's bundled digits (8x8 handwritten digits,
17 grey levels): no download, so everything runs offline."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "load_digits"]


@dataclass(frozen=True)
class Dataset:
    """Examples X (n x d, float32) with labels y (n, int64); pixels lie on the grid q/levels."""

    name: str
    X: np.ndarray
    y: np.ndarray
    num_classes: int
    levels: int  # pixel values are q / levels, q = 0..levels

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])


def load_digits() -> Dataset:
    """scikit-learn's digits: 1797 examples, 64 pixels with values q/16, 10 classes."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    X = (d.data / 16.0).astype(np.float32)
    return Dataset("digits", np.ascontiguousarray(X), d.target.astype(np.int64), 10, 16)
