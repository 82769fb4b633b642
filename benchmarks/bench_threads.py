"""Threads on a busy machine: verify one trace with 1 and 2 threads, on an
idle machine and with another process keeping one core busy, with OpenMP threads waiting the
way exactforge sets by default (a bounded spin, GOMP_SPINCOUNT, then sleep), passively
(OMP_WAIT_POLICY=PASSIVE) and spinning (OMP_WAIT_POLICY=ACTIVE). Correctness first: every run
must accept the trace at epsilon 0.

    python benchmarks/bench_threads.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from exactforge.report.machine import cpu_name


def verify(trace: str, threads: int, policy: str) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if policy in ("active", "passive"):
        env["OMP_WAIT_POLICY"] = policy.upper()
    code = (
        "import sys, time; from exactforge.verify import verify_trace; t = time.perf_counter(); "
        f"r = verify_trace({trace!r}, threads={threads}); "
        "assert r.valid and r.accepted and r.max_error == 0.0, r.reason; print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from exactforge.cli import main as cli

    trace = os.path.join(tempfile.mkdtemp(), "t")
    assert (
        cli(
            [
                "train",
                "--model",
                "fcn",
                "--hidden",
                "1000",
                "--dataset",
                "mnist-5k",
                "--steps",
                "30",
                "--batch-size",
                "500",
                "--out",
                trace,
                "--quiet",
            ]
        )
        == 0
    )
    print(
        f"# verify 30 steps of FCN 784-1000-10 (b = 500, fixed mode), best of {args.repeats}, in-process time; "
        f"{cpu_name()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}\n"
    )
    print("| machine | waiting | 1 thread | 2 threads | 2 vs 1 |")
    print("|---|---|---|---|---|")
    for busy in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for policy in ("default", "passive", "active"):
                t1 = min(verify(trace, 1, policy) for _ in range(args.repeats))
                t2 = min(verify(trace, 2, policy) for _ in range(args.repeats))
                print(
                    f"| {'one core busy' if busy else 'idle'} | {policy} | {t1:.2f} s | {t2:.2f} s | {t2 / t1:.2f}x |",
                    flush=True,
                )
        finally:
            if hog is not None:
                hog.kill()


if __name__ == "__main__":
    main()
