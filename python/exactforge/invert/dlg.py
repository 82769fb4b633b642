"""Deep Leakage from Gradients (Zhu et al. 2019) with iDLG's labels (Zhao et al. 2020), for any
torch classifier trained with cross-entropy.

iDLG: with softmax cross-entropy the logit gradient of example i is p_i - onehot(y_i), so the
bias gradient of the last linear layer, mean_i (p_i - onehot(y_i)), is negative at an
example's label (for one example: only there), and b times its distance from the mean
prediction counts each label in a batch. Where the last layer has no bias, the row sums of
its weight gradient carry the same sign when the features entering it are non-negative.

DLG: the batch (with those labels fixed) is optimised by L-BFGS so that its gradient matches
the observed one, from a seeded random start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["DLGResult", "dlg", "recover_labels"]


def _last_linear(model: Any) -> Tuple[Any, int]:
    """The last nn.Linear of the model and the index of its weight among model.parameters()."""
    import torch

    params = list(model.parameters())
    last = None
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            last = mod
    if last is None:
        raise ValueError("model: iDLG reads the labels from a last linear layer, and this model has none")
    for i, p in enumerate(params):
        if p is last.weight:
            return last, i
    raise ValueError("model: the last linear layer's weight is not among model.parameters()")


def recover_labels(model: Any, grads: Sequence[Any], b: int) -> List[int]:
    """b labels of the batch behind ``grads`` (one tensor per model.parameters(), in order).

    With a bias, its gradient is mean_i p_i - counts / b, so the counts are b (pbar - grad);
    the mean prediction pbar is not observed and is taken as uniform (1 / classes), exact
    enough to round right while the predictions are not confident (an early step). The counts
    are rounded to sum to b (largest remainder). Without a bias, the classes whose weight
    gradient rows sum below zero, most negative first, repeated by their share."""
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"b: expected a positive batch size, got {b!r}")
    params = list(model.parameters())
    if len(grads) != len(params):
        raise ValueError(f"grads: expected one tensor per parameter ({len(params)}), got {len(grads)}")
    last, wi = _last_linear(model)
    if last.bias is not None:
        bi = next(i for i, p in enumerate(params) if p is last.bias)
        gb = np.asarray(grads[bi].detach().cpu().numpy(), dtype=np.float64).reshape(-1)
        est = np.clip(b * (1.0 / gb.size - gb), 0.0, None)
    else:
        score = np.asarray(grads[wi].detach().cpu().numpy(), dtype=np.float64).sum(axis=1)
        est = np.clip(-score, 0.0, None)
    if est.sum() <= 0:
        est = np.zeros_like(est)
        est[int(np.argmin(gb if last.bias is not None else score))] = 1.0
    share = est / est.sum() * b
    counts = np.floor(share).astype(int)
    for k in np.argsort(-(share - counts), kind="stable")[: b - int(counts.sum())]:
        counts[k] += 1
    out: List[int] = []
    for k in np.argsort(-share, kind="stable"):
        out += [int(k)] * int(counts[k])
    return out


@dataclass
class DLGResult:
    X: np.ndarray  # (b, *input_shape) reconstructed inputs
    labels: List[int]
    gradient_distance: float  # ||grad(X, labels) - grads||^2 at the end
    steps: int


def dlg(
    model: Any,
    grads: Sequence[Any],
    b: int,
    *,
    input_shape: Sequence[int],
    labels: Optional[Sequence[int]] = None,
    steps: int = 100,
    seed: int = 0,
    bounds: Optional[Tuple[float, float]] = None,
) -> DLGResult:
    """Reconstructs a batch of b inputs whose cross-entropy gradient at the model's current
    parameters matches ``grads``. ``labels``: known labels (default: iDLG's, from ``grads``).
    ``bounds``: clamp the inputs to a box after the optimisation (the data domain)."""
    import torch

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive number of L-BFGS iterations, got {steps!r}")
    params = list(model.parameters())
    target = [torch.as_tensor(g).detach().to(params[0].dtype) for g in grads]
    if len(target) != len(params) or any(t.shape != p.shape for t, p in zip(target, params)):
        raise ValueError("grads: expected one tensor per model parameter, of the parameter's shape")
    labels = list(labels) if labels is not None else recover_labels(model, grads, b)
    if len(labels) != b:
        raise ValueError(f"labels: expected {b} labels, got {len(labels)}")
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.rand((b, *input_shape), generator=gen, dtype=params[0].dtype).requires_grad_(True)
    y = torch.tensor(labels, dtype=torch.long)
    opt = torch.optim.LBFGS(
        [x],
        lr=1.0,
        max_iter=steps,
        history_size=50,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
    )

    def objective() -> Any:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        return sum(((a - t) ** 2).sum() for a, t in zip(g, target))

    def closure() -> Any:
        opt.zero_grad()
        obj = objective()
        obj.backward()
        return obj

    opt.step(closure)
    if bounds is not None:
        with torch.no_grad():
            x.clamp_(*bounds)
    final = float(objective().detach())
    return DLGResult(x.detach().cpu().numpy(), [int(v) for v in labels], final, steps)
