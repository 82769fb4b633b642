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

import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..report import jsonio
from ..report.files import atomic_write
from ..report.progress import progress_bar
from .reevaluate_figures import figures
from .report_md import markdown, summary_table
from .theory import resolution_study, table4_counts

__all__ = ["Config", "reevaluate", "summary_table", "table4_counts", "resolution_study"]


@dataclass
class Config:
    model: str = "fcn"
    dataset: str = "digits"
    data_path: Optional[str] = None
    batch_sizes: tuple = (32, 100, 1000)
    batch: int = 100  # batch size of the traces, attacks and game
    steps: int = 20  # steps of the traces and of the study
    repeats: int = 5
    attack_steps: int = 10  # sampled steps per attack
    rounds: int = 20  # game rounds per cell (a win rate to 5%)
    greedy_pool: int = 1000
    greedy_candidates: int = 300
    opt_steps: int = 100  # gradient matching / DLG
    table4_max_batches: int = 200_000_000  # Table 4 cells counted completely in the report
    table4_levels: tuple = (2, 3)  # grey levels v of those cells
    spoof_victim_steps: int = 100  # the victims' training, whose final model the spoofs claim
    # the spoofing sweeps (a spoof has k x checkpoints steps; its dummy spacing is the distance
    # to travel over its checkpoints): k with the checkpoints held, the checkpoints with k held,
    # the interval check's bound with the spoof of the largest k held
    spoof_checkpoints: int = 200  # checkpoints held while k varies
    spoof_intervals: tuple = (1, 2, 4)  # checkpoint intervals k of that sweep
    spoof_interval: int = 1  # k held while the number of checkpoints (the spacing) varies
    spoof_checkpoint_counts: tuple = (10, 50, 200, 1000)  # checkpoints of that sweep
    spoof_max_interval: int = 10  # the interval check's bound in the first two sweeps
    spoof_max_intervals: tuple = (1, 2, 4, 10)  # bounds of the third sweep
    spoof_q: int = 2  # the reference's top-Q: segments per epoch (its default)
    spoof_noise_steps: int = 5  # the adversarial spoof's Adam iterations per step
    seed: int = 0

    @classmethod
    def quick(cls, **kw) -> "Config":
        base = dict(
            batch_sizes=(100,),
            steps=4,
            repeats=2,
            attack_steps=2,
            rounds=3,
            greedy_pool=300,
            greedy_candidates=50,
            opt_steps=20,
            table4_max_batches=200_000,
            table4_levels=(2,),
            spoof_victim_steps=10,
            spoof_checkpoints=5,
            spoof_intervals=(1, 2),
            spoof_checkpoint_counts=(2, 5, 20),
            spoof_max_intervals=(1, 2),
            spoof_noise_steps=2,
        )
        base.update(kw)
        return cls(**base)  # type: ignore[arg-type]


def reevaluate(out: str, config: Optional[Config] = None, *, progress: bool = True) -> Dict[str, Any]:
    """The main job: traces recorded and verified on both paths, reproduction errors and one
    epsilon per verifier, the attacks and the exact solvers on sampled steps, the forging game
    against each verifier, and the theory (Table 4's complete counts, the resolution); writes
    ``report.json``, ``report.md`` and the figures into ``out`` and returns the report."""
    from ..data import load_dataset
    from .repro import NATIVE_MODELS, NN_MODELS

    cfg = config or Config()
    t_start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    data = load_dataset(cfg.dataset, cfg.data_path)
    native_ok = cfg.model in NATIVE_MODELS and data.vocab is None
    # CNNs run the reproducible path through exactforge.nn (images only)
    nn_ok = not native_ok and cfg.model in NN_MODELS and data.shape is not None and len(data.shape) == 3
    bar = progress_bar(7, progress, "reevaluate", "part")

    def done() -> None:
        if bar is not None:
            bar.update(1)

    report = _header(cfg, data)
    report["traces"] = _record_traces(cfg, data, out, native_ok, nn_ok)  # 1. traces
    done()
    study, report["reproduction"], vtable = _reproduction(cfg, data, out, native_ok, nn_ok)  # 2. epsilon
    done()
    budget: Dict[str, Any] = {"pool": cfg.greedy_pool, "candidates": cfg.greedy_candidates, "steps": cfg.opt_steps}
    verifiers, report["attacks"] = _attacks(
        cfg, data, study, report["reproduction"]["max_benign_torch"], budget, native_ok
    )
    done()  # 3. attacks, then the exact solvers on sampled steps
    report["exact"], lv = _exact_forgeries(cfg, data, out, verifiers["torch"], native_ok)
    done()
    report["game"], lvn = _games(cfg, data, verifiers, study, vtable, lv, budget)  # 4. the game
    report["verifiers"] = vtable
    done()
    report["spoofing"] = _spoofing(cfg, data, out)  # 5. spoofing: whole traces for a model not trained
    done()
    report["theory"] = {  # 6. exact forging theory
        "table4": table4_counts(cfg.table4_max_batches, seed=cfg.seed, vs=cfg.table4_levels),
        "resolution": resolution_study(lvn, min(cfg.attack_steps, len(lvn.batches)), out, cfg.seed)
        if lvn is not None
        else None,
    }
    if bar is not None:
        bar.update(1)
        bar.close()
    report["seconds"] = time.perf_counter() - t_start
    figures(report, out)
    report["figures"] = sorted(f for f in os.listdir(out) if f.endswith(".png")) + [
        os.path.join("repro", f) for f in sorted(os.listdir(os.path.join(out, "repro"))) if f.endswith(".png")
    ]
    report["captions"] = {f: _caption(f, cfg, data) for f in report["figures"]}
    jsonio.write(os.path.join(out, "report.json"), report)
    atomic_write(os.path.join(out, "report.md"), markdown(report).encode())
    return report


def _spoofing(cfg: Config, data: Any, out: str) -> Optional[Dict[str, Any]]:
    """The spoofing study on this data (an FCN's victims; token data has none), with its figure
    (spoofing/spoofing.png, captioned in the study: the report's figure list covers the top
    folder and repro/ only)."""
    if data.vocab is not None:
        return None
    from ..report.figures import plot_spoofing
    from .spoofing import spoofing_study

    d = os.path.join(out, "spoofing")
    shutil.rmtree(d, ignore_errors=True)
    sp = spoofing_study(
        d,
        data,
        steps=cfg.spoof_victim_steps,
        batch=cfg.batch,
        seed=cfg.seed,
        noise_steps=cfg.spoof_noise_steps,
        checkpoints=cfg.spoof_checkpoints,
        intervals=cfg.spoof_intervals,
        interval=cfg.spoof_interval,
        checkpoint_counts=cfg.spoof_checkpoint_counts,
        max_interval=cfg.spoof_max_interval,
        max_intervals=cfg.spoof_max_intervals,
        q=cfg.spoof_q,
    )
    where = f"FCN victims (100 hidden units, {cfg.spoof_victim_steps} steps) on {data.name}, b = {cfg.batch}"
    plot_spoofing(sp, os.path.join(d, "spoofing.png"), f"{where}: which verifier accepts each spoof")
    sp["figure"] = {
        "path": "spoofing/spoofing.png",
        "caption": f"{where}: each spoof's verdict per verifier (marker) and attack (colour), filled where the "
        "verifier accepted it with its checks off, ringed where it also passed every check; (a) against the "
        "checkpoint interval k with the number of checkpoints held, (b) against the measured dummy spacing with "
        "k held, (c) against the interval check's bound with one spoof held.",
    }
    return sp


def _caption(name: str, cfg: Config, data: Any) -> str:
    """What a figure of the report shows, and at which batch size."""
    where = f"{cfg.model} on {data.name}"
    return {
        "headline.png": f"{where}, b = {cfg.batch}: the largest benign torch error against each attack's "
        f"approximation error (medians over {cfg.attack_steps} sampled steps) and the exact solvers'; a line marks "
        "each verifier's epsilon, a triangle at the left end each epsilon of 0 (only exactly 0 passes).",
        "game.png": f"{where}, b = {cfg.batch}: rounds won by the adversary in the forging game, per attack and "
        f"verifier, {cfg.rounds} rounds each, with the domain check on and off.",
        "exact_forgery.png": f"{data.name}, b = {cfg.batch}: the first distinct exact forgery of step 0 beside the "
        "true batch (the solver and the model it forges for are in the figure's title).",
        "resolution.png": f"logreg on {data.name}, b = {cfg.batch}: each exact forgery's float64 gradient "
        "difference per coordinate against the native verifier's resolution ulp(theta)/(2 lr).",
        "repro/batch_size_sweep.png": f"{where}: benign reproduction error per condition at b in "
        f"{list(cfg.batch_sizes)}.",
        "repro/condition_matrix.png": f"{where}, b = {min(cfg.batch_sizes)}: the largest error of a trace generated "
        "under one condition and recomputed under another.",
        "repro/errors_per_checkpoint.png": f"{where}, b = {max(cfg.batch_sizes)}: each checkpoint's reproduction "
        "error per condition, with the calibrated epsilon.",
    }.get(name, f"{where}, b = {cfg.batch}.")


def _header(cfg: Config, data: Any) -> Dict[str, Any]:
    """The report's first fields: the configuration, the data set, the environment, the papers."""
    import torch

    from .. import compile_options
    from ..report.machine import cpu_name
    from .repro import PAPERS

    return {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
        "dataset": {
            "name": data.name,
            "examples": len(data),
            "synthetic": data.synthetic,
            "domain": list(data.domain) if data.domain else None,
            "levels": data.levels,
        },
        "environment": {
            "cpu": cpu_name(),
            "date": time.strftime("%Y-%m-%d"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
            "exactforge": compile_options(),
        },
        "papers": PAPERS,
    }


def _record_traces(cfg: Config, data: Any, out: str, native_ok: bool, nn_ok: bool) -> Dict[str, Any]:
    """A trace on the torch path and one on the reproducible path, each verified."""
    from ..models.native import ModelSpec
    from ..trace.record import record_native, record_torch_fcn, record_zoo

    traces = {}
    if native_ok:
        spec = ModelSpec(
            cfg.model, int(np.prod(data.shape or (data.dim,))), data.num_classes, (100,) if cfg.model == "fcn" else ()
        )
        for engine in ("torch", "native"):
            d = os.path.join(out, "traces", engine)
            shutil.rmtree(d, ignore_errors=True)
            rec = record_native if engine == "native" else record_torch_fcn
            rec(d, spec, data, steps=cfg.steps, batch_size=cfg.batch, lr=0.01, seed=cfg.seed, data_path=cfg.data_path)
            traces[engine] = _verified(d, data)
    elif nn_ok:
        # CNNs: torch's own layers, and exactforge.nn's reproducible ones (the native path)
        for engine, mode in (("torch", None), ("native", "exact")):
            d = os.path.join(out, "traces", engine)
            shutil.rmtree(d, ignore_errors=True)
            record_zoo(
                d,
                cfg.model,
                data,
                steps=cfg.steps,
                batch_size=cfg.batch,
                lr=0.01,
                seed=cfg.seed,
                mode=mode,
                data_path=cfg.data_path,
            )
            traces[engine] = _verified(d, data)
    return traces


def _reproduction(cfg: Config, data: Any, out: str, native_ok: bool, nn_ok: bool) -> Tuple[Any, Dict[str, Any], list]:
    """The reproduction study, its summary, and the table of verifiers: one epsilon each,
    named, with how it was set (every table of the report refers to these)."""
    from .repro import available_conditions, run_study

    conds: List[str] = [
        c for c in ("permute", "threads", "deterministic", "bf16") if c in available_conditions(cfg.model)
    ]
    if native_ok:
        conds += ["native", "native+permute", "native+threads"]
    elif nn_ok:
        conds += ["reproducible", "reproducible+permute", "reproducible+threads"]
    conds += [c for c in available_conditions(cfg.model) if c.startswith("cuda")]
    study = run_study(
        cfg.model,
        cfg.dataset,
        cfg.batch_sizes,
        conds,
        repeats=cfg.repeats,
        steps=cfg.steps,
        matrix_steps=min(5, cfg.steps),
        out=os.path.join(out, "repro"),
        data=data,
        seed=cfg.seed,
    )
    summary = {
        "conditions": {
            k: {"max_error": v.max_error, "zero_fraction": v.zero_fraction} for k, v in study.conditions.items()
        },
        "max_benign_torch": max(study.conditions[c].max_error for c in study.calibrated_on),
        "epsilon": study.epsilon,
        "epsilon_native": study.epsilon_native,
        "false_reject_rate": study.false_reject_rate,
        "calibrated_on": list(study.calibrated_on),
        "safety_factor": study.safety_factor,
        "calibration_max": study.epsilon / study.safety_factor,
    }
    native_max = max(
        (v.max_error for k, v in study.conditions.items() if k.startswith(("native", "reproducible"))), default=None
    )
    vtable = [
        {
            "name": f"torch ({cfg.model})",
            "model": cfg.model,
            "engine": "torch",
            "epsilon": study.epsilon,
            "how": f"{study.safety_factor:g} x {study.epsilon / study.safety_factor:.3g}, the largest torch error under "
            f"{', '.join(study.calibrated_on)} in the calibration half of {cfg.repeats} repeats (reproduction "
            f"study); false-reject rate on the held-out half {study.false_reject_rate:.1%}",
        }
    ]
    if study.epsilon_native is not None:
        vtable.append(
            {
                "name": f"native ({cfg.model})",
                "model": cfg.model,
                "engine": "native" if native_ok else "exactforge.nn",
                "epsilon": 0.0,
                "how": "exactforge's reproducible path, whose measured reproduction error is "
                + ("exactly 0" if native_max == 0 else f"{native_max:.3g} (NOT 0)")
                + " under every condition",
            }
        )
    return study, summary, vtable


def _attacks(
    cfg: Config, data: Any, study: Any, repro_torch: float, budget: Dict[str, Any], native_ok: bool
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The verifiers of the game (torch; native where it exists) and the known attacks' errors
    on sampled steps of the torch verifier's run."""
    from ..forging.attacks import run_attack
    from ..forging.game import Verifier

    verifiers = {"torch": Verifier(cfg.model, "torch", data, batch_size=cfg.batch, steps=cfg.steps, seed=cfg.seed)}
    if native_ok:
        verifiers["native"] = Verifier(cfg.model, "native", data, batch_size=cfg.batch, steps=cfg.steps, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    sampled = sorted(rng.choice(cfg.steps, min(cfg.attack_steps, cfg.steps), replace=False).tolist())
    attacks: Dict[str, Any] = {}
    v = verifiers["torch"]
    for m in ("greedy", "nearest", "gradmatch", "gradmatch-subset", "dlg", "idlg"):
        res = [run_attack(m, v.context(t), [int(v.batches[t][0])], seed=cfg.seed + t, **budget) for t in sampled]
        errs = [r.approx_error for r in res]
        e = float(np.median(errs))
        attacks[m] = {
            "median_error": e,
            "min_error": float(min(errs)),
            "steps": sampled,
            "orders_above_repro": math.log10(e / repro_torch) if repro_torch > 0 and e > 0 else None,
            "in_domain": bool(all(r.in_domain for r in res)),
            "stealthy_at_epsilon": int(sum((r.approx_error <= study.epsilon) and r.in_domain for r in res)),
            "attempts": len(res),
            "forging_fraction": float(np.median([r.fraction for r in res])),
            "objective": res[0].objective,
        }
    return verifiers, attacks


def _exact_forgeries(cfg: Config, data: Any, out: str, v: Any, native_ok: bool) -> Tuple[Dict[str, Any], Any]:
    """The exact solvers on the first steps (the FCN's nullspace; logistic regression's
    nullspace and error matrix on a logreg verifier of its own, returned for the game), with
    the domain each forgery leaves and the figure of the first distinct one."""
    from ..forging.attacks import run_attack
    from ..forging.game import Verifier

    exact_rows: Dict[str, Any] = {}
    lv = (
        Verifier(
            "logreg",
            "torch",
            data,
            batch_size=cfg.batch,
            steps=max(2, min(cfg.steps, cfg.attack_steps + 1)),
            seed=cfg.seed,
        )
        if data.vocab is None
        else None
    )
    exact_targets = []
    if native_ok and cfg.model == "fcn":
        exact_targets.append(("fcn", v, "nullspace"))
    if lv is not None:
        exact_targets += [("logreg", lv, "nullspace"), ("logreg", lv, "error-matrix")]
    forgery_fig = None
    for model_name, ver, m in exact_targets:
        res = [
            run_attack(m, ver.context(t), list(ver.batches[t]), seed=cfg.seed + t)
            for t in range(min(len(ver.batches), max(1, cfg.attack_steps)))
        ]
        exact_rows[f"{m} ({model_name})"] = row = _exact_row(res, data)
        if (
            forgery_fig is None
            and res
            and res[0].distinct
            and res[0].X is not None
            and data.shape
            and len(data.shape) == 3
        ):
            from ..report.figures import plot_forgery

            forgery_fig = plot_forgery(
                data.X[ver.batches[0]],
                np.asarray(res[0].X),
                os.path.join(out, "exact_forgery.png"),
                domain=data.domain,
                title=f"{m} forgery ({model_name}) of step 0: the same gradient (approximation error "
                f"{res[0].approx_error:.2g}); {row['off_grid_fraction'] or 0:.0%} of pixels off the grid, "
                f"{1 - (row['in_range_fraction'] if row['in_range_fraction'] is not None else 1):.0%} outside the range",
            )
    return exact_rows, lv


def _exact_row(res: list, data: Any) -> Dict[str, Any]:
    """One solver's forgeries summarised: error, distinctness, and how far they leave the domain."""
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
    return {
        "median_error": float(np.median([r.approx_error for r in res])),
        "distinct": bool(all(r.distinct for r in res)),
        "in_range_fraction": float(np.mean(inside)) if inside else None,
        "off_grid_fraction": float(np.mean(grid)) if grid else None,
        "labels_one_hot": bool(all(np.asarray(r.Y).ndim == 1 for r in res if r.Y is not None)),
        "in_domain": bool(all(r.in_domain for r in res)),
    }


def _games(
    cfg: Config, data: Any, verifiers: Dict[str, Any], study: Any, vtable: list, lv: Any, budget: Dict[str, Any]
) -> Tuple[list, Any]:
    """The forging game against the verifiers of the table (their epsilons, not recalibrated);
    the exact solvers against logistic regression's two verifiers, with and without the domain
    check. Adds those verifiers to ``vtable``; returns the games and the native logreg verifier."""
    from ..forging.attacks import budget_for
    from ..forging.game import Verifier, play_game

    games = []
    game_attacks = ["greedy", "nearest", "dlg"]

    def play(a: str, ver: Any, eps: float, name: str, dc: bool = True) -> None:
        g = play_game(
            a,
            cfg.rounds,
            eps,
            verifier=ver,
            budget=budget_for(a, **budget) if a in game_attacks else None,
            domain_check=dc,
            seed=cfg.seed,
        )
        games.append(
            {
                "attack": a if a in game_attacks else f"{a} (logreg)",
                "verifier": name,
                "epsilon": g.epsilon,
                "domain_check": dc,
                "win_rate": g.win_rate,
                "rounds": len(g.rounds),
                "won": int(sum(r.won for r in g.rounds)),
                "resolution": g.resolution if eps == 0 else None,
            }
        )

    for a in game_attacks:
        play(a, verifiers["torch"], study.epsilon, vtable[0]["name"])
        if "native" in verifiers:
            play(a, verifiers["native"], 0.0, vtable[1]["name"])
    lvn = None
    if lv is not None:
        lvn = Verifier("logreg", "native", data, batch_size=cfg.batch, steps=len(lv.batches), seed=cfg.seed)
        eps_lr = lv.calibrate()
        vtable += [
            {
                "name": "torch (logreg)",
                "model": "logreg",
                "engine": "torch",
                "epsilon": eps_lr,
                "how": f"10 x {eps_lr / 10:.3g}, the largest error of this verifier's own {len(lv.batches)} steps "
                "recomputed with permuted batches and on 1 thread (the exact solvers attack logistic "
                "regression)",
            },
            {
                "name": "native (logreg)",
                "model": "logreg",
                "engine": "native",
                "epsilon": 0.0,
                "how": "exactforge's native path (reproduction error exactly 0)",
            },
        ]
        for a in ("nullspace", "error-matrix"):
            for dc in (True, False):
                play(a, lv, eps_lr, "torch (logreg)", dc)
                play(a, lvn, 0.0, "native (logreg)", dc)
    return games, lvn


def _verified(d: str, data: Any) -> Dict[str, Any]:
    """A recorded trace verified at epsilon 0 as recorded, then with permuted batches on 1 thread."""
    from ..verify.verifier import verify_trace

    same = verify_trace(d, dataset=data)
    perm = verify_trace(d, dataset=data, permute_batches=1, threads=1)
    return {
        "path": d,
        "verified_eps0": same.accepted,
        "max_error": same.max_error,
        "permuted_1thread_accepted_eps0": perm.accepted,
        "permuted_1thread_max_error": perm.max_error,
    }
