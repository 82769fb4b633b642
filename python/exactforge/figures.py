"""Figures (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

__all__ = ["plot_forgery"]


def _image_shape(d: int) -> Optional[tuple]:
    s = int(math.isqrt(d))
    if s * s == d:
        return (s, s)
    if d % 3 == 0 and math.isqrt(d // 3) ** 2 == d // 3:  # CIFAR-like, channels first
        s = math.isqrt(d // 3)
        return (3, s, s)
    return None


def plot_forgery(X: np.ndarray, Xf: np.ndarray, path: str, *, n: int = 8, title: str = "",
                 labels: Optional[Sequence[str]] = None) -> str:
    """Original examples (top row) above their forgeries (bottom row), like the papers'
    Figures 12-13. Images when the input is a square (or 3-channel square) picture, else
    line plots of the feature vectors. Values outside [0, 1] are shown clipped, and the
    colour scale of each forged image is its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(X))
    shape = _image_shape(X.shape[1])
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6), squeeze=False)
    for i in range(n):
        for row, data in enumerate((X, Xf)):
            ax = axes[row][i]
            v = np.asarray(data[i], np.float64)
            if shape is None:
                ax.plot(v, lw=0.8)
            elif len(shape) == 2:
                ax.imshow(v.reshape(shape), cmap="gray", vmin=None if row else 0, vmax=None if row else 1)
            else:
                img = np.clip(v.reshape(shape).transpose(1, 2, 0), 0, 1)
                ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][i].set_title(labels[i] if labels is not None else f"#{i}", fontsize=8)
    axes[0][0].set_ylabel("original")
    axes[1][0].set_ylabel("forged")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
