"""The flattened batch gradient of a native model in a chosen dtype: what the solvers forge
against and what the twins' float64 comparisons measure."""

from __future__ import annotations

import numpy as np

from ..models import layout
from ..models import native as M


def gradient(spec: M.ModelSpec, params: M.Params, X: np.ndarray, Y: np.ndarray, dtype: str = "float64") -> np.ndarray:
    """The flattened batch gradient in ``dtype`` (native fixed reductions in the given order)."""
    s = M.ModelSpec(spec.kind, spec.input_dim, spec.num_classes, spec.hidden, spec.bias, dtype)
    p = {k: np.asarray(v, dtype) for k, v in params.items()}
    Yc = np.asarray(Y) if np.asarray(Y).ndim == 1 else np.asarray(Y, dtype)
    _, g = M.loss_and_grad(s, M.check_params(s, p), np.asarray(X, dtype), Yc, np.arange(len(X)))
    return layout.flatten(s, g)
