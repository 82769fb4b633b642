"""Benchmark: the full CPU reproduction study on digits (target: under 10 minutes on 2 cores).

FCN, LeNet and logistic regression; batch sizes 32, 100, 1000; the 4 CPU conditions permute,
threads, deterministic, bf16; R = 5 repeats; 50 checkpoints; plus the native path for the
models it supports, and a 10-step cross-condition matrix. Writes each study's report folder
and a summary JSON.

    python benchmarks/bench_repro.py [--out benchmarks/out/repro]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import time

from exactforge.report import jsonio
from exactforge.studies.repro import run_study


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/out/repro")
    args = ap.parse_args()
    t0 = time.perf_counter()
    summary = {"date": _dt.date.today().isoformat(), "studies": {}}
    for model in ("fcn", "lenet", "logreg"):
        conds = ["permute", "threads", "deterministic", "bf16"]
        if model in ("fcn", "logreg"):
            conds += ["native", "native+permute", "native+threads"]
        r = run_study(
            model,
            "digits",
            (32, 100, 1000),
            conds,
            repeats=5,
            steps=50,
            matrix_steps=10,
            out=os.path.join(args.out, model),
        )
        summary["studies"][model] = {
            "seconds": r.seconds,
            "epsilon": r.epsilon,
            "false_reject_rate": r.false_reject_rate,
            "epsilon_native": r.epsilon_native,
            "max_error": {k: v.max_error for k, v in r.conditions.items()},
            "by_batch_size": {
                k: {b: x["max_error"] for b, x in v.by_batch_size.items()} for k, v in r.conditions.items()
            },
        }
        print(
            f"{model}: {r.seconds:.0f} s; "
            + ", ".join(f"{k} {v.max_error:.2g}" for k, v in r.conditions.items())
            + f"; epsilon {r.epsilon:.2g}",
            flush=True,
        )
    summary["seconds"] = time.perf_counter() - t0
    print(f"full study: {summary['seconds']:.0f} s")
    os.makedirs(args.out, exist_ok=True)
    jsonio.write(os.path.join(args.out, "summary.json"), summary)


if __name__ == "__main__":
    main()
