"""Verifying a long trace serially and on a local Ray cluster.

* The trace: native FCN 784-100-10 on the 5,000 real MNIST images of mnist-5k, SGD with
  b = 64, 10,000 steps, a checkpoint every 10 steps (1,000 segments), fixed mode.
* Correctness before timing: the Ray report's verdict and per-segment errors must equal the
  serial report's, in both checkpoint modes (shared storage and shipped bytes).
* Serial: ``verify_trace(threads=1)``, one process on one core. Ray: a local instance with
  ``--workers`` CPUs, one task CPU each; its start-up is timed apart. Ideal = serial / workers.
* The parts of the serial time (opening the trace: manifest and hash chain; reading and
  hashing a checkpoint; recomputing a step) give the extrapolation to a 1M-step trace on N
  machines in docs/benchmarks/ray.md.

  python benchmarks/bench_ray.py [--steps 10000] [--workers 2] [--trace DIR] [--out benchmarks/out/ray.json]
  python benchmarks/bench_ray.py --probe --trace DIR    # Ray workers vs plain processes
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import tempfile
import time

import numpy as np

from exactforge.data import load_dataset
from exactforge.models import native as M
from exactforge.report import jsonio
from exactforge.report.machine import cpu_name
from exactforge.trace import Trace
from exactforge.trace.record import record_native
from exactforge.verify import verify_trace
from exactforge.verify.ray import RayExecutor, require_ray


def _key(rep):
    return (rep.valid, rep.accepted, rep.max_error, [(s.step, s.end_step, s.error, s.passed) for s in rep.steps])


def _half(path: str, part: int, parts: int = 4) -> float:
    """Seconds to recompute one quarter of the trace's segments in this process (the probe)."""
    from exactforge.verify import SegmentJob, engine_for, recompute_segments

    tr = Trace.open(path)
    load, step, _ = engine_for(tr, load_dataset("mnist-5k"), 1)
    segs = tr.segments()
    n = len(segs) // parts
    t0 = time.perf_counter()
    recompute_segments(tr, segs[part * n : (part + 1) * n], load, step, SegmentJob(None, "l2", 0.0, 1), lambda r: None)
    return time.perf_counter() - t0


def probe(path: str, rounds: int = 3) -> None:
    """Is a segment slower on a Ray worker than in a plain process? The same quarter of the
    trace, alone and two at once, as Ray tasks and as plain processes, alternately."""
    import subprocess
    import sys

    ray = require_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    task = ray.remote(num_cpus=1)(_half)
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
        f"import bench_ray; print(bench_ray._half({path!r}, int(sys.argv[1])))"
    )

    def procs(n: int) -> list:
        ps = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE) for i in range(n)]
        return [round(float(p.communicate()[0]), 2) for p in ps]

    try:
        for _ in range(rounds):
            one_ray, one_proc = ray.get([task.remote(path, 0)]), procs(1)
            two_ray, two_proc = ray.get([task.remote(path, 0), task.remote(path, 1)]), procs(2)
            print(
                f"alone: ray {[round(x, 2) for x in one_ray]}, process {one_proc}; two at once: ray "
                f"{[round(x, 2) for x in two_ray]}, processes {two_proc} (s per quarter)"
            )
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--checkpoint-every", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks-per-worker", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved serial and Ray runs (medians reported)")
    ap.add_argument("--trace", help="reuse a trace folder recorded by an earlier run (kept)")
    ap.add_argument("--out", default="benchmarks/out/ray.json")
    ap.add_argument(
        "--probe",
        action="store_true",
        help="only the probe: a quarter of the segments alone and two at once, on Ray and in plain "
        "processes (needs --trace of an earlier run)",
    )
    args = ap.parse_args()
    if args.probe:
        if not args.trace:
            ap.error("--probe needs --trace (a trace recorded by an earlier run)")
        probe(args.trace)
        return
    ray = require_ray()
    data = load_dataset("mnist-5k")
    spec = M.ModelSpec("fcn", 784, 10, (100,))
    tmp = None
    path = args.trace
    if path is None or not os.path.exists(os.path.join(path, "manifest.json")):
        if path is None:
            tmp = tempfile.mkdtemp(prefix="bench-ray-")
            path = os.path.join(tmp, "trace")
        t0 = time.perf_counter()
        record_native(
            path,
            spec,
            data,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=0.01,
            checkpoint_every=args.checkpoint_every,
            threads=1,
        )
        print(f"recorded {args.steps} steps in {time.perf_counter() - t0:.1f} s")
    try:
        t0 = time.perf_counter()
        tr = Trace.open(path)
        t_open = time.perf_counter() - t0
        cks = tr.checkpoint_steps
        t0 = time.perf_counter()
        for s in cks[:: max(1, len(cks) // 100)]:
            tr.load_checkpoint(s)
        t_ckpt = (time.perf_counter() - t0) / len(cks[:: max(1, len(cks) // 100)])
        ck_bytes = os.path.getsize(os.path.join(path, "checkpoints", "00000000.safetensors"))

        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        t_start = time.perf_counter() - t0
        # serial and Ray runs interleaved, --repeats times: this machine is shared and its speed
        # drifts by 10-30% within a minute, so each Ray run is compared with the mean of the serial
        # runs just before and just after it
        serial_times, runs = [], {"shared": [], "ship": []}
        parts = {m: {"driver": [], "compute": []} for m in runs}
        try:
            exs = {m: RayExecutor(checkpoints=m, tasks_per_worker=args.tasks_per_worker) for m in runs}
            for ex in exs.values():
                verify_trace(path, executor=ex, policy="random", fraction=0.01)  # warm the workers' imports
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                serial = verify_trace(path, threads=1)
                serial_times.append(time.perf_counter() - t0)
                assert serial.accepted and serial.max_error == 0.0, serial.reason
                for mode, ex in exs.items():
                    t0 = time.perf_counter()
                    rep = verify_trace(path, executor=ex)
                    runs[mode].append(time.perf_counter() - t0)
                    # the driver's part before any task left (argument checks, the manifest, the data
                    # set; the chain is read while tasks run) and how much slower a segment recomputes
                    # with both cores busy than alone
                    parts[mode]["driver"].append(runs[mode][-1] - rep.executor["seconds"])
                    parts[mode]["streamed"] = rep.executor["streamed_tasks"]
                    parts[mode]["compute"].append(
                        sum(x.seconds for x in rep.steps) / sum(x.seconds for x in serial.steps)
                    )
                    assert _key(rep) == _key(serial), f"{mode}: the Ray report differs from the serial one"
                    tasks = rep.executor["tasks"]
            t0 = time.perf_counter()
            verify_trace(path, threads=1)  # a last serial run: each Ray run lies between two serial ones
            serial_times.append(time.perf_counter() - t0)
        finally:
            ray.shutdown()
        t_serial = float(np.median(serial_times))
        t_steps = sum(s.seconds for s in serial.steps)
        runs = {
            m: {
                "seconds": float(np.median(v)),
                "all_seconds": v,
                "tasks": tasks,
                "driver_seconds": float(np.median(parts[m]["driver"])),
                "streamed_tasks": parts[m]["streamed"],
                "segment_time_vs_serial": float(np.median(parts[m]["compute"])),
                "ratios_to_ideal": [
                    r / ((a + b) / 2 / args.workers) for r, a, b in zip(v, serial_times, serial_times[1:])
                ],
            }
            for m, v in runs.items()
        }
        segs = len(serial.steps)
        ideal = t_serial / args.workers
        for r in runs.values():
            r["ratio_to_ideal"] = float(np.median(r["ratios_to_ideal"]))
            r["overhead_per_segment_ms"] = 1e3 * (r["seconds"] - ideal) / segs
        res = {
            "date": _dt.date.today().isoformat(),
            "machine": cpu_name(),
            "cpus": os.cpu_count(),
            "ray_version": ray.__version__,
            "steps": args.steps,
            "segments": segs,
            "checkpoint_every": args.checkpoint_every,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "checkpoint_bytes": ck_bytes,
            "serial_seconds": t_serial,
            "serial_all_seconds": serial_times,
            "ideal_seconds": ideal,
            "ray_startup_seconds": t_start,
            "ray": runs,
            "parts": {
                "open_seconds": t_open,
                "open_per_record_us": 1e6 * t_open / tr.num_records,
                "checkpoint_read_hash_ms": 1e3 * t_ckpt,
                "recompute_per_step_ms": 1e3 * (t_steps - segs * t_ckpt) / args.steps,
            },
        }
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        jsonio.write(args.out, res)
        print(json.dumps(res, indent=1))
        p = res["parts"]
        print(f"\nserial {t_serial:.2f} s, ideal on {args.workers} workers {ideal:.2f} s, Ray start-up {t_start:.2f} s")
        for mode, r in runs.items():
            print(
                f"ray ({mode}): {r['seconds']:.2f} s = {r['ratio_to_ideal']:.3f} x ideal (per run: "
                f"{', '.join(f'{x:.2f}' for x in r['ratios_to_ideal'])}), "
                f"{r['overhead_per_segment_ms']:.2f} ms per segment over ideal, {r['tasks']} tasks "
                f"({r['streamed_tasks']} sent while the chain was read); driver alone "
                f"{r['driver_seconds']:.2f} s, a segment takes {r['segment_time_vs_serial']:.2f}x its serial time"
            )
        print(
            f"parts: open {p['open_per_record_us']:.0f} us/record, checkpoint read+hash "
            f"{p['checkpoint_read_hash_ms']:.2f} ms ({ck_bytes / 1e6:.2f} MB), recompute {p['recompute_per_step_ms']:.3f} ms/step"
        )
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
