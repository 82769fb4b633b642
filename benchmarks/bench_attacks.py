"""Benchmark of the attacks.

* greedy search with per-example gradients computed once (torch.func vmap) vs one backward
  pass per candidate batch: M = 300 candidates, b = 100, LeNet on digits (target >= 10x);
  both must pick the same best candidate before the times count;
* the headline comparison on digits: each attack's approximation error over the reproduction
  error (torch under batch permutation; the native path, exactly 0), in orders of magnitude;
* game win rates (calibrated epsilon, domain check on and off).

  python benchmarks/bench_attacks.py [--out benchmarks/out/attacks.json]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os

import numpy as np
import torch

from exactforge.data import load_digits
from exactforge.forging.attacks import per_example_grads, run_attack
from exactforge.forging.game import Verifier, play_game
from exactforge.report import jsonio

from _common import timed


def greedy_compare(M=300, b=100, pool=1000, seed=0):
    data = load_digits()
    v = Verifier("lenet", "torch", data, batch_size=b, steps=1, seed=seed)
    ctx = v.context(0)
    rng = np.random.default_rng(seed)
    U = [int(ctx.batch[0])]
    keep = np.array([i for i in ctx.batch if i not in U])
    others = np.setdiff1d(np.arange(len(data)), np.array(U + keep.tolist()))
    P = rng.choice(others, pool, replace=False)
    choice = rng.integers(0, pool, (M, len(U)))
    X = torch.from_numpy(data.X).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(data.y)
    g_target = (ctx.theta.astype(np.float64) - ctx.theta_next) / ctx.lr

    def cached():
        need = np.concatenate([keep, P])
        G = per_example_grads(ctx.model, ctx.theta, X[need], y[need]).astype(np.float64)
        sums = G[: len(keep)].sum(0)[None, :] + G[len(keep) :][choice].sum(axis=1)
        return np.linalg.norm(ctx.lr * (sums / b - g_target[None, :]), axis=1)

    def naive():
        st = v.stepper
        st.load(ctx.theta)
        params = list(st.model.parameters())
        errs = []
        for c in range(M):
            idx = torch.from_numpy(np.concatenate([keep, P[choice[c]]]))
            loss = torch.nn.functional.cross_entropy(st.model(X[idx]), y[idx])
            g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)]).numpy().astype(np.float64)
            errs.append(np.linalg.norm(ctx.lr * (g - g_target)))
        return np.array(errs)

    e1, e2 = cached(), naive()
    assert int(np.argmin(e1)) == int(np.argmin(e2)), "cached and naive scoring disagree on the best candidate"
    assert np.allclose(e1, e2, rtol=1e-3, atol=1e-9)
    t_cached = min(timed(cached) for _ in range(3))
    t_naive = min(timed(naive) for _ in range(2))
    return {
        "M": M,
        "b": b,
        "pool": pool,
        "model": "LeNet-5, digits",
        "cached_s": t_cached,
        "naive_s": t_naive,
        "speedup": t_naive / t_cached,
    }


def headline(seed=0):
    data = load_digits()
    rows = []
    for model, engine in (("lenet", "torch"), ("fcn", "torch"), ("fcn", "native"), ("logreg", "torch")):
        v = Verifier(model, engine, data, batch_size=100, steps=5, seed=seed)
        repro = v.calibrate(safety_factor=1.0)
        methods = ["greedy", "nearest", "gradmatch", "gradmatch-subset", "dlg", "idlg"] + (
            ["nullspace", "error-matrix"] if model == "logreg" else []
        )
        for m in methods:
            errs, doms, fracs = [], [], []
            for t in range(len(v.batches)):
                ctx = v.context(t)
                r = run_attack(m, ctx, [int(ctx.batch[0])], seed=seed + t, steps=100)
                errs.append(r.approx_error)
                doms.append(r.in_domain)
                fracs.append(r.fraction)
            e = float(np.median(errs))
            rows.append(
                {
                    "model": model,
                    "engine": engine,
                    "attack": m,
                    "median_attack_error": e,
                    "repro_error": repro,
                    "orders_of_magnitude": (math.log10(e / repro) if repro > 0 else float("inf")),
                    "in_domain": bool(all(doms)),
                    "forging_fraction": float(np.median(fracs)),
                    "objective": r.objective,
                }
            )
            print(
                f"{model}/{engine} {m} (forging fraction {rows[-1]['forging_fraction']:.2g}; {r.objective}): "
                f"attack {e:.2e} vs repro {repro:.2e} ({rows[-1]['orders_of_magnitude']:.1f} orders), "
                f"in domain {'yes' if all(doms) else 'no'}",
                flush=True,
            )
    return rows


def games(seed=0):
    out = []
    v = Verifier("logreg", "torch", load_digits(), batch_size=100, steps=5, seed=seed)
    vn = Verifier("logreg", "native", load_digits(), batch_size=100, steps=5, seed=seed)
    for attack in ("greedy", "nearest", "dlg", "idlg", "nullspace", "error-matrix"):
        budget = {"steps": 100} if attack in ("dlg", "idlg") else None
        for dc in (True, False):
            g = play_game(attack, 5, "auto", verifier=v, domain_check=dc, budget=budget)
            gn = play_game(attack, 5, 0.0, verifier=vn, domain_check=dc, budget=budget)
            out.append(
                {
                    "attack": attack,
                    "domain_check": dc,
                    "win_rate_torch_calibrated": g.win_rate,
                    "epsilon": g.epsilon,
                    "win_rate_native_eps0": gn.win_rate,
                }
            )
            print(
                f"game {attack} domain={'on' if dc else 'off'}: torch eps {g.epsilon:.2g} win {g.win_rate:.0%}; "
                f"native eps 0 win {gn.win_rate:.0%}",
                flush=True,
            )
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/out/attacks.json")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    res = {"date": _dt.date.today().isoformat()}
    res["greedy_cache"] = greedy_compare()
    g = res["greedy_cache"]
    print(
        f"greedy M={g['M']} b={g['b']} LeNet: cached {g['cached_s']:.2f} s vs naive {g['naive_s']:.2f} s: {g['speedup']:.1f}x",
        flush=True,
    )
    res["headline"] = headline()
    res["games"] = games()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    jsonio.write(args.out, res)


if __name__ == "__main__":
    main()
