"""The tensor method's error against the number of hidden units m, beside the
slides' O(sqrt(d/m)) claim, and the time to reconstruct a batch of 4 digits at d = 64.

  * Error curve: random unit inputs, d = 10, b = 3, c_i of either sign, w_j ~ N(0, I), for
    ReLU, tanh and sigmoid; m from 5,000 to 800,000; error = sqrt(mean(1 - cos^2)) after the
    best matching (the sine of the angle, which is the distance for small errors). Median over
    8 draws. The slope of log(error) against log(m) should be about -1/2.
  * Digits: 4 real digits (64 pixels, centred on the data set's mean and normalised), a
    Gaussian first layer with m = 300,000, |cos| of each reconstruction and the wall time.

    python benchmarks/bench_invert.py [--out benchmarks/out/invert.json] [--figure docs/benchmarks/figures/invert_error.png]
    python benchmarks/bench_invert.py --identifiability    # nullspace forgeries vs the method's conditions
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import time

import numpy as np

from exactforge.data import load_digits
from exactforge.invert import match, tensor_reconstruct
from exactforge.invert.tensor import _sigma
from exactforge.report import jsonio
from exactforge.report.machine import cpu_name


def error(d: int, b: int, m: int, act: str, seed: int) -> float:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((b, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    c = rng.choice([-1.0, 1.0], b) * rng.uniform(0.5, 1.5, b)
    W = rng.standard_normal((m, d))
    _, cos = match(tensor_reconstruct(W, _sigma(act, W @ X.T) @ c, b, activation=act, seed=seed), X)
    return float(np.sqrt(np.mean(1.0 - np.minimum(cos, 1.0) ** 2)))


def identifiability_table() -> list:
    """On digits (d = 64), batches of b = 64 and of b = 16, FCNs 64-m-10 at torch's init: the
    dimensions of the nullspace forgeries and whether the tensor method's m >= d, b <= d hold."""
    import torch

    from exactforge.invert import identifiability

    digits = load_digits()
    rows = []
    for b in (16, 64):
        idx = np.random.default_rng(0).choice(len(digits), b, replace=False)
        for m in (16, 32, 63, 64, 128, 256):
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Linear(64, m), torch.nn.ReLU(), torch.nn.Linear(m, 10))
            r = identifiability(net, digits.X[idx], digits.y[idx])
            rows.append(r)
            print(
                f"b={b:3d} m={m:4d}: null(W1^T) {r['null_W1T']:3d}, null(D1^T) {r['null_D1T']:3d}, nullspace forgery "
                f"{'yes' if r['nullspace_forgery_exists'] else 'no '}, tensor conditions "
                f"{'hold' if r['tensor_conditions_hold'] else 'fail'}"
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/out/invert.json")
    ap.add_argument("--figure", default="docs/benchmarks/figures/invert_error.png")
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--identifiability", action="store_true", help="only the digits table of nullspace vs conditions")
    args = ap.parse_args()
    if args.identifiability:
        identifiability_table()
        return
    d, b = 10, 3
    ms = [5_000, 20_000, 80_000, 320_000, 800_000]
    curve = {}
    for act in ("relu", "tanh", "sigmoid"):
        errs = [float(np.median([error(d, b, m, act, 100 + s) for s in range(args.draws)])) for m in ms]
        slope = float(np.polyfit(np.log(ms), np.log(errs), 1)[0])
        curve[act] = {"m": ms, "error": errs, "slope": slope}
        print(f"{act:8s} " + "  ".join(f"m={m}: {e:.4f}" for m, e in zip(ms, errs)) + f"   slope {slope:.2f}")
    digits = load_digits()
    rng = np.random.default_rng(0)
    runs = []
    for trial in range(3):
        idx = rng.choice(len(digits), 4, replace=False)
        Xc = digits.X[idx].astype(np.float64) - digits.X.mean(axis=0)
        Xc /= np.linalg.norm(Xc, axis=1, keepdims=True)
        W = rng.standard_normal((300_000, 64))
        g = _sigma("relu", W @ Xc.T) @ np.array([1.0, -0.7, 0.9, -1.2])
        t0 = time.perf_counter()
        est = tensor_reconstruct(W, g, 4, activation="relu", seed=trial)
        dt = time.perf_counter() - t0
        runs.append({"indices": [int(i) for i in idx], "seconds": dt, "cos": [float(c) for c in match(est, Xc)[1]]})
        print(f"digits b=4 d=64 m=300000: |cos| {np.round(runs[-1]['cos'], 3)} in {dt:.2f} s")
    res = {
        "date": _dt.date.today().isoformat(),
        "machine": cpu_name(),
        "cpus": os.cpu_count(),
        "d": d,
        "b": b,
        "draws": args.draws,
        "curve": curve,
        "digits": runs,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    jsonio.write(args.out, res)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for act, c in curve.items():
        ax.loglog(c["m"], c["error"], "o-", label=f"{act} (slope {c['slope']:.2f})")
    ref = np.array(ms, dtype=float)
    e0 = curve["relu"]["error"][0] * np.sqrt(ms[0])
    ax.loglog(ref, e0 / np.sqrt(ref), "k--", lw=0.8, label=r"$\propto\sqrt{d/m}$")
    ax.set_xlabel("hidden units m")
    ax.set_ylabel(r"error $\sqrt{\mathrm{mean}(1-\cos^2)}$")
    ax.set_title(f"tensor method, d = {d}, b = {b} (median of {args.draws} draws)", fontsize=9)
    ax.legend(fontsize=8)
    os.makedirs(os.path.dirname(args.figure) or ".", exist_ok=True)
    fig.savefig(args.figure, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
