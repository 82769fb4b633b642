"""`exactforge demo`: how far one SGD step moves when only the aggregation order changes.

An FCN 64-100-10 on digits takes one SGD step on a batch of b examples. The step is
recomputed after permuting the batch (20 permutations) and with 1 and 2 threads; the table
reports the largest l2 distance to the first result, for torch (what users run today) and
for exactforge's two reproducible reductions, where it must be exactly 0."""
from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np

from . import _detmath, compile_options
from . import reduce as R
from .data import load_digits

__all__ = ["DemoRow", "DemoResult", "run_demo", "format_table"]

Params = Dict[str, np.ndarray]


@dataclass
class DemoRow:
    path: str
    permutation_l2: float  # max over the permutations of ||step - step_0||_2
    threads_l2: float      # ||step(1 thread) - step(2 threads)||_2
    bitwise: bool          # every recomputation bitwise equal to the first


@dataclass
class DemoResult:
    model: str
    dataset: str
    batch_size: int
    lr: float
    permutations: int
    rows: List[DemoRow] = field(default_factory=list)
    environment: Dict[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _init_params(rng: np.random.Generator, sizes=(64, 100, 10)) -> Params:
    p: Params = {}
    for i, (d0, d1) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        bound = 1.0 / np.sqrt(d0)  # torch.nn.Linear's default range
        p[f"W{i}"] = rng.uniform(-bound, bound, (d0, d1)).astype(np.float32)
        p[f"b{i}"] = rng.uniform(-bound, bound, d1).astype(np.float32)
    return p


def _flat(p: Params) -> np.ndarray:
    return np.concatenate([p[k].ravel() for k in sorted(p)]).astype(np.float64)


def exactforge_step(p: Params, X: np.ndarray, y: np.ndarray, idx: np.ndarray, lr: float, mode: str,
                    threads: int) -> Params:
    """One SGD step of the FCN with every reduction done by exactforge.reduce.
    Reductions over the batch use the examples' dataset indices as keys."""
    b = len(idx)
    Xb = X[idx]
    Z1 = R.matmul(Xb, p["W1"], mode=mode, threads=threads) + p["b1"]
    A1 = np.maximum(Z1, np.float32(0))
    Z2 = R.matmul(A1, p["W2"], mode=mode, threads=threads) + p["b2"]
    E = _detmath.exp(Z2 - Z2.max(axis=1, keepdims=True))
    P = E / R.sum(E, axis=1, mode=mode, threads=threads)[:, None]
    Y = np.zeros_like(P)
    Y[np.arange(b), y[idx]] = 1
    D2 = (P - Y) / np.float32(b)
    D1 = R.matmul(D2, np.ascontiguousarray(p["W2"].T), mode=mode, threads=threads) * (Z1 > 0)
    g = {
        "W2": R.matmul(np.ascontiguousarray(A1.T), D2, mode=mode, keys=idx, threads=threads),
        "b2": R.sum(D2, 0, mode=mode, keys=idx, threads=threads),
        "W1": R.matmul(np.ascontiguousarray(Xb.T), D1, mode=mode, keys=idx, threads=threads),
        "b1": R.sum(D1, 0, mode=mode, keys=idx, threads=threads),
    }
    return {k: (p[k] - np.float32(lr) * g[k]).astype(np.float32) for k in p}


def torch_step(p: Params, X: np.ndarray, y: np.ndarray, idx: np.ndarray, lr: float, threads: int) -> Params:
    """The same step with torch autograd and BLAS (nn.Linear layout: weight = W.T)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
        xb = torch.from_numpy(X[idx])
        z1 = torch.nn.functional.linear(xb, t["W1"].T, t["b1"])
        z2 = torch.nn.functional.linear(torch.relu(z1), t["W2"].T, t["b2"])
        loss = torch.nn.functional.cross_entropy(z2, torch.from_numpy(y[idx]))
        loss.backward()
        with torch.no_grad():
            return {k: (t[k] - lr * t[k].grad).numpy().astype(np.float32) for k in p}
    finally:
        torch.set_num_threads(prev)


def run_demo(batch_size: int = 1000, permutations: int = 20, lr: float = 0.01, seed: int = 0,
             progress: bool = False) -> DemoResult:
    if batch_size < 2:
        raise ValueError("batch_size: expected at least 2 examples")
    if permutations < 1:
        raise ValueError("permutations: expected at least 1")
    data = load_digits()
    if batch_size > len(data.X):
        raise ValueError(f"batch_size: digits has {len(data.X)} examples; choose at most that many")
    rng = np.random.default_rng(seed)
    params = _init_params(rng)
    idx = rng.choice(len(data.X), size=batch_size, replace=False)
    perms = [rng.permutation(batch_size) for _ in range(permutations)]

    paths = {
        "torch (BLAS, autograd)": lambda order, th: torch_step(params, data.X, data.y, idx[order], lr, th),
        "exactforge fixed": lambda order, th: exactforge_step(params, data.X, data.y, idx[order], lr, "fixed", th),
        "exactforge exact": lambda order, th: exactforge_step(params, data.X, data.y, idx[order], lr, "exact", th),
    }
    result = DemoResult("FCN 64-100-10", data.name, batch_size, lr, permutations)
    ident = np.arange(batch_size)
    for name, step in paths.items():
        ref = _flat(step(ident, 1))
        perm_d = [float(np.linalg.norm(_flat(step(o, 1)) - ref)) for o in perms]
        two = _flat(step(ident, 2))
        thr_d = float(np.linalg.norm(two - ref))
        result.rows.append(DemoRow(name, max(perm_d), thr_d,
                                   all(d == 0.0 for d in perm_d) and thr_d == 0.0))
        if progress:
            print(f"  {name}: done", flush=True)
    import torch

    result.environment = {"python": platform.python_version(), "torch": torch.__version__,
                          "machine": platform.machine(), "exactforge": compile_options()}
    return result


def format_table(r: DemoResult) -> str:
    head = (f"One SGD step of an {r.model} on {r.dataset}, batch b={r.batch_size}, lr={r.lr}, float32.\n"
            f"Distance (l2) of the recomputed parameters from the first computation:\n")
    cols = ("path", f"batch permuted (max of {r.permutations})", "1 vs 2 threads", "bitwise reproducible")
    rows = [(x.path, f"{x.permutation_l2:.3g}", f"{x.threads_l2:.3g}", "yes" if x.bitwise else "no") for x in r.rows]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return head + "\n".join([line(cols), sep] + [line(row) for row in rows])
