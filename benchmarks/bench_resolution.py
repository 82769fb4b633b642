"""The verifier's resolution: exact forgeries against the native verifier at epsilon = 0
with the domain check off, float32 vs float64 training.

theta_{t+1} = theta_t - lr * g is rounded to the checkpoint's precision, so a gradient change
below about ulp(theta)/(2 lr) can vanish: epsilon = 0 on float32 checkpoints cannot tell apart
gradients that differ by less than that. The exact solvers' forgeries (nullspace and
error-matrix) have equal real gradients. Their computed gradients differ by rounding only, so
against float32 checkpoints some of them reproduce the checkpoint bit for bit. Training in
float64 raises the resolution by 2^29.

For each data set, model and solver, this forges S steps of a native training run, recomputes
each step with the forged batch in the run's precision, and counts a *win* when the forged
batch is distinct and reproduces theta_{t+1} bit for bit (epsilon = 0, no domain check).

    python benchmarks/bench_resolution.py [--steps 30] [--blas-kernels auto,Haswell] [--figure-only]

The forger's arithmetic is NumPy's (its OpenBLAS, float64), and OpenBLAS picks its kernels for
the CPU at hand (SkylakeX on AVX-512 CPUs, Haswell or Zen on AVX2 ones). The forged inputs'
last bits follow that choice, and with them whether a forgery's rounding lands on the logged
checkpoint: the win counts are a property of the forger's machine, not of the verifier. Each
table is therefore run once per kernel of ``--blas-kernels`` (``auto``: the kernel OpenBLAS picks
here; any other name is forced with OPENBLAS_CORETYPE in a fresh process), and names it.

The figure (resolution.png, as in the report of ``exactforge reevaluate``) sets each exact
forgery's float64 gradient difference, per coordinate, beside the resolution of that coordinate
on the native logistic-regression verifier of breast-cancer.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from exactforge.data import load_dataset
from exactforge.forging import solvers as E
from exactforge.models import native as M
from exactforge.trace.record import batch_schedule
from exactforge.verify import resolution


def run(dataset: str, kind: str, method: str, dtype: str, steps: int, b: int, lr: float, seed: int):
    data = load_dataset(dataset)
    hidden = (8,) if kind == "fcn" else ()
    spec = M.ModelSpec(kind, data.dim, data.num_classes, hidden, dtype=dtype)
    params = M.init_params(spec, seed)
    X = data.X.astype(dtype)
    sched = batch_schedule(len(data), b, seed)
    wins, res = 0, []
    for t in range(steps):
        idx = next(sched)
        nxt = M.sgd_step(spec, params, X[idx], data.y[idx], idx, lr)
        res.append(resolution(nxt, lr)[0])
        f = (
            E.forge_nullspace(spec, params, X[idx].astype(np.float64), data.y[idx], scale=0.1, seed=seed + t)
            if method == "nullspace"
            else E.forge_error_matrix(spec, params, X[idx].astype(np.float64), data.y[idx], seed=seed + t)
        )
        Xf = np.asarray(f.X, dtype)
        Yf = np.asarray(f.Y)
        Yf = Yf.astype(dtype) if Yf.ndim == 2 else Yf.astype(np.int64)
        distinct = not (np.array_equal(Xf, X[idx]) and (Yf.ndim == 1 and np.array_equal(Yf, data.y[idx])))
        forged = M.sgd_step(spec, params, Xf, Yf, idx, lr)
        if distinct and all(np.array_equal(forged[k], nxt[k]) for k in nxt):
            wins += 1
        params = nxt
    return wins, float(np.median(res))


def blas_kernel() -> str:
    """The kernel set NumPy's OpenBLAS runs here (its 'architecture'), or 'unknown'."""
    try:
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            if lib.get("internal_api") == "openblas":
                return str(lib.get("architecture") or "unknown")
    except ImportError:
        pass
    return "unknown"


def table(args) -> None:
    forced = os.environ.get("OPENBLAS_CORETYPE")
    print(
        f"# exact forgeries vs the native verifier at epsilon = 0, no domain check ({args.steps} steps each, "
        f"b = {args.batch_size}, lr = {args.lr}); NumPy's OpenBLAS kernels: {blas_kernel()}"
        + (f" (forced: OPENBLAS_CORETYPE={forced})" if forced else " (picked for this CPU)")
        + "\n"
    )
    print("| data set | model | solver | float32: wins | float32 resolution | float64: wins | float64 resolution |")
    print("|---|---|---|---|---|---|---|")
    for dataset in ("digits", "breast-cancer", "wine"):
        for kind, method in (("logreg", "error-matrix"), ("logreg", "nullspace"), ("fcn", "nullspace")):
            row = []
            for dtype in ("float32", "float64"):
                w, r = run(dataset, kind, method, dtype, args.steps, args.batch_size, args.lr, 0)
                row.append(f"{w}/{args.steps} ({w / args.steps:.0%}) | {r:.2g}")
            print(f"| {dataset} | {kind} | {method} | " + " | ".join(row) + " |", flush=True)
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--figure-dir", default="docs/benchmarks/figures")
    ap.add_argument("--figure-only", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="one table, in this process's kernels")
    ap.add_argument("--blas-kernels", default="auto,Haswell", help="auto and OPENBLAS_CORETYPE names")
    args = ap.parse_args()
    if args.table_only:
        table(args)
        return
    print(f"date {time.strftime('%Y-%m-%d')}\n")
    _figure(args)
    if args.figure_only:
        return
    for kernel in args.blas_kernels.split(","):
        if kernel == "auto":
            table(args)
            continue
        env = dict(os.environ, OPENBLAS_CORETYPE=kernel)
        cmd = [sys.executable, __file__, "--table-only", "--steps", str(args.steps)]
        cmd += ["--batch-size", str(args.batch_size), "--lr", str(args.lr)]
        sys.stdout.flush()
        subprocess.run(cmd, env=env, check=True)


def _figure(args) -> None:
    from exactforge.forging.game import Verifier
    from exactforge.studies.reevaluate import resolution_study

    ver = Verifier(
        "logreg",
        "native",
        load_dataset("breast-cancer"),
        batch_size=args.batch_size,
        steps=min(args.steps, 10),
        lr=args.lr,
        seed=0,
    )
    st = resolution_study(ver, min(args.steps, 10), args.figure_dir)
    print(f"figure: {args.figure_dir}/{st['figure']}")
    print("| solver | step | max gradient difference | median resolution | coordinates below | accepted at eps 0 |")
    print("|---|---|---|---|---|---|")
    for f in st["forgeries"]:
        print(
            f"| {f['solver']} | {f['step']} | {f['max_gradient_difference']:.2g} | {f['median_resolution']:.2g} | "
            f"{f['fraction_below_resolution']:.1%} | {'yes' if f['accepted_at_epsilon_0'] else 'no'} |"
        )
    print()


if __name__ == "__main__":
    main()
