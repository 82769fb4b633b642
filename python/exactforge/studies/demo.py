"""`exactforge demo`: how far one SGD step moves when only the aggregation order changes.

An FCN 64-100-10 on digits takes one SGD step on a batch of b examples. The step is
recomputed after permuting the batch (20 permutations) and with 1 and 2 threads; the table
reports the largest l2 distance to the first result, for torch (what users run today) and
for exactforge's two reproducible reductions, where it must be exactly 0."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Dict, List

import numpy as np

from .. import compile_options
from .._backend.threads import threads as torch_threads
from ..data import load_digits
from ..models import layout
from ..models import native as M
from ..models.native import Params
from ..report import jsonio

__all__ = ["DemoRow", "DemoResult", "run_demo", "format_table"]


@dataclass
class DemoRow:
    path: str
    permutation_l2: float  # max over the permutations of ||step - step_0||_2
    threads_l2: float  # ||step(1 thread) - step(2 threads)||_2
    bitwise: bool  # every recomputation bitwise equal to the first


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
        return jsonio.dumps(asdict(self), indent=2)


SPEC = M.ModelSpec("fcn", 64, 10, (100,))


def torch_step(params: Params, X: np.ndarray, y: np.ndarray, idx: np.ndarray, lr: float, threads: int) -> Params:
    """The same step with torch autograd and BLAS (what users run today)."""
    import torch

    from ..models.torch_fcn import from_torch, to_torch

    with torch_threads(threads):
        model = to_torch(SPEC, params)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(X[idx])), torch.from_numpy(y[idx]))
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad  # type: ignore[operator,misc]
        return from_torch(SPEC, model)


def run_demo(
    batch_size: int = 1000, permutations: int = 20, lr: float = 0.01, seed: int = 0, progress: bool = False
) -> DemoResult:
    if batch_size < 2:
        raise ValueError("batch_size: expected at least 2 examples")
    if permutations < 1:
        raise ValueError("permutations: expected at least 1")
    data = load_digits()
    if batch_size > len(data.X):
        raise ValueError(f"batch_size: digits has {len(data.X)} examples; choose at most that many")
    rng = np.random.default_rng(seed)
    params = M.init_params(SPEC, seed)
    idx = rng.choice(len(data.X), size=batch_size, replace=False)
    perms = [rng.permutation(batch_size) for _ in range(permutations)]

    paths = {
        "torch (BLAS, autograd)": lambda order, th: torch_step(params, data.X, data.y, idx[order], lr, th),
        "exactforge fixed": lambda order, th: M.sgd_step(
            SPEC, params, data.X[idx[order]], data.y[idx[order]], idx[order], lr, mode="fixed", threads=th
        ),
        "exactforge exact": lambda order, th: M.sgd_step(
            SPEC, params, data.X[idx[order]], data.y[idx[order]], idx[order], lr, mode="exact", threads=th
        ),
    }
    result = DemoResult("FCN 64-100-10", data.name, batch_size, lr, permutations)
    ident = np.arange(batch_size)
    for name, step in paths.items():
        ref = layout.flatten(SPEC, step(ident, 1))
        perm_d = [float(np.linalg.norm(layout.flatten(SPEC, step(o, 1)) - ref)) for o in perms]
        two = layout.flatten(SPEC, step(ident, 2))
        thr_d = float(np.linalg.norm(two - ref))
        result.rows.append(DemoRow(name, max(perm_d), thr_d, all(d == 0.0 for d in perm_d) and thr_d == 0.0))
        if progress:
            print(f"  {name}: done", flush=True)
    import torch

    result.environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "exactforge": compile_options(),
    }
    return result


def format_table(r: DemoResult) -> str:
    head = (
        f"One SGD step of an {r.model} on {r.dataset}, batch b={r.batch_size}, lr={r.lr}, float32.\n"
        f"Distance (l2) of the recomputed parameters from the first computation:\n"
    )
    cols = ("path", f"batch permuted (max of {r.permutations})", "1 vs 2 threads", "bitwise reproducible")
    rows = [(x.path, f"{x.permutation_l2:.3g}", f"{x.threads_l2:.3g}", "yes" if x.bitwise else "no") for x in r.rows]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return head + "\n".join([line(cols), sep] + [line(row) for row in rows])
