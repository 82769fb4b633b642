"""Benchmark of the reproducible reductions against the default path (torch BLAS).

For each shape (m x n with the batch axis k reduced): checks correctness first (fixed mode
against the FMA-chain definition on a sample of outputs, exact mode within its documented
bound of an exact float64 reference), then measures
  - time of torch.matmul (float32), and of exactforge "fixed" and "exact" (ratio to torch);
  - each path's reproduction error: the largest l2 distance to the first result over 20
    permutations of the batch axis and over thread counts 1 and 2.
Writes JSON and prints a markdown table.

    python benchmarks/bench_reduce.py [--out benchmarks/out/reduce.json] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
from fractions import Fraction

import numpy as np
import torch

import exactforge
from exactforge import reduce as R
from exactforge.report import jsonio

from _common import best_time, cpu_name, fma_peak, start

SHAPES = [(64, 10), (784, 10), (784, 100), (100, 10)]
KS = [32, 100, 1000, 4096]
# large products (m, n, k): a weight gradient of a wide layer and a GEMM of the size used to
# state % of peak; reported in GFLOP/s against the practical peak measured here
LARGE = [(4096, 64, 4096), (1024, 1024, 8192)]


def practical_peak(threads: int) -> float:
    """GFLOP/s of torch's float32 sgemm (MKL) on 2048^3: the CPU's practical float32 peak, the
    yardstick for the large shapes (the FMA units' nominal peak needs a clock this VM does not
    report)."""
    a = torch.rand(2048, 2048)
    return 2 * 2048**3 / best_time(lambda: a @ a, min_total=1.0) / 1e9


def large_rows(rng, threads: int, quick: bool):
    peak = practical_peak(threads)
    fma = fma_peak(threads)
    fma_f32 = None if fma is None else (fma["avx512_f32_gflops"] or fma["avx2_f32_gflops"])
    rows = []
    for m, n, k in LARGE[:1] if quick else LARGE:
        a = np.abs(rng.standard_normal((m, k))).astype(np.float32)
        b = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
        fixed = R.matmul(a, b, mode="fixed")
        exact = R.matmul(a, b, mode="exact")
        ref = a.astype(np.float64) @ b.astype(np.float64)
        assert np.all(np.abs(exact - ref) <= R.error_bound(a, b) + np.abs(ref) * (2.0**-24 + 1e-12))
        assert np.allclose(fixed, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        flops = 2.0 * m * n * k
        row = {"m": m, "n": n, "k": k, "peak_gflops": peak, "fma_peak_gflops": fma_f32, "fma_peak": fma}
        for name, fn in (
            ("torch", lambda: ta @ tb),
            ("fixed", lambda: R.matmul(a, b, mode="fixed")),
            ("exact", lambda: R.matmul(a, b, mode="exact")),
        ):
            t = best_time(fn, min_total=1.0, repeats=3)
            row[f"{name}_s"], row[f"{name}_gflops"] = t, flops / t / 1e9
        p = rng.permutation(k)  # one permutation of the batch axis: exactly 0 for both modes
        row["repro_fixed"] = float(
            np.linalg.norm(
                R.matmul(np.ascontiguousarray(a[:, p]), np.ascontiguousarray(b[p]), mode="fixed", keys=p)
                - R.matmul(a, b, mode="fixed", keys=np.arange(k))
            )
        )
        row["repro_exact"] = float(
            np.linalg.norm(R.matmul(np.ascontiguousarray(a[:, p]), np.ascontiguousarray(b[p]), mode="exact") - exact)
        )
        rows.append(row)
        print(
            f"{m}x{n} k={k}: torch {row['torch_gflops']:.1f}, fixed {row['fixed_gflops']:.1f}, exact "
            f"{row['exact_gflops']:.1f} GFLOP/s (peak {peak:.1f})",
            flush=True,
        )
    return rows


def check_correct(a, b, rng):
    """Fixed: sampled entries equal the FMA chain computed exactly; exact: within its bound."""
    fixed = R.matmul(a, b, mode="fixed")
    exact = R.matmul(a, b, mode="exact")
    ref = a.astype(np.float64) @ b.astype(np.float64)  # products exact; f64 sum error ~1e-16
    bound = R.error_bound(a, b) + np.abs(ref) * 2.0**-24 + np.abs(ref) * 1e-12
    assert np.all(np.abs(exact - ref) <= bound), "exact mode outside its documented bound"
    for _ in range(3):
        i, j = int(rng.integers(a.shape[0])), int(rng.integers(b.shape[1]))
        acc = 0.0
        for t in range(a.shape[1]):
            q = Fraction(float(a[i, t])) * Fraction(float(b[t, j])) + Fraction(acc)
            acc = float(np.float32(float(q)))  # double rounding is exact here unless on a tie
        assert abs(float(fixed[i, j]) - acc) <= abs(acc) * 2.0**-22, "fixed mode is not the FMA chain"


def repro_error(fn, a, b, rng, perms=20):
    """Largest l2 distance to the first result over `perms` permutations of the batch axis
    (the terms' keys, their dataset indices, travel with them) and over 1 vs 2 threads."""
    k = a.shape[1]
    keys = np.arange(k)
    ref = fn(a, b, keys, 1).astype(np.float64)
    worst = 0.0
    for _ in range(perms):
        p = rng.permutation(k)
        out = fn(np.ascontiguousarray(a[:, p]), np.ascontiguousarray(b[p]), keys[p], 1)
        worst = max(worst, float(np.linalg.norm(out - ref)))
    worst = max(worst, float(np.linalg.norm(fn(a, b, keys, 2) - ref)))
    return worst


def torch_mm(a, b, keys, threads):  # keys: torch has no notion of them
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()
    finally:
        torch.set_num_threads(prev)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/out/reduce.json")
    ap.add_argument("--quick", action="store_true", help="one shape, two k (smoke run)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    threads = min(2, os.cpu_count() or 1)
    start(threads)
    shapes, ks = (SHAPES[:1], KS[:2]) if args.quick else (SHAPES, KS)
    rows = []
    for m, n in shapes:
        for k in ks:
            # a: activations (non-negative, like ReLU outputs / pixels); b: error-matrix entries
            a = np.abs(rng.standard_normal((m, k))).astype(np.float32)
            b = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
            check_correct(a, b, rng)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            t_torch = best_time(lambda: ta @ tb)
            t_fixed = best_time(lambda: R.matmul(a, b, mode="fixed"))
            t_exact = best_time(lambda: R.matmul(a, b, mode="exact"))
            row = {
                "m": m,
                "n": n,
                "k": k,
                "torch_us": t_torch * 1e6,
                "fixed_ratio": t_fixed / t_torch,
                "exact_ratio": t_exact / t_torch,
                "repro_torch": repro_error(torch_mm, a, b, rng),
                "repro_fixed": repro_error(
                    lambda x, y, kz, th: R.matmul(x, y, mode="fixed", keys=kz, threads=th), a, b, rng
                ),
                "repro_exact": repro_error(lambda x, y, kz, th: R.matmul(x, y, mode="exact", threads=th), a, b, rng),
            }
            rows.append(row)
            print(
                f"{m}x{n} k={k}: torch {row['torch_us']:.1f} us, fixed x{row['fixed_ratio']:.2f}, "
                f"exact x{row['exact_ratio']:.2f}",
                flush=True,
            )
    large = large_rows(rng, threads, args.quick)
    result = {
        "large": large,
        "date": _dt.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_name(),
            "cpus": os.cpu_count(),
            "threads": threads,
        },
        "torch": torch.__version__,
        "exactforge": exactforge.compile_options(),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    jsonio.write(args.out, result)
    print()
    print("| shape (m x n) | k | torch f32 (us) | fixed / torch | exact / torch | repro err torch | fixed | exact |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['m']}x{r['n']} | {r['k']} | {r['torch_us']:.1f} | {r['fixed_ratio']:.2f} | {r['exact_ratio']:.2f} "
            f"| {r['repro_torch']:.2g} | {r['repro_fixed']:.2g} | {r['repro_exact']:.2g} |"
        )
    # % of the CPU's measured float32 FMA peak where the probe ran, else of torch's sgemm
    which = "FMA peak" if large and large[0]["fma_peak_gflops"] else "practical peak"
    print(
        f"\n| m x n x k | torch GFLOP/s (% of {which}) | fixed GFLOP/s (%) | exact GFLOP/s (%) | fixed / torch | "
        f"exact / torch | repro fixed | repro exact |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in large:
        pk = r["fma_peak_gflops"] or r["peak_gflops"]
        print(
            f"| {r['m']}x{r['n']}x{r['k']} | {r['torch_gflops']:.1f} ({r['torch_gflops'] / pk:.0%}) | "
            f"{r['fixed_gflops']:.1f} ({r['fixed_gflops'] / pk:.0%}) | {r['exact_gflops']:.1f} "
            f"({r['exact_gflops'] / pk:.0%}) | {r['fixed_s'] / r['torch_s']:.2f} | {r['exact_s'] / r['torch_s']:.2f} | "
            f"{r['repro_fixed']:.2g} | {r['repro_exact']:.2g} |"
        )
    if large:
        print(f"\npractical peak (torch sgemm 2048^3): {large[0]['peak_gflops']:.1f} GFLOP/s")
        if large[0]["fma_peak"]:
            print(f"measured FMA peak ({threads} threads, bench_fma_peak.cpp): {json.dumps(large[0]['fma_peak'])}")


if __name__ == "__main__":
    main()
