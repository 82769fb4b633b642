"""``exactforge reevaluate``: the end-to-end re-evaluation of data forging on real data.

On the embedded digits (or a local dataset) it
  1. records execution traces on the torch path and on exactforge's native reproducible path,
     and verifies them (the native one at epsilon = 0);
  2. measures benign reproduction errors under the CPU conditions (and the GPU ones when a GPU
     is present) and calibrates epsilon;
  3. runs the known attacks (greedy, nearest neighbour, gradient matching, DLG) and the exact
     solvers (nullspace, error matrix) on sampled steps;
  4. plays the forging game at the calibrated epsilon (torch verifier) and at epsilon = 0
     (native verifier);
  5. answers Table 4 of the paper with complete certified counts (search --all) on the cells
     that fit the run, and measures the native verifier's resolution against exact forgeries;
and writes report.md, report.json and PNG figures, printing the summary table.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["Config", "reevaluate", "summary_table", "table4_counts", "resolution_study"]


@dataclass
class Config:
    model: str = "fcn"
    dataset: str = "digits"
    data_path: Optional[str] = None
    batch_sizes: tuple = (32, 100, 1000)
    batch: int = 100                 # batch size of the traces, attacks and game
    steps: int = 20                  # steps of the traces and of the study
    repeats: int = 5
    attack_steps: int = 5            # sampled steps per attack
    rounds: int = 10                 # game rounds per cell
    greedy_pool: int = 1000
    greedy_candidates: int = 300
    opt_steps: int = 100             # gradient matching / DLG
    table4_max_batches: int = 200_000_000  # Table 4 cells counted completely in the report
    seed: int = 0

    @classmethod
    def quick(cls, **kw) -> "Config":
        base = dict(batch_sizes=(100,), steps=4, repeats=2, attack_steps=2, rounds=3, greedy_pool=300,
                    greedy_candidates=50, opt_steps=20, table4_max_batches=3_000_000)
        base.update(kw)
        return cls(**base)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="reevaluate", unit="part", leave=False)


def reevaluate(out: str, config: Optional[Config] = None, *, progress: bool = True) -> Dict[str, Any]:
    import torch

    from . import compile_options
    from .attacks import budget_for, run_attack
    from .data import load_dataset
    from .game import Verifier, play_game
    from .models import ModelSpec
    from .record import record_native, record_torch_fcn
    from .repro import NATIVE_MODELS, NN_MODELS, PAPERS, available_conditions, run_study

    cfg = config or Config()
    t_start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    data = load_dataset(cfg.dataset, cfg.data_path)
    native_ok = cfg.model in NATIVE_MODELS and data.vocab is None
    # CNNs run the reproducible path through exactforge.nn (images only)
    nn_ok = not native_ok and cfg.model in NN_MODELS and data.shape is not None and len(data.shape) == 3
    bar = _progress(6, progress)
    report: Dict[str, Any] = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
                              "dataset": {"name": data.name, "examples": len(data), "synthetic": data.synthetic},
                              "environment": {"python": platform.python_version(), "torch": torch.__version__,
                                              "cuda": torch.cuda.is_available(), "exactforge": compile_options()},
                              "papers": PAPERS}

    # 1. traces
    traces = {}
    if cfg.model in NATIVE_MODELS and data.vocab is None:
        spec = ModelSpec(cfg.model, int(np.prod(data.shape or (data.dim,))), data.num_classes,
                         (100,) if cfg.model == "fcn" else ())
        for engine in ("torch", "native"):
            d = os.path.join(out, "traces", engine)
            shutil.rmtree(d, ignore_errors=True)
            rec = record_native if engine == "native" else record_torch_fcn
            rec(d, spec, data, steps=cfg.steps, batch_size=cfg.batch, lr=0.01, seed=cfg.seed, data_path=cfg.data_path)
            traces[engine] = _verified(d, data)
    elif nn_ok:
        # CNNs: torch's own layers, and exactforge.nn's reproducible ones (the native path)
        from .record import record_zoo

        for engine, mode in (("torch", None), ("native", "exact")):
            d = os.path.join(out, "traces", engine)
            shutil.rmtree(d, ignore_errors=True)
            record_zoo(d, cfg.model, data, steps=cfg.steps, batch_size=cfg.batch, lr=0.01, seed=cfg.seed, mode=mode,
                       data_path=cfg.data_path)
            traces[engine] = _verified(d, data)
    report["traces"] = traces
    if bar is not None:
        bar.update(1)

    # 2. reproduction errors and epsilon
    conds = [c for c in ("permute", "threads", "deterministic", "bf16") if c in available_conditions(cfg.model)]
    if native_ok:
        conds += ["native", "native+permute", "native+threads"]
    elif nn_ok:
        conds += ["reproducible", "reproducible+permute", "reproducible+threads"]
    conds += [c for c in available_conditions(cfg.model) if c.startswith("cuda")]
    study = run_study(cfg.model, cfg.dataset, cfg.batch_sizes, conds, repeats=cfg.repeats, steps=cfg.steps,
                      matrix_steps=min(5, cfg.steps), out=os.path.join(out, "repro"), data=data, seed=cfg.seed)
    repro_torch = max(study.conditions[c].max_error for c in study.calibrated_on)
    report["reproduction"] = {"conditions": {k: {"max_error": v.max_error, "zero_fraction": v.zero_fraction}
                                             for k, v in study.conditions.items()},
                              "max_benign_torch": repro_torch, "epsilon": study.epsilon,
                              "epsilon_native": study.epsilon_native, "false_reject_rate": study.false_reject_rate}
    if bar is not None:
        bar.update(1)

    # 3. attacks and exact solvers on sampled steps
    budget = {"pool": cfg.greedy_pool, "candidates": cfg.greedy_candidates, "steps": cfg.opt_steps}  # run_attack keywords
    verifiers = {"torch": Verifier(cfg.model, "torch", data, batch_size=cfg.batch, steps=cfg.steps, seed=cfg.seed)}
    if native_ok:
        verifiers["native"] = Verifier(cfg.model, "native", data, batch_size=cfg.batch, steps=cfg.steps, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sampled = sorted(rng.choice(cfg.steps, min(cfg.attack_steps, cfg.steps), replace=False).tolist())
    attacks: Dict[str, Any] = {}
    v = verifiers["torch"]
    for m in ("greedy", "nearest", "gradmatch", "dlg"):
        res = [run_attack(m, v.context(t), [int(v.batches[t][0])], seed=cfg.seed + t, **budget) for t in sampled]
        errs = [r.approx_error for r in res]
        e = float(np.median(errs))
        attacks[m] = {"median_error": e, "min_error": float(min(errs)), "steps": sampled,
                      "orders_above_repro": math.log10(e / repro_torch) if repro_torch > 0 and e > 0 else None,
                      "in_domain": bool(all(r.in_domain for r in res)),
                      "stealthy_at_epsilon": int(sum((r.approx_error <= study.epsilon) and r.in_domain for r in res)),
                      "attempts": len(res)}
    report["attacks"] = attacks
    if bar is not None:
        bar.update(1)
    exact_rows: Dict[str, Any] = {}
    lv = Verifier("logreg", "torch", data, batch_size=cfg.batch, steps=max(2, min(cfg.steps, cfg.attack_steps + 1)),
                  seed=cfg.seed) if data.vocab is None else None
    exact_targets = []
    if native_ok and cfg.model == "fcn":
        exact_targets.append(("fcn", v, "nullspace"))
    if lv is not None:
        exact_targets += [("logreg", lv, "nullspace"), ("logreg", lv, "error-matrix")]
    forgery_fig = None
    for model_name, ver, m in exact_targets:
        res = [run_attack(m, ver.context(t), list(ver.batches[t]), seed=cfg.seed + t)
               for t in range(min(len(ver.batches), max(1, cfg.attack_steps)))]
        grid, inside = [], []
        lo, hi = data.domain or (-np.inf, np.inf)  # the data's declared range (none: no range check)
        for r in res:
            if r.X is None:
                continue
            Xf = np.asarray(r.X, np.float64)
            inside.append(float(np.mean((Xf >= lo) & (Xf <= hi))))
            if data.levels and data.domain:
                u = (Xf - lo) / (hi - lo) * data.levels
                grid.append(float(np.mean(np.abs(u - np.round(u)) > 1e-6)))
        exact_rows[f"{m} ({model_name})"] = {
            "median_error": float(np.median([r.approx_error for r in res])),
            "distinct": bool(all(r.distinct for r in res)),
            "in_range_fraction": float(np.mean(inside)) if inside else None,
            "off_grid_fraction": float(np.mean(grid)) if grid else None,
            "labels_one_hot": bool(all(np.asarray(r.Y).ndim == 1 for r in res if r.Y is not None)),
            "in_domain": bool(all(r.in_domain for r in res))}
        if forgery_fig is None and res and res[0].distinct and res[0].X is not None and data.shape and len(data.shape) == 3:
            from .figures import plot_forgery

            t0 = 0
            forgery_fig = plot_forgery(data.X[ver.batches[t0]], np.asarray(res[0].X), os.path.join(out, "exact_forgery.png"),
                                       title=f"{m} forgery ({model_name}): exact gradient, pixels off the grid")
    report["exact"] = exact_rows
    if bar is not None:
        bar.update(1)

    # 4. the game
    games = []
    game_attacks = ["greedy", "nearest", "dlg"]
    for a in game_attacks:
        g = play_game(a, cfg.rounds, "auto", verifier=verifiers["torch"], budget=budget_for(a, **budget), seed=cfg.seed)
        games.append({"attack": a, "verifier": "torch, calibrated", "epsilon": g.epsilon, "domain_check": True, "win_rate": g.win_rate})
        if "native" in verifiers:
            g = play_game(a, cfg.rounds, 0.0, verifier=verifiers["native"], budget=budget_for(a, **budget), seed=cfg.seed)
            games.append({"attack": a, "verifier": "native, epsilon 0", "epsilon": 0.0, "domain_check": True, "win_rate": g.win_rate,
                          "resolution": g.resolution})
    if lv is not None:
        lvn = Verifier("logreg", "native", data, batch_size=cfg.batch, steps=len(lv.batches), seed=cfg.seed)
        for a in ("nullspace", "error-matrix"):
            for dc in (True, False):
                g = play_game(a, cfg.rounds, "auto", verifier=lv, domain_check=dc, seed=cfg.seed)
                games.append({"attack": f"{a} (logreg)", "verifier": "torch, calibrated", "epsilon": g.epsilon,
                              "domain_check": dc, "win_rate": g.win_rate})
                g = play_game(a, cfg.rounds, 0.0, verifier=lvn, domain_check=dc, seed=cfg.seed)
                games.append({"attack": f"{a} (logreg)", "verifier": "native, epsilon 0", "epsilon": 0.0,
                              "domain_check": dc, "win_rate": g.win_rate, "resolution": g.resolution})
    report["game"] = games
    if bar is not None:
        bar.update(1)

    # 5. exact forging theory
    report["theory"] = {"table4": table4_counts(cfg.table4_max_batches, seed=cfg.seed),
                        "resolution": resolution_study(lvn, min(cfg.attack_steps, len(lvn.batches)), out, cfg.seed)
                        if lv is not None else None}
    if bar is not None:
        bar.update(1)
        bar.close()
    report["seconds"] = time.perf_counter() - t_start
    _figures(report, out)
    report["figures"] = sorted(f for f in os.listdir(out) if f.endswith(".png")) + \
        [os.path.join("repro", f) for f in sorted(os.listdir(os.path.join(out, "repro"))) if f.endswith(".png")]
    from .trace import atomic_write

    atomic_write(os.path.join(out, "report.json"), json.dumps(report, indent=1, default=_jsonable).encode())
    atomic_write(os.path.join(out, "report.md"), _markdown(report).encode())
    return report


def _verified(d: str, data: Any) -> Dict[str, Any]:
    """A recorded trace verified at epsilon 0 as recorded, then with permuted batches on 1 thread."""
    from .verify import verify_trace

    same = verify_trace(d, dataset=data)
    perm = verify_trace(d, dataset=data, permute_batches=1, threads=1)
    return {"path": d, "verified_eps0": same.accepted, "max_error": same.max_error,
            "permuted_1thread_accepted_eps0": perm.accepted, "permuted_1thread_max_error": perm.max_error}


def table4_counts(max_batches: int, *, seed: int = 0) -> Dict[str, Any]:
    """The paper's Table 4 (d = 4, n = 3) re-answered with complete certified counts: every batch
    of each cell of at most ``max_batches`` batches is a true batch (``search --all``), for both
    models with and without bias on the q/(v-1) grid, v = 2, 3 and b = 1..5."""
    from ._native import _core
    from .search import Domain, run_search_all

    cells, t0 = [], time.perf_counter()
    for model in ("logreg", "fcn10"):
        for bias in (True, False):
            for v in (2, 3):
                for b in range(1, 6):
                    if _core.choose(Domain(4, 3, v).size, b) > max_batches:
                        continue
                    r = run_search_all(model, 4, 3, v, b, bias=bias, seed=seed)
                    cells.append({"model": model, "bias": bias, "v": v, "b": b, "batches": r.batches,
                                  "with_forgery": r.batches_with_forgery,
                                  "nontrivial": r.batches_with_nontrivial_forgery,
                                  "certificates": r.certificates})
    return {"cells": cells, "max_batches": max_batches, "seconds": time.perf_counter() - t0,
            "larger_cells": "benchmarks/RESULTS.md (python benchmarks/bench_table4.py --all)"}


def resolution_study(ver: Any, steps: int, out: str, seed: int = 0) -> Dict[str, Any]:
    """What epsilon = 0 can see on float32 checkpoints: the exact solvers forge ``steps`` steps of
    the native logistic-regression verifier, and each forgery's gradient difference from the true
    batch, computed in float64 per coordinate, is set beside the resolution ulp(theta_{t+1})/(2 lr)
    of that coordinate. A difference below it can vanish when theta_{t+1} is rounded."""
    from dataclasses import replace

    from .attacks import run_attack
    from .figures import plot_resolution
    from .models import loss_and_grad

    rows, pairs = [], []
    for m in ("nullspace", "error-matrix"):
        for t in range(steps):
            ctx = ver.context(t)
            r = run_attack(m, ctx, list(ctx.batch), seed=seed + t)
            if r.X is None or not r.distinct:
                continue
            st = ctx.stepper()
            spec = replace(st.native_spec(), dtype="float64")
            params = {k: np.asarray(v, np.float64) for k, v in st.to_native(ctx.theta).items()}
            b = len(ctx.batch)
            X = ctx.data.X[ctx.batch].reshape(b, -1).astype(np.float64)
            keys = np.arange(b)
            _, g = loss_and_grad(spec, params, X, ctx.data.y[ctx.batch], keys)
            _, gf = loss_and_grad(spec, params, np.asarray(r.X, np.float64).reshape(b, -1), np.asarray(r.Y), keys)
            diff = np.concatenate([np.abs(gf[k] - g[k]).ravel() for k in g])
            nxt = st.to_native(ctx.theta_next)
            res = np.concatenate([(np.spacing(np.abs(np.asarray(nxt[k], np.float32))).astype(np.float64) / (2 * ctx.lr))
                                  .ravel() for k in g])
            below = float(np.mean(diff < res))
            rows.append({"solver": m, "step": t, "max_gradient_difference": float(diff.max()),
                         "median_resolution": float(np.median(res)), "fraction_below_resolution": below,
                         "accepted_at_epsilon_0": bool(r.approx_error == 0.0), "in_domain": r.in_domain})
            pairs.append((m, diff, res))
    fig = plot_resolution(pairs, os.path.join(out, "resolution.png")) if pairs else None
    return {"forgeries": rows, "figure": fig and os.path.basename(fig),
            "what": "float64 gradient difference of each exact forgery vs ulp(theta_{t+1})/(2 lr), per coordinate"}


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)


def summary_table(report: Dict[str, Any]) -> str:
    """Reproduction error vs each attack's approximation error (the headline)."""
    rp = report["reproduction"]
    lines = ["| what | error (l2) | vs benign reproduction error | stealthy / in domain |", "|---|---|---|---|"]
    lines.append(f"| benign reproduction, torch (permute/threads/deterministic) | {rp['max_benign_torch']:.2e} | 1x | - |")
    if rp.get("epsilon_native") is not None:
        nat = max((v["max_error"] for k, v in rp["conditions"].items() if k.startswith(("native", "reproducible"))),
                  default=float("nan"))
        lines.append(f"| benign reproduction, exactforge's reproducible path (permuted batches, 1 thread) | {nat:.2g} | "
                     f"{'exactly 0' if nat == 0 else 'NOT 0'} | - |")
    lines.append(f"| calibrated epsilon (torch) | {rp['epsilon']:.2e} | {rp['epsilon'] / rp['max_benign_torch'] if rp['max_benign_torch'] else float('nan'):.0f}x | - |")
    for m, a in report["attacks"].items():
        o = a["orders_above_repro"]
        lines.append(f"| attack: {m} (median of {a['attempts']} steps) | {a['median_error']:.2e} | "
                     f"{'%.1f orders above' % o if o is not None else 'n/a'} | {a['stealthy_at_epsilon']}/{a['attempts']} stealthy; "
                     f"{'in domain' if a['in_domain'] else 'OUT of domain'} |")
    for m, e in report["exact"].items():
        if not e["distinct"]:
            lines.append(f"| exact: {m} | - | no distinct forgery exists (empty nullspace) | - |")
            continue
        lines.append(f"| exact: {m} | {e['median_error']:.2e} | "
                     f"{math.log10(e['median_error'] / rp['max_benign_torch']) if e['median_error'] > 0 and rp['max_benign_torch'] > 0 else 0:.1f} orders | "
                     f"OUT of domain: {e['off_grid_fraction'] or 0:.0%} of pixels off the grid, "
                     f"{1 - (e['in_range_fraction'] or 1):.0%} outside [0,1], labels {'one-hot' if e['labels_one_hot'] else 'soft'} |")
    return "\n".join(lines)


def _markdown(r: Dict[str, Any]) -> str:
    cfg, rp = r["config"], r["reproduction"]
    out = [f"# exactforge re-evaluation of data forging: {cfg['model']} on {r['dataset']['name']}"
           + (" (SYNTHETIC data)" if r["dataset"]["synthetic"] else ""),
           "", f"Batch {cfg['batch']}, {cfg['steps']} steps, {cfg['repeats']} repeats per condition; "
               f"run time {r['seconds']:.0f} s.", "", "## Summary", "", summary_table(r), "",
           "## Traces", ""]
    for eng, t in r["traces"].items():
        out.append(f"- {eng} path: verified at epsilon 0: {'accepted' if t['verified_eps0'] else 'rejected'} "
                   f"(max error {t['max_error']:.3g}); recomputed with permuted batches on 1 thread: "
                   f"{'accepted' if t['permuted_1thread_accepted_eps0'] else 'rejected'} at epsilon 0 "
                   f"(max error {t['permuted_1thread_max_error']:.3g}).")
    out += ["", "## Benign reproduction errors", "", "| condition | max error | exactly 0 |", "|---|---|---|"]
    for k, v in rp["conditions"].items():
        out.append(f"| {k} | {v['max_error']:.3g} | {v['zero_fraction']:.0%} |")
    out += ["", f"Calibrated epsilon {rp['epsilon']:.3g} (10x the largest float32 torch error, held-out false-reject rate "
                f"{rp['false_reject_rate']:.1%}); native path epsilon: {rp['epsilon_native']}.", "",
            "## The forging game", "", "| attack | verifier | epsilon | domain check | win rate |", "|---|---|---|---|---|"]
    for g in r["game"]:
        out.append(f"| {g['attack']} | {g['verifier']} | {g['epsilon']:.3g} | {'on' if g['domain_check'] else 'off'} | {g['win_rate']:.0%} |")
    out += ["", "## Exact forgeries: domain violations", ""]
    for m, e in r["exact"].items():
        out.append(f"- {m}: distinct={e['distinct']}, approximation error {e['median_error']:.3g}, "
                   f"pixels off the grid {e['off_grid_fraction']}, inside [0,1] {e['in_range_fraction']}, one-hot labels {e['labels_one_hot']}.")
    out += _theory_markdown(r.get("theory") or {}, r["game"])
    out += ["", "## Published magnitudes (papers)", ""] + [f"- {k}: {v}" for k, v in r["papers"].items()]
    out += ["", "## Figures", ""] + [f"![{f}]({f})" for f in r.get("figures", [])]
    return "\n".join(out) + "\n"


def _theory_markdown(th: Dict[str, Any], games: Any) -> list:
    out = ["", "## Table 4 re-answered: every batch a true batch", ""]
    t4 = th.get("table4")
    if t4:
        out += [f"d = 4 pixels, 3 classes, grey levels q/(v-1); every cell of at most {t4['max_batches']:.3g} batches, "
                f"counted completely and certified ({t4['seconds']:.0f} s). The paper sampled one true batch per cell "
                "and reported none. Larger cells: " + t4["larger_cells"] + ".", "",
                "| model | bias | v | b | batches | with a distinct equal-gradient batch | of those non-trivial | "
                "pairs by certificate |", "|---|---|---|---|---|---|---|---|"]
        for c in t4["cells"]:
            cert = ", ".join(f"{n:,} {k}" for k, n in sorted(c["certificates"].items())) or "none"
            out.append(f"| {c['model']} | {'yes' if c['bias'] else 'no'} | {c['v']} | {c['b']} | {c['batches']:,} | "
                       f"{c['with_forgery']:,} ({c['with_forgery'] / c['batches']:.2%}) | {c['nontrivial']:,} | {cert} |")
    rs = th.get("resolution")
    out += ["", "## What epsilon = 0 can see: the native verifier's resolution", ""]
    if not rs:
        return out + ["Not measured: it needs the native logistic-regression verifier (image or tabular data)."]
    res = sorted({g["resolution"] for g in games if g.get("resolution") is not None})
    out += ["On float32 checkpoints, a gradient change smaller than about ulp(theta)/(2 lr) can vanish when "
            "theta_{t+1} is rounded, so epsilon = 0 cannot tell such gradients apart. Median resolution of the "
            "native verifiers of this run: " + (", ".join(f"{x:.2g}" for x in res) or "n/a") + ". Exact forgeries have "
            "equal real gradients, so their computed gradients differ by rounding alone: out-of-domain ones can "
            "pass at epsilon = 0 (the game rows with the domain check off), and the domain check is what stops them.",
            "", "| solver | step | max gradient difference | median resolution | coordinates below it | "
            "accepted at epsilon 0 | in domain |", "|---|---|---|---|---|---|---|"]
    for f in rs["forgeries"]:
        out.append(f"| {f['solver']} | {f['step']} | {f['max_gradient_difference']:.2g} | {f['median_resolution']:.2g} | "
                   f"{f['fraction_below_resolution']:.1%} | {'yes' if f['accepted_at_epsilon_0'] else 'no'} | "
                   f"{'yes' if f['in_domain'] else 'no'} |")
    return out


def _figures(r: Dict[str, Any], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rp = r["reproduction"]
    names = ["repro (torch)"] + [f"attack: {m}" for m in r["attacks"]] + \
            [f"exact: {m}" for m, e in r["exact"].items() if e["distinct"]]
    vals = [rp["max_benign_torch"]] + [a["median_error"] for a in r["attacks"].values()] + \
           [e["median_error"] for e in r["exact"].values() if e["distinct"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["tab:green"] + ["tab:red"] * len(r["attacks"]) + ["tab:purple"] * (len(vals) - 1 - len(r["attacks"]))
    ax.bar(range(len(vals)), [max(v, 1e-20) for v in vals], color=colors)
    ax.set_yscale("log")
    ax.axhline(rp["epsilon"], color="k", ls="--", lw=0.8, label=f"calibrated epsilon {rp['epsilon']:.1e}")
    ax.set_xticks(range(len(vals)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("l2 error of the recomputed step")
    ax.set_title("benign reproduction error vs forging attacks (native path: reproduction error exactly 0)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "headline.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels = [f"{g['attack']}\n{g['verifier']}{'' if g['domain_check'] else ', no domain'}" for g in r["game"]]
    ax.bar(range(len(labels)), [g["win_rate"] for g in r["game"]], color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("adversary win rate")
    ax.set_title("the data forging game", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "game.png"), dpi=110)
    plt.close(fig)
