"""The float32 exact matmul's kernels side by side: float64 slices, int8 digits on
AMX-INT8 tiles or with AVX-512 VNNI, and torch's float32 matmul as the yardstick.

Correctness first: on every shape the kernels' outputs must be bitwise equal (they compute the same
integers, exactforge/intexact.hpp) and the auto-dispatched public call must equal them; then each
is timed (best-of loops, torch and exactforge alternating in one run) and reported as a ratio to
torch. A CPU without AMX or VNNI has no int8 column (the portable int8 kernel is a test aid, not fast).

Per multiply-add the float64 slices need 3 float64 FMAs and the int8 digits 27 int8 products
(level 0: 3 x 3 digit pairs; level 1: twice that), at any k: k only sets the slice width, and
3 digits cover it for k > 128 (4 below, 48 products). Which is faster is the ratio of the
machine's int8 and float64 rates, and that is what the columns measure.

    python benchmarks/bench_exact_kernels.py [--threads 2] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform

import numpy as np
import torch

import exactforge
from exactforge import reduce as R
from exactforge._backend.native import _core
from exactforge.report import jsonio

from _common import fast_half_median, fma_peak, peaks_text

SHAPES = [
    (64, 10, 100),
    (64, 10, 1000),
    (784, 10, 100),
    (784, 10, 1000),
    (784, 10, 4096),
    (100, 10, 1000),
    (784, 100, 100),
    (784, 100, 1000),
    (784, 100, 4096),
    (4096, 64, 4096),
    (1024, 1024, 8192),
]


def _ops(kernel: str, m: int, n: int, k: int) -> float:
    """Operations the kernel must do (a multiply-add counts two): 3 float64 FMAs per multiply-add
    for the slices; 27 int8 products for the digits (48 where k <= 128 makes 4-digit slices)."""
    per = 3 if kernel == "f64-slices" else (27 if k > 128 else 48)
    return 2.0 * per * m * n * k


def _share(ops: float, seconds: float, peaks, kind: str) -> str:
    """The rate achieved as a percentage of the measured peak of the unit it runs on."""
    if peaks is None:
        return "-"
    peak = {
        "f32": peaks["avx512_f32_gflops"] or peaks["avx2_f32_gflops"],
        "f64-slices": peaks["avx512_f64_gflops"],
        "int8-vnni": peaks.get("vnni_int8_gops"),
    }.get(kind)
    return f"{100.0 * ops / seconds / 1e9 / peak:.0f}%" if peak else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peaks = fma_peak(args.threads)
    print(peaks_text(args.threads) + "\n")
    kernels = ["f64-slices"] + (["int8-amx"] if _core.amx_int8_usable() else [])
    kernels += ["int8-vnni"] if _core.vnni_int8_usable() else []
    rng = np.random.default_rng(0)
    rows = []
    print(
        "| m x n x k | torch f32 (us) | torch % of f32 peak | "
        + " | ".join(f"{k} / torch | {k} % of its peak" for k in kernels)
        + " | auto / torch |"
    )
    print("|---|---|---|" + "---|---|" * len(kernels) + "---|")
    for m, n, k in SHAPES[:3] if args.quick else SHAPES:
        a = np.abs(rng.standard_normal((m, k))).astype(np.float32)  # activations
        b = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)  # an error matrix
        outs = {kk: _core.matmul_exact_kernel(a, b, kk, args.threads) for kk in kernels}
        ref = outs["f64-slices"].view(np.uint32)
        assert all(np.array_equal(o.view(np.uint32), ref) for o in outs.values()), (m, n, k)
        assert np.array_equal(R.matmul(a, b, mode="exact", threads=args.threads).view(np.uint32), ref)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        total = 0.3 if m * n * k < 1e8 else 1.5
        t_torch = fast_half_median(lambda: ta @ tb, total)
        row = {"m": m, "n": n, "k": k, "torch_s": t_torch}
        for kk in kernels:
            row[f"{kk}_s"] = fast_half_median(lambda: _core.matmul_exact_kernel(a, b, kk, args.threads), total)
        row["auto_s"] = fast_half_median(lambda: R.matmul(a, b, mode="exact", threads=args.threads), total)
        rows.append(row)
        cells = [f"{m}x{n}x{k}", f"{t_torch * 1e6:.1f}", _share(2.0 * m * n * k, t_torch, peaks, "f32")]
        for kk in kernels:
            cells += [f"{row[f'{kk}_s'] / t_torch:.2f}", _share(_ops(kk, m, n, k), row[f"{kk}_s"], peaks, kk)]
        print("| " + " | ".join(cells) + f" | {row['auto_s'] / t_torch:.2f} |", flush=True)
    meta = {
        "date": _dt.date.today().isoformat(),
        "machine": platform.platform(),
        "processor": platform.processor(),
        "threads": args.threads,
        "torch": torch.__version__,
        "exactforge": exactforge.compile_options(),
    }
    if args.json:
        jsonio.write(args.json, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
