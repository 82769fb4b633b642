"""Benchmark of the exact forging solvers.

* structured (two SVDs) vs the paper's Kronecker construction where both run
  (d0 = 64, d1 = 8, b = 32 on digits); both nullities are checked equal before timing;
* the structured solver at MNIST size (784-128-10, b = 100, synthetic 784-pixel data:
  no MNIST here) -- the whole forgery: D1 from the model, SVDs, projection;
* forging every step of a 1000-step native trace (FCN 64-8-10, b = 32), batched SVDs;
* float32 approximation error of forgeries vs torch's batch-permutation reproduction error;
* in-domain search (LP in the box, MILP on the grid): status and time by instance size.

  python benchmarks/bench_exact.py [--out benchmarks/out/exact.json]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shutil
import tempfile
import time

import numpy as np

from exactforge.data import load_digits
from exactforge.forging import solvers as E
from exactforge.models import native as M
from exactforge.report import jsonio
from exactforge.trace import Trace
from exactforge.trace.record import record_native

from _common import min_time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/out/exact.json")
    ap.add_argument("--trace-steps", type=int, default=1000)
    args = ap.parse_args()
    res = {"date": _dt.date.today().isoformat(), "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    digits = load_digits()

    # 1. structured vs Kronecker
    spec = M.ModelSpec("fcn", 64, 10, (8,))
    params = M.init_params(spec, 0)
    X, y = digits.X[:32], digits.y[:32]
    W1, D1 = E._layer1(spec, params, X, y)
    U, V = E.fcn_perturbation_basis(W1, D1)
    N = E.kronecker_nullspace(W1, D1)
    assert U.shape[1] * V.shape[1] == N.shape[1]
    t_struct = min_time(lambda: E.fcn_perturbation_basis(W1, D1))
    t_kron = min_time(lambda: E.kronecker_nullspace(W1, D1), repeats=2)
    res["structured_vs_kronecker"] = {
        "d0": 64,
        "d1": 8,
        "b": 32,
        "nullity": int(N.shape[1]),
        "paper_bound": E.paper_bound(64, 8, 32),
        "structured_s": t_struct,
        "kronecker_s": t_kron,
        "speedup": t_kron / t_struct,
    }
    print(
        f"structured {t_struct * 1e3:.2f} ms vs Kronecker {t_kron * 1e3:.0f} ms: {t_kron / t_struct:.0f}x "
        f"(nullity {N.shape[1]}, paper bound {E.paper_bound(64, 8, 32)})",
        flush=True,
    )

    # 2. MNIST size
    rng = np.random.default_rng(0)
    mspec = M.ModelSpec("fcn", 784, 10, (128,))
    mparams = M.init_params(mspec, 0)
    Xm = (rng.integers(0, 256, (100, 784)) / 255.0).astype(np.float32)
    ym = rng.integers(0, 10, 100)
    Xt = (rng.integers(0, 256, (100, 784)) / 255.0).astype(np.float32)
    f = E.forge_nullspace(mspec, mparams, Xm, ym, target=Xt)
    assert np.linalg.norm(E.gradient(mspec, mparams, f.X, ym) - E.gradient(mspec, mparams, Xm, ym)) < 1e-10
    t_mnist = min_time(lambda: E.forge_nullspace(mspec, mparams, Xm, ym, target=Xt))
    res["mnist_size"] = {"sizes": "784-128-10", "b": 100, "seconds": t_mnist, "nullity": f.info["nullity"]}
    print(f"MNIST-size forgery (784-128, b=100): {t_mnist * 1e3:.1f} ms", flush=True)

    # 3. every step of a 1000-step trace
    tmp = tempfile.mkdtemp()
    try:
        tspec = M.ModelSpec("fcn", 64, 10, (8,))
        tr_dir = os.path.join(tmp, "tr")
        record_native(tr_dir, tspec, digits, steps=args.trace_steps, batch_size=32, lr=0.05)
        tr = Trace.open(tr_dir)
        t0 = time.perf_counter()
        W1s, D1s, Xs, Xts = [], [], [], []
        for t in range(args.trace_steps):
            p = M.check_params(tspec, tr.load_checkpoint(t))
            idx = tr.batch(t)
            w, d = E._layer1(tspec, p, digits.X[idx], digits.y[idx])
            W1s.append(w), D1s.append(d), Xs.append(digits.X[idx]), Xts.append(digits.X[(idx + 1) % len(digits)])
        t_prep = time.perf_counter() - t0
        t0 = time.perf_counter()
        forged = E.forge_nullspace_batched(np.stack(W1s), np.stack(D1s), np.stack(Xs), np.stack(Xts))
        t_solve = time.perf_counter() - t0
        worst = 0.0
        for t in range(0, args.trace_steps, max(1, args.trace_steps // 20)):  # spot-check gradients
            p = M.check_params(tspec, tr.load_checkpoint(t))
            idx = tr.batch(t)
            g0 = E.gradient(tspec, p, digits.X[idx], digits.y[idx])
            worst = max(
                worst, float(np.linalg.norm(E.gradient(tspec, p, forged[t], digits.y[idx]) - g0) / np.linalg.norm(g0))
            )
        assert worst < 1e-12
    finally:
        shutil.rmtree(tmp)
    res["whole_trace"] = {
        "steps": args.trace_steps,
        "b": 32,
        "sizes": "64-8-10",
        "prepare_s": t_prep,
        "solve_s": t_solve,
        "worst_rel_grad_err_f64": worst,
    }
    print(
        f"forging all {args.trace_steps} steps: {t_prep:.2f} s loading checkpoints and D1, {t_solve:.2f} s solving "
        f"(batched); worst relative gradient error {worst:.1e}",
        flush=True,
    )

    # 4. approximation error vs reproduction error
    rows = []
    for name, sp, meth, b in [
        ("logreg, error-matrix", M.ModelSpec("logreg", 64, 10), "error-matrix", 100),
        ("FCN 64-8-10, nullspace", M.ModelSpec("fcn", 64, 10, (8,)), "nullspace", 32),
        ("FCN 64-100-10, nullspace", M.ModelSpec("fcn", 64, 10, (100,)), "nullspace", 128),
    ]:
        p = M.init_params(sp, 0)
        idx = np.random.default_rng(1).choice(len(digits), b, replace=False)
        Xb, yb = digits.X[idx], digits.y[idx]
        Xtb = digits.X[np.random.default_rng(2).choice(len(digits), b, replace=False)]
        fb = (
            E.forge_error_matrix(sp, p, Xb, yb, target=Xtb)
            if meth == "error-matrix"
            else E.forge_nullspace(sp, p, Xb, yb, target=Xtb)
        )
        r = E.forgery_report(sp, p, Xb, yb, fb, lr=0.01, levels=16, torch_permutations=20)
        rows.append(
            {
                "case": name,
                "b": b,
                "approx_error_f32": r.approx_error,
                "approx_error_f64": r.approx_error_f64,
                "torch_repro": r.repro_error_torch,
                "ratio": r.ratio_to_torch_repro,
                "in_range": r.in_range_fraction,
                "one_hot": r.labels_one_hot,
            }
        )
        print(
            f"{name} b={b}: approx {r.approx_error:.2e} (f64 {r.approx_error_f64:.1e}) vs torch repro "
            f"{r.repro_error_torch:.2e}: ratio {r.ratio_to_torch_repro:.2f}",
            flush=True,
        )
    res["approx_vs_repro"] = rows

    # 5. in-domain search reachability
    sweep = []
    for kind_model, hidden in (("logreg", ()), ("fcn", (4,))):
        for d0, b in ((4, 3), (8, 6), (16, 8), (32, 12), (64, 16)):
            sp = M.ModelSpec(kind_model, d0, 3, hidden)
            p = M.init_params(sp, 1)
            r0 = np.random.default_rng(d0 * 100 + b)
            Xg, yg = r0.integers(0, 3, (b, d0)) / 2.0, r0.integers(0, 3, b)
            for kind in ("box-lp", "grid-milp"):
                r = E.search_in_domain(sp, p, Xg, yg, kind=kind, levels=2, time_limit=5.0)
                sweep.append(
                    {
                        "model": f"{kind_model}{list(hidden) or ''}",
                        "d0": d0,
                        "b": b,
                        "kind": kind,
                        "status": r.status,
                        "seconds": r.seconds,
                        "residual": r.residual,
                    }
                )
                print(f"{kind_model} d0={d0} b={b} {kind}: {r.status} in {r.seconds:.2f} s", flush=True)
    res["in_domain"] = sweep
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    jsonio.write(args.out, res)


if __name__ == "__main__":
    main()
