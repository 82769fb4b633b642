"""Deterministic vs default (autotuned) kernels, the suite users asked for:
one SGD step of an FCN, timed, and its reproduction error under a permuted batch and under
1 vs 2 threads, for

  * torch default (MKL sgemm, autograd);
  * torch with torch.use_deterministic_algorithms(True);
  * torch with MKL's conditional numerical reproducibility (MKL_CBWR=COMPATIBLE, set before
    MKL loads, so each torch configuration runs in its own process);
  * exactforge fixed and exact (the native step; exact with reduction plan 2).

Correctness first: every step's gradient is within float32 rounding of float64 autograd.
Reproduction error is the largest l2 distance of theta_{t+1} from the first computation.

    python benchmarks/bench_deterministic.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from exactforge.report.machine import cpu_name

CASES = [("FCN 784-100-10", 784, (100,), 100), ("FCN 784-1000-1000-10", 784, (1000, 1000), 256)]

CHILD = r"""
import json, sys, time
import numpy as np, torch
cfg = json.loads(sys.argv[1])
import exactforge, exactforge.models as M
from exactforge.models.torch_fcn import to_torch
rng = np.random.default_rng(0)
spec = M.ModelSpec("fcn", cfg["dim"], 10, tuple(cfg["hidden"]))
X = (rng.integers(0, 256, (cfg["b"], cfg["dim"])) / 255.0).astype(np.float32)
y = rng.integers(0, 10, cfg["b"]).astype(np.int64)
idx = np.arange(cfg["b"])
params = M.init_params(spec, 0)
if cfg["path"].startswith("torch"):
    if cfg["path"] == "torch deterministic":
        torch.use_deterministic_algorithms(True)
    m = to_torch(spec, params)
    p0 = [p.detach().clone() for p in m.parameters()]
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def run(order, threads):  # what is timed: forward, backward, update
        torch.set_num_threads(threads)
        with torch.no_grad():
            for p, q in zip(m.parameters(), p0):
                p.copy_(q)
        o = torch.from_numpy(order)
        loss = torch.nn.functional.cross_entropy(m(Xt[o]), yt[o])
        opt.zero_grad(); loss.backward(); opt.step()
        return m

    def step(order, threads):
        return np.concatenate([p.detach().numpy().ravel() for p in run(order, threads).parameters()])
else:
    mode = cfg["path"].split()[-1]

    def run(order, threads):
        return M.sgd_step(spec, params, X[order], y[order], idx[order], 0.01, mode=mode, threads=threads)

    def step(order, threads):  # compared in torch's layout
        return np.concatenate([p.detach().numpy().ravel() for p in to_torch(spec, run(order, threads)).parameters()])
ref = step(idx, 2)
perm = max(float(np.linalg.norm(step(np.random.default_rng(r).permutation(cfg["b"]), 2) - ref)) for r in range(5))
thr = float(np.linalg.norm(step(idx, 1) - ref))
# correctness: the update against float64 autograd
m64 = to_torch(spec, params).double()
loss = torch.nn.functional.cross_entropy(m64(torch.from_numpy(X).double()), torch.from_numpy(y))
loss.backward()
upd64 = np.concatenate([(p.detach() - 0.01 * p.grad).numpy().ravel() for p in m64.parameters()])
err = float(np.abs(ref - upd64).max())
assert err < 1e-5, err
ts = []
for _ in range(cfg["repeats"]):
    t = time.perf_counter(); run(idx, 2); ts.append(time.perf_counter() - t)
print(json.dumps({"ms": 1e3 * float(np.median(ts)), "repro_perm": perm, "repro_threads": thr, "vs_f64": err}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    paths = [
        "torch default",
        "torch deterministic",
        "torch MKL_CBWR=COMPATIBLE",
        "exactforge fixed",
        "exactforge exact",
    ]
    print(
        f"# Deterministic vs default kernels: one SGD step, 2 threads, median of {args.repeats}; "
        f"{cpu_name()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}\n"
    )
    print("| case | path | step (ms) | vs torch default | permuted batch: max l2 | 1 vs 2 threads: l2 |")
    print("|---|---|---|---|---|---|")
    for name, dim, hidden, b in CASES:
        base = None
        for path in paths:
            env = dict(os.environ)
            env.pop("MKL_CBWR", None)
            if "MKL_CBWR" in path:
                env["MKL_CBWR"] = "COMPATIBLE"
            cfg = {"path": path, "dim": dim, "hidden": list(hidden), "b": b, "repeats": args.repeats}
            out = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(cfg)], env=env, check=True, capture_output=True, text=True
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            base = base or r["ms"]
            print(
                f"| {name}, b = {b} | {path} | {r['ms']:.2f} | {r['ms'] / base:.2f}x | {r['repro_perm']:.2g} | "
                f"{r['repro_threads']:.2g} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
