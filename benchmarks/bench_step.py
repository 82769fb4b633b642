"""Benchmark of the native reproducible SGD step against torch's CPU step, and of
verification against recording.

  * FCN 64-100-10 on digits at b = 1000, and FCN 784-100-10 at b = 100 on synthetic
    MNIST-shaped data (784 pixels on the grid q/255, labelled synthetic: no download here).
  * Correctness before timing: the native gradient matches torch autograd (float32
    tolerance) and the native step is bitwise invariant under a batch permutation.
  * Step times: median of repeated steps; ratio native / torch measured in one run.
  * Record vs verify: a native trace of N steps (checkpoint every step), both timed.

    python benchmarks/bench_step.py [--out benchmarks/out/step.json]
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
import torch

import exactforge
from exactforge.data import Dataset, load_digits
from exactforge.models import native as M
from exactforge.models.torch_fcn import to_torch
from exactforge.report import jsonio
from exactforge.trace.record import record_native
from exactforge.verify import verify_trace

from _common import median_time, start


def torch_step_fn(spec, params, X, y, idx, lr):
    model = to_torch(spec, params)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    xb, yb = torch.from_numpy(X[idx]), torch.from_numpy(y[idx])

    def step():
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, model


def check(spec, params, X, y, idx):
    loss, g = M.loss_and_grad(spec, params, X[idx], y[idx], idx)
    model = to_torch(spec, params)
    out = torch.nn.functional.cross_entropy(model(torch.from_numpy(X[idx])), torch.from_numpy(y[idx]))
    out.backward()
    for i, layer in enumerate(model.layers, start=1):
        assert np.allclose(g[f"W{i}"], layer.weight.grad.numpy().T, atol=1e-6, rtol=1e-4), "gradient mismatch"
    p = np.random.default_rng(1).permutation(len(idx))
    for mode in ("fixed", "exact"):
        a = M.sgd_step(spec, params, X[idx], y[idx], idx, 0.01, mode=mode)
        b = M.sgd_step(spec, params, X[idx[p]], y[idx[p]], idx[p], 0.01, mode=mode, threads=1)
        assert all(a[k].tobytes() == b[k].tobytes() for k in a), "native step not permutation invariant"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/out/step.json")
    ap.add_argument("--record-steps", type=int, default=100)
    args = ap.parse_args()
    threads = min(2, os.cpu_count() or 1)
    start(threads)
    digits = load_digits()
    rng = np.random.default_rng(0)
    synth = Dataset(
        "synthetic-mnist-shaped",
        (rng.integers(0, 256, (2000, 784)) / 255.0).astype(np.float32),
        rng.integers(0, 10, 2000).astype(np.int64),
        10,
        255,
    )
    synth3072 = Dataset(
        "synthetic-cifar-shaped",
        (rng.integers(0, 256, (1000, 3072)) / 255.0).astype(np.float32),
        rng.integers(0, 10, 1000).astype(np.int64),
        10,
        255,
    )
    cases = [
        ("FCN 64-100-10, digits", digits, 1000, (100,)),
        ("FCN 784-100-10, synthetic 784-pixel data", synth, 100, (100,)),
        ("FCN 784-1000-1000-10, synthetic 784-pixel data", synth, 256, (1000, 1000)),
        ("FCN 3072-512-512-10, synthetic 3072-value data", synth3072, 128, (512, 512)),
    ]
    rows = []
    for name, data, b, hidden in cases:
        spec = M.ModelSpec("fcn", data.dim, 10, hidden)
        params = M.init_params(spec, 0)
        idx = np.random.default_rng(0).choice(len(data), b, replace=False)
        check(spec, params, data.X, data.y, idx)
        tstep, _ = torch_step_fn(spec, params, data.X, data.y, idx, 0.01)
        t_torch = median_time(tstep)
        row = {"case": name, "batch": b, "torch_ms": t_torch * 1e3}
        for mode, plan in (("fixed", 2), ("exact", 2), ("exact_plan1", 1)):
            m_ = mode.split("_")[0]
            t = median_time(lambda: M.sgd_step(spec, params, data.X[idx], data.y[idx], idx, 0.01, mode=m_, plan=plan))
            row[f"native_{mode}_ms"] = t * 1e3
            row[f"native_{mode}_ratio"] = t / t_torch
        rows.append(row)
        print(
            f"{name} b={b}: torch {row['torch_ms']:.3f} ms, native fixed x{row['native_fixed_ratio']:.2f}, "
            f"exact x{row['native_exact_ratio']:.2f}",
            flush=True,
        )

    tmp = tempfile.mkdtemp()
    try:
        out = os.path.join(tmp, "trace")
        spec = M.ModelSpec("fcn", 64, 10, (100,))
        t0 = time.perf_counter()
        record_native(out, spec, digits, steps=args.record_steps, batch_size=100, lr=0.05, checkpoint_every=1)
        t_rec = time.perf_counter() - t0
        t0 = time.perf_counter()
        rep = verify_trace(out, dataset=digits)
        t_ver = time.perf_counter() - t0
        assert rep.accepted and rep.max_error == 0.0
        t0 = time.perf_counter()
        verify_trace(out, dataset=digits, policy="random", fraction=0.1)
        t_ver10 = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp)
    rv = {
        "steps": args.record_steps,
        "batch": 100,
        "record_s": t_rec,
        "verify_all_s": t_ver,
        "verify_random10_s": t_ver10,
        "verify_over_record": t_ver / t_rec,
    }
    print(
        f"record {args.record_steps} steps: {t_rec:.2f} s; verify all: {t_ver:.2f} s ({t_ver / t_rec:.2f}x); "
        f"verify 10% sample: {t_ver10:.2f} s",
        flush=True,
    )
    res = {
        "date": _dt.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": threads},
        "torch": torch.__version__,
        "exactforge": exactforge.compile_options()["version"],
        "steps": rows,
        "record_verify": rv,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    jsonio.write(args.out, res)
    print(
        "\n| case | b | torch step (ms) | native fixed (ms) | ratio | native exact (ms) | ratio | "
        "exact, plan 1 (ms) | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['batch']} | {r['torch_ms']:.3f} | {r['native_fixed_ms']:.3f} | "
            f"{r['native_fixed_ratio']:.2f} | {r['native_exact_ms']:.3f} | {r['native_exact_ratio']:.2f} | "
            f"{r['native_exact_plan1_ms']:.3f} | {r['native_exact_plan1_ratio']:.2f} |"
        )


if __name__ == "__main__":
    main()
