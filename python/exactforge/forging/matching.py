"""The attacks that optimise synthetic examples until their gradient matches a logged update.

* ``gradmatch``: the short paper's Algorithm 1. All b examples of the batch are optimised by Adam
  (alpha = 0.5, betas = (0.9, 0.999), eps = 1e-8) on D = ||eta grad L(B') - eta grad L(B)||_2, with
  no constraint on the values; labels are the batch's, the inputs start from random examples of the
  same class in D minus U. Forging fraction 1.
* ``gradmatch-subset``: exactforge's earlier variant: only the removed examples are optimised, on
  the squared, unscaled distance, projected to the data's declared range after each Adam step.
* ``dlg``: Deep Leakage from Gradients (Zhu et al. 2019): b dummy inputs and b dummy labels drawn
  from noise (labels as softmax of Gaussian logits), optimised together by L-BFGS on the squared
  gradient distance. Forging fraction 1; the labels are soft, so its batch is never in the domain.
* ``idlg``: the removed examples only, with their labels fixed (what iDLG's label recovery gives),
  started from random dataset examples, L-BFGS on the squared distance, projected to the data's range.

Data that declares no range is not projected.

The logged update stands for grad L(B): (theta_t - theta_{t+1}) / eta.
"""

from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

import numpy as np

__all__ = ["MATCHING", "OBJECTIVES", "synthesise"]

MATCHING = ("gradmatch", "gradmatch-subset", "dlg", "idlg")

# What each attack minimises, as its row in a report states it.
OBJECTIVES = {
    "gradmatch": "||eta g(B') - eta g(B)||_2 by Adam, all b examples, unconstrained",
    "gradmatch-subset": "||g(B') - g(B)||_2^2 by Adam, removed examples only, projected to the data's range",
    "dlg": "||g(B') - g(B)||_2^2 by L-BFGS, b dummy inputs and soft labels from noise",
    "idlg": "||g(B') - g(B)||_2^2 by L-BFGS, removed examples, true labels, projected to the data's range",
}


def _start_like(data: Any, rng: np.random.Generator, labels: np.ndarray, avoid: Sequence[int]) -> np.ndarray:
    """For each label, a random dataset example of that class outside ``avoid`` (dataset indices)."""
    pool = np.setdiff1d(np.arange(len(data)), np.asarray(avoid, np.int64))
    out = []
    for lab in labels:
        cls = pool[data.y[pool] == lab]
        out.append(int(rng.choice(cls if len(cls) else pool)))
    return np.asarray(out, np.int64)


def _grad_distance(model: Any, params: List[Any], target: Any) -> Callable[[Any, Any], Any]:
    """(x, y) -> the flat gradient of the batch's mean cross-entropy minus ``target``, differentiable."""
    import torch

    def diff(xb, yb):
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        return torch.cat([g.reshape(-1) for g in grads]) - target

    return diff


def _adam(xhat: Any, objective: Callable[[], Any], steps: int, alpha: float, box: Any) -> None:
    import torch

    opt = torch.optim.Adam([xhat], lr=alpha, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(steps):
        opt.zero_grad()
        objective().backward()
        opt.step()
        if box is not None:
            with torch.no_grad():
                xhat.clamp_(*box)


def _lbfgs(variables: List[Any], objective: Callable[[], Any], steps: int) -> None:
    import torch

    opt = torch.optim.LBFGS(variables, lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        obj = objective()
        obj.backward()
        return obj

    opt.step(closure)


def synthesise(
    ctx: Any,
    method: str,
    U: List[int],
    keep: np.ndarray,
    g_target: np.ndarray,
    steps: int,
    alpha: float,
    project: bool,
    rng: np.random.Generator,
) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    """The forged batch (inputs b x d, labels, dataset index per example or -1 where synthesised)."""
    import torch

    if method not in MATCHING:
        raise ValueError(f"method: expected one of {MATCHING}, got {method!r}")
    data = ctx.data
    shape = data.shape or (data.dim,)
    st = ctx.stepper()
    st.load(ctx.theta)
    params = list(st.model.parameters())
    target = torch.from_numpy(g_target.astype(np.float32))
    diff = _grad_distance(st.model, params, target)
    X_t = torch.from_numpy(data.X).reshape(len(data), *shape)
    y_t = torch.from_numpy(data.y)
    b = len(ctx.batch)
    if method == "gradmatch":
        labels = data.y[np.asarray(ctx.batch, np.int64)]
        xhat = X_t[torch.from_numpy(_start_like(data, rng, labels, U))].clone().requires_grad_(True)
        yb = torch.from_numpy(labels)
        _adam(xhat, lambda: ctx.lr * diff(xhat, yb).norm(), steps, alpha, None)
        return xhat.detach().reshape(b, -1).numpy(), labels, [-1] * b
    if method == "dlg":
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        xhat = torch.randn((b, *shape), generator=gen).requires_grad_(True)
        logits = torch.randn((b, data.num_classes), generator=gen).requires_grad_(True)
        _lbfgs([xhat, logits], lambda: diff(xhat, torch.softmax(logits, dim=1)).pow(2).sum(), steps)
        soft = torch.softmax(logits.detach(), dim=1).numpy().astype(np.float32)
        return xhat.detach().reshape(b, -1).numpy(), soft, [-1] * b
    # The subset variants: the kept examples stay, the removed ones are synthesised.
    xk, yk = X_t[torch.from_numpy(keep)], y_t[torch.from_numpy(keep)]
    y_u = y_t[torch.tensor(U)]
    xhat = X_t[torch.from_numpy(rng.choice(len(data), len(U)))].clone().requires_grad_(True)

    def squared():
        return diff(torch.cat([xk, xhat]), torch.cat([yk, y_u])).pow(2).sum()

    box = (float(data.domain[0]), float(data.domain[1])) if project and data.domain is not None else None
    if method == "gradmatch-subset":
        _adam(xhat, squared, steps, alpha, box)
    else:
        _lbfgs([xhat], squared, steps)
        if box is not None:
            with torch.no_grad():
                xhat.clamp_(*box)
    Xf = np.concatenate([data.X[keep].reshape(len(keep), -1), xhat.detach().reshape(len(U), -1).numpy()])
    Yf = np.concatenate([data.y[keep], y_u.numpy()])
    return Xf, Yf, keep.tolist() + [-1] * len(U)
