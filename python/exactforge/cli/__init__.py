"""The `exactforge` command line."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import List, Optional

from ..report import jsonio as _json

__all__ = ["main"]


# -- argument types: a bad value exits 2 with "argument --name: ..." before anything runs --------
def _count(lo: int = 1, hi: Optional[int] = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi if hi is not None else 'inf'}, got {v}")
        return v
    parse.__name__ = "integer"
    return parse


def _real(lo: float = 0.0, hi: float = math.inf, *, lo_open: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < lo or (lo_open and v == lo) or v > hi:
            lo_s = f"({lo:g}" if lo_open else f"[{lo:g}"
            raise argparse.ArgumentTypeError(f"expected a finite number in {lo_s}, {hi:g}], got {text}")
        return v
    parse.__name__ = "number"
    return parse


def _epsilon_or_auto(text: str):
    return "auto" if text == "auto" else _real(0.0)(text)


_epsilon_or_auto.__name__ = "epsilon"
_SEED = _count(0, 2**63 - 1)
_POSITIVE = _real(0.0, lo_open=True)
_FRACTION = _real(0.0, 1.0, lo_open=True)


def _threads_type():
    from .. import MAX_THREADS

    return _count(1, MAX_THREADS)



def _cmd_demo(args: argparse.Namespace) -> int:
    from ..studies.demo import format_table, run_demo

    result = run_demo(batch_size=args.batch_size, permutations=args.permutations, lr=args.lr,
                      seed=args.seed, progress=not args.quiet)
    print(format_table(result))
    _json.write(args.json, result)
    return 0


def _parse_hidden(text: str) -> tuple:
    try:
        hidden = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise ValueError(f"--hidden: expected comma-separated layer widths like 32,32, got {text!r}") from None
    if any(h < 1 for h in hidden):
        raise ValueError("--hidden: layer widths must be positive")
    return hidden


def _cmd_train(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..models.native import ModelSpec
    from ..trace.record import record_native, record_torch_fcn, record_zoo

    if args.init != "uniform" and args.model not in ("logreg", "fcn"):
        raise ValueError(f"--init: sets the law of exactforge's own logreg and fcn; {args.model} is a torch zoo model")
    data = load_dataset(args.dataset, args.data_path)
    if args.model in ("lenet", "vggmini", "transformer"):
        # CNNs and the Transformer: torch with exactforge.nn's reproducible layers (native) or torch's own layers
        if args.resume or args.dtype != "float32":
            raise ValueError("--resume, --dtype: supported for logreg and fcn only")
        mode = None if args.engine == "torch" else (args.mode or "exact")
        if mode == "fixed":
            raise ValueError("--mode: the reproducible torch layers use --mode exact (fixed mode has no example keys "
                             "inside a torch model, so it would follow the batch order)")
        trace = record_zoo(args.out, args.model, data, lr=args.lr, steps=args.steps, batch_size=args.batch_size,
                           seed=args.seed, checkpoint_every=args.checkpoint_every, threads=args.threads, mode=mode,
                           data_path=args.data_path, progress=not args.quiet)
        return _trained(args, trace, data)
    args.mode = args.mode or "fixed"
    hidden = _parse_hidden(args.hidden) if args.model == "fcn" else ()
    if args.model == "fcn" and not hidden:
        raise ValueError("--hidden: an FCN needs at least one hidden layer, e.g. --hidden 100")
    spec = ModelSpec(args.model, data.dim, data.num_classes, hidden, dtype=args.dtype, init=args.init)
    common = dict(lr=args.lr, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                  checkpoint_every=args.checkpoint_every, threads=args.threads, data_path=args.data_path,
                  progress=not args.quiet)
    if args.engine == "native":
        trace = record_native(args.out, spec, data, mode=args.mode, resume=args.resume, **common)
    else:
        if args.resume:
            raise ValueError("--resume: supported for --engine native (torch traces are recorded in one run)")
        trace = record_torch_fcn(args.out, spec, data, **common)
    return _trained(args, trace, data)


def _trained(args: argparse.Namespace, trace, data) -> int:
    print(f"recorded {len(trace.records)} steps ({len(trace.checkpoint_steps)} checkpoints) of {args.engine} "
          f"{args.model} on {data.name} in {args.out}")
    _json.write(args.json, {"trace": args.out, "engine": args.engine, "model": args.model, "dataset": data.name,
                            "steps": len(trace.records), "checkpoints": list(trace.checkpoint_steps),
                            "complete": trace.complete, "fingerprint": trace.manifest["data"]["fingerprint"]})
    return 0


def _given_data(args: argparse.Namespace):
    """The data set named by --dataset (loaded by the verifier itself), or None: the trace's."""
    if getattr(args, "dataset", None) is None:
        return None
    from ..data import load_dataset

    return load_dataset(args.dataset, args.data_path)


def _executor(args: argparse.Namespace):
    """The RayExecutor of --ray (None without it); exit 2 naming the install command without Ray."""
    if not getattr(args, "ray", None):
        return None
    from ..verify.ray import RayExecutor, require_ray

    try:
        require_ray()
    except ImportError as exc:
        raise ValueError(f"--ray: {exc}") from None
    if args.ray != "local" and args.ray_cpus is not None:
        raise ValueError("--ray-cpus: sets the size of a local Ray instance (--ray local); a cluster has its own")
    return RayExecutor(args.ray, num_cpus=args.ray_cpus, max_retries=args.ray_retries,
                       checkpoints=getattr(args, "ray_checkpoints", "auto"))


def _ray_args(p: argparse.ArgumentParser, what: str, checkpoints: bool = False) -> None:
    p.add_argument("--ray", metavar="ADDRESS|local",
                   help=f"run {what} as Ray tasks: 'local' starts Ray on this machine, otherwise a cluster's "
                        f"address (auto, HOST:PORT, ray://HOST:10001); needs pip install \"exactforge[ray]\"")
    p.add_argument("--ray-cpus", type=_count(1, 4096), help="CPUs of the local Ray instance (none given: all)")
    p.add_argument("--ray-retries", type=_count(0, 100), default=3,
                   help="Ray's retries of a task whose worker died; a task still lost makes the result invalid")
    if checkpoints:
        p.add_argument("--ray-checkpoints", choices=("auto", "shared", "ship"), default="auto",
                       help="workers read the trace folder (shared: the same path on every node) or get each "
                            "checkpoint's bytes from the object store (ship); auto: shared for local, else ship")


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..verify.verifier import verify_trace

    given = _given_data(args)
    executor = _executor(args)
    rep = verify_trace(args.trace, epsilon=args.epsilon, distance_kind=args.distance, policy=args.policy,
                       q=args.q, fraction=args.fraction, seed=args.seed, permute_batches=args.permute_batches,
                       threads=args.threads, dataset=given, data_path=None if given else args.data_path,
                       progress=not args.quiet, allow_partial=args.allow_partial, executor=executor)
    _json.write(args.json, rep.to_dict())
    if not rep.valid:
        print(f"exactforge verify: invalid: {rep.reason}", file=sys.stderr)
        return 2
    verdict = "ACCEPTED" if rep.accepted else "REJECTED"
    failed = sum(not s.passed for s in rep.steps)
    scope = (f"PARTIAL trace: steps 0..{rep.num_steps} of {rep.declared_steps if rep.declared_steps else '?'} "
             f"declared, {rep.unverified_tail} recorded step(s) after the last checkpoint not verified; "
             if rep.partial else "")
    err = f"{rep.max_error:.6g}" if rep.max_error == rep.max_error else "undefined"
    ex = rep.executor
    where = (f" on Ray ({ex['workers']} workers, {ex['tasks']} tasks, {ex['attempts'] - ex['tasks']} retried "
             f"attempt(s))" if ex else "")
    res = f"; resolution {rep.resolution:.2g} (gradient changes below it can vanish in float rounding)" \
        if rep.resolution is not None else ""
    some = (f"{len(rep.steps)} of {rep.total_segments} segments recomputed (--policy {rep.policy}: the others "
            "were not checked)" if len(rep.steps) < rep.total_segments else f"{len(rep.steps)} segment(s) recomputed")
    print(f"{verdict}: {scope}{some}{where} ({rep.engine}, theta_0 {rep.initial}), "
          f"max {rep.distance} error {err}, epsilon {rep.epsilon:g}, {failed} over epsilon{res}")
    return 0 if rep.accepted else 1


def _exactforge_trace(path: str, args: argparse.Namespace):
    """An exactforge model's trace (logreg or fcn, either engine) with its checked training data."""
    from ..models.native import ModelSpec
    from ..trace import TraceError
    from ..verify.verifier import open_with_data

    given = _given_data(args)
    trace, data = open_with_data(path, given, None if given else args.data_path)
    if "kind" not in trace.manifest["model"]:
        raise TraceError("model: the trace names no exactforge model (logreg or fcn)")
    return trace, ModelSpec.from_dict(trace.manifest["model"]), data


def _exactforge_params(trace, spec, step: int):
    """theta_step in exactforge's layout, from a native checkpoint or a TorchFCN state_dict."""
    from ..models.native import check_params

    state = trace.load_checkpoint(step)
    if trace.manifest["engine"] == "torch":
        import torch

        from ..models.torch_fcn import TorchFCN, from_torch

        module = TorchFCN(spec)
        module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
        return from_torch(spec, module)
    return check_params(spec, state, f"checkpoint {step}")


def _cmd_forge(args: argparse.Namespace) -> int:
    import numpy as np

    from ..forging import solvers as E
    from ..trace import TraceError, encode_checkpoint, atomic_write

    try:
        trace, spec, data = _exactforge_trace(args.trace, args)
        man = trace.manifest
        if not 0 <= args.step < len(trace.records):
            raise ValueError(f"--step: the trace has steps 0..{len(trace.records) - 1}")
        if args.step not in trace.checkpoint_steps:
            raise ValueError(f"--step: no checkpoint theta_{args.step} was logged; steps with one: "
                             f"{trace.checkpoint_steps[:10]}{'...' if len(trace.checkpoint_steps) > 10 else ''}")
        params = _exactforge_params(trace, spec, args.step)
    except TraceError as exc:
        print(f"exactforge forge: invalid trace: {exc}", file=sys.stderr)
        return 2
    idx = trace.batch(args.step)
    X, y = data.X[idx], data.y[idx]
    rng = np.random.default_rng(args.seed)
    others = np.setdiff1d(np.arange(len(data)), idx)
    Xt = data.X[rng.choice(others, size=len(idx), replace=len(others) < len(idx))]
    if args.method == "nullspace":
        forged = E.forge_nullspace(spec, params, X, y, target="random" if args.target == "random" else Xt,
                                   scale=args.scale, seed=args.seed)
    else:
        if spec.kind != "logreg":
            raise ValueError("--method error-matrix: applies to logistic regression traces; use nullspace for an FCN")
        forged = E.forge_error_matrix(spec, params, X, y, target=None if args.target == "random" else Xt, seed=args.seed)
    rep = E.forgery_report(spec, params, X, y, forged, lr=float(man["lr"]), levels=data.levels,
                           data_range=data.domain or (-math.inf, math.inf),
                           torch_permutations=args.permutations)
    out = rep.to_dict()
    out.update({"step": args.step, "trace": args.trace, "lr": float(man["lr"]), "batch_size": int(len(idx))})
    figures = [args.figure] if args.figure else []
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        Y = np.asarray(forged.Y)
        atomic_write(os.path.join(args.out, "forgery.safetensors"),
                     encode_checkpoint({"X": np.asarray(forged.X, np.float64),
                                        "Y": Y.astype(np.int64 if Y.ndim == 1 else np.float64)}, args.step))
        _json.write(os.path.join(args.out, "report.json"), out)
        figures.append(os.path.join(args.out, "forgery.png"))
    if figures and data.shape is not None and len(data.shape) == 3:
        from ..report.figures import plot_forgery

        for path in figures:
            plot_forgery(X, forged.X, path, domain=data.domain, title=f"{forged.method} forgery of step {args.step} "
                         f"(approx. error {rep.approx_error:.2g}, in range {rep.in_range_fraction:.0%})")
    elif figures:
        print(f"exactforge forge: no figure: {data.name} examples are not images", file=sys.stderr)
    _json.write(args.json, out)
    print(f"{forged.method} forgery of step {args.step}: distinct={rep.distinct}, approx_error={rep.approx_error:.3g} "
          f"(float64 {rep.approx_error_f64:.3g}; torch permutation repro {rep.repro_error_torch or 0:.3g}), "
          f"in range {rep.in_range_fraction:.1%}, labels one-hot={rep.labels_one_hot}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    import json

    from ..forging.search import TABLE_B, TABLE_V, format_table, run_search, run_table

    biases = {"yes": (True,), "no": (False,), "both": (True, False)}[args.bias]
    if args.table:
        import time

        models = ("logreg", "fcn10") if args.model == "all" else (args.model,)
        t0 = time.perf_counter()

        from math import comb

        from ..forging.search import MAX_ALL_BATCHES

        def work(v: int, b: int) -> float:
            # rough cost of a cell, for the ETA: a complete count enumerates every batch, meet in
            # the middle builds and probes tables of half-batches
            n_ex = v ** args.d * args.n
            if args.all and comb(n_ex, b) <= MAX_ALL_BATCHES:
                return float(comb(n_ex, b))
            return float(comb(n_ex, (b + 1) // 2) + args.true_batches * comb(n_ex, b // 2))

        weights = [work(v, b) for _m in models for _b in biases for v in TABLE_V for b in TABLE_B]

        def cell(r, done: int, total: int) -> None:
            # each cell as it finishes: the grid takes about an hour, and a killed run keeps
            # every finished cell in --json; the ETA scales the time so far by the cells' sizes
            spent = time.perf_counter() - t0
            left = spent * sum(weights[done:]) / max(sum(weights[:done]), 1.0)
            eta = f", about {left / 60:.0f} min left" if done < total else ""
            print(f"[{done}/{total}, {spent:.0f} s{eta}] {r.model} {'bias' if r.bias else 'no bias'} "
                  f"v={r.v} b={r.b}: {r.batches_with_forgery} of {r.true_batches} true batches with a forgery "
                  f"({r.found} forgeries, {r.structural} trivial), {r.seconds:.1f} s", flush=True)
            done_cells.append(r)
            _json.write(args.json, {"cells": [c.to_dict() for c in done_cells], "complete": done == total,
                                    "seconds": time.perf_counter() - t0})

        done_cells: list = []
        results = run_table(models, biases, TABLE_V, TABLE_B, d=args.d, n=args.n, seed=args.seed,
                            true_batches=args.true_batches, method=args.method, threads=args.threads,
                            max_memory_mib=args.max_memory, progress=not args.quiet, max_batches=args.max_batches,
                            levels=args.levels, all_cells=args.all, on_cell=cell)
        text = format_table(results)
        print(text)
        total = sum(r.seconds for r in results)
        print(f"\n{len(results)} cells, {sum(r.found for r in results)} forgeries, "
              f"{sum(r.structural for r in results)} trivial ones, {total:.1f} s")
        _json.write(args.json, {"cells": [r.to_dict() for r in results], "complete": True, "seconds": total})
        return 0
    if args.model == "all" or len(biases) != 1:
        raise ValueError("--model all and --bias both apply to --table; choose one model and --bias yes|no")
    if args.all:
        from ..forging.search import run_search_all

        r = run_search_all(args.model, args.d, args.n, args.v, args.b, seed=args.seed, bias=biases[0],
                           levels=args.levels, threads=args.threads, max_memory_mib=args.max_memory)
        print(f"{r.model} ({'bias' if r.bias else 'no bias'}) d={r.d} n={r.n} v={r.v} b={r.b}, every batch a true "
              f"batch: {r.batches_with_forgery} of {r.batches} batches have a distinct batch with an equal gradient "
              f"({r.structural} only trivially); pairs by certificate: "
              f"{', '.join(f'{v} {k}' for k, v in sorted(r.certificates.items())) or 'none'}; {r.seconds:.1f} s")
        _json.write(args.json, r.to_dict())
        return 0
    r = run_search(args.model, args.d, args.n, args.v, args.b, seed=args.seed, bias=biases[0], method=args.method,
                   true_batches=args.true_batches, tolerance=args.tolerance, threads=args.threads,
                   max_memory_mib=args.max_memory, progress=not args.quiet, max_batches=args.max_batches,
                   levels=args.levels)
    print(f"{r.model} ({'bias' if r.bias else 'no bias'}) d={r.d} n={r.n} v={r.v} b={r.b}: {r.batches} batches x "
          f"{r.true_batches} true batches searched by {r.method} ({r.mode}) in {r.seconds:.2f} s: {r.found} forgeries "
          f"({', '.join(f'{v} {k}' for k, v in sorted(r.certificates.items()) if k != 'trivial') or 'none'}), "
          f"{r.structural} trivial (zero-influence examples), {r.batches_with_forgery} true batch(es) with a forgery, "
          f"{r.false_candidates} candidate(s) certified different")
    _json.write(args.json, r.to_dict())
    return 0


def _cmd_repro(args: argparse.Namespace) -> int:
    from ..studies.repro import available_conditions, run_study

    try:
        bss = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--batch-sizes: expected comma-separated integers like 32,100,1000, got {args.batch_sizes!r}") from None
    conds = [c.strip() for c in args.conditions.split(",") if c.strip()]
    if args.gpu_conditions:
        conds += [c for c in available_conditions(args.model) if c.startswith("cuda") and c not in conds]
    executor = _executor(args)
    try:
        rep = run_study(args.model, args.dataset, bss, conds, repeats=args.repeats, steps=args.steps, lr=args.lr,
                        seed=args.seed, safety_factor=args.safety_factor, matrix_steps=args.matrix_steps,
                        out=args.out, data_path=args.data_path, progress=not args.quiet, executor=executor)
    except RuntimeError as exc:  # Ray tasks lost after their retries
        if executor is None:
            raise
        raise ValueError(f"--ray: {exc}") from None
    print(f"{rep.model} on {rep.dataset}{' (synthetic)' if rep.synthetic else ''}: {len(rep.conditions)} conditions, "
          f"{rep.seconds:.1f} s")
    for name, s in rep.conditions.items():
        print(f"  {name:18s} max {s.max_error:.3g}  mean {s.mean_error:.3g}  exactly 0: {s.zero_fraction:.0%}")
    print(f"calibrated epsilon {rep.epsilon:.3g} (x{rep.safety_factor:g}), held-out false-reject rate "
          f"{rep.false_reject_rate:.2%}; report in {args.out}/report.json")
    _json.write(args.json, rep.to_dict())
    return 0


def _trace_step_context(path: str, step: int, args: argparse.Namespace):
    """The attack's view of a step of an exactforge trace (logreg or fcn, native or torch engine)."""
    import numpy as np

    from ..forging.attacks import StepContext
    from ..models.torch_fcn import to_torch
    from ..models.zoo import _Flat

    trace, spec, data = _exactforge_trace(path, args)
    if not (0 <= step and step + 1 in trace.checkpoint_steps and step in trace.checkpoint_steps):
        raise ValueError(f"--step: needs theta_T and theta_T+1 (a trace with --checkpoint-every 1); the trace has "
                         f"{len(trace.records)} steps and checkpoints {trace.checkpoint_steps[:8]}...")

    def flat(s: int) -> np.ndarray:  # torch parameter order, the attacks' layout
        module = to_torch(spec, _exactforge_params(trace, spec, s))
        return np.concatenate([p.detach().numpy().ravel() for p in module.parameters()]).astype(np.float32)

    net = _Flat(to_torch(spec, _exactforge_params(trace, spec, step)))  # datasets carry image shapes
    return StepContext(net, data, flat(step), flat(step + 1), trace.batch(step), float(trace.manifest["lr"]),
                       engine=trace.manifest["engine"], model_name=spec.kind, spec=spec)


def _cmd_attack(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from ..forging.attacks import run_attack
    from ..trace import TraceError

    try:
        ctx = _trace_step_context(args.trace, args.step, args)
    except TraceError as exc:
        print(f"exactforge attack: invalid trace: {exc}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)  # (--fraction is range-checked by argparse)
    r = max(1, int(round(args.fraction * len(ctx.batch))))
    distinct = np.unique(ctx.batch)  # a batch drawn with replacement may repeat an example
    remove = [int(i) for i in rng.choice(distinct, min(r, len(distinct)), replace=False)]
    res = run_attack(args.method, ctx, remove, pool=args.pool, candidates=args.candidates, steps=args.opt_steps,
                     seed=args.seed, metric=args.metric)
    out = res.to_dict()
    out.update({"step": args.step, "trace": args.trace, **{k: v for k, v in res.metrics.items()}})
    _json.write(args.json, out)
    print(f"{args.method} at step {args.step}: replaced {res.replaced}/{len(ctx.batch)}, approx_error {res.approx_error:.3g} "
          f"(linf {res.metrics['linf']:.3g}, l2sq {res.metrics['l2sq']:.3g}, l2sq_dim {res.metrics['l2sq_dim']:.3g}), "
          f"distinct={res.distinct}, in domain={res.in_domain}, {res.seconds:.2f} s")
    return 0


def _cmd_invert(args: argparse.Namespace) -> int:
    from ..invert.forensics import invert_step

    ctx = _trace_step_context(args.trace, args.step, args)
    rep, R = invert_step(ctx, args.step, args.method, activation=args.activation, force=args.force,
                         example=args.example, steps=args.opt_steps, seed=args.seed)
    out = rep.to_dict()
    out["trace"] = args.trace
    out["reconstructions"] = R.tolist()
    _json.write(args.json, out)
    if args.method == "tensor" and rep.reasons and not args.force:
        print(f"exactforge invert: the tensor method does not apply to this step: {'; '.join(rep.reasons)}. "
              "--method dlg works for any model; --force runs the tensor method without its guarantee",
              file=sys.stderr)
        return 2
    if args.figure and len(R):
        from ..report.figures import plot_forgery

        X = ctx.data.X.reshape(len(ctx.data), -1)
        lo, hi = float(X.min()), float(X.max())
        plot_forgery(X[rep.matched], R, args.figure, n=min(8, len(R)), domain=(lo, hi),
                     rows=("claimed", "reconstructed"),
                     labels=[f"#{i}" for i in rep.matched],
                     bottom_labels=[f"|cos| {c:.2f}" for c in rep.matched_cos],
                     title=f"step {args.step}: {args.method} reconstruction beside the claimed batch")
    n = len(R)
    print(f"{args.method} at step {args.step}: {n} reconstruction(s) of a batch of {len(rep.batch)}; |cos| with the "
          f"matched claimed examples: {', '.join(f'{c:.2f}' for c in rep.matched_cos)}; {rep.nearest_in_batch}/{n} "
          f"nearest data-set examples are in the claimed batch"
          + (f"; labels {rep.labels}" if rep.labels is not None else "")
          + (f"; example {rep.example}: best |cos| {rep.example_cos:.2f}, "
             f"{'consistent' if rep.example_consistent else 'not the nearest example of any reconstruction'}"
             if rep.example is not None else "") + f" ({rep.seconds:.1f} s)")
    return 0


def _cmd_game(args: argparse.Namespace) -> int:
    import json

    from ..forging.game import play_game

    eps = args.epsilon
    from ..forging.attacks import budget_for

    budget = budget_for(args.attack, args.pool, args.candidates, args.opt_steps)
    from ..data import load_dataset

    g = play_game(args.attack, args.rounds, eps, model=args.model, engine=args.engine, batch_size=args.batch_size,
                  steps=args.steps, lr=args.lr, fraction=args.fraction, domain_check=args.domain_check,
                  scenario=args.scenario, seed=args.seed, budget=budget, progress=not args.quiet,
                  data=load_dataset(args.dataset, args.data_path))
    _json.write(args.json, g.to_dict())
    print(f"{args.attack} vs the {g.engine} verifier ({g.model}, epsilon {g.epsilon:.3g}, {g.epsilon_source}; "
          f"domain check {'on' if g.domain_check else 'off'}; {g.scenario}): win rate {g.win_rate:.0%} over {len(g.rounds)} rounds; "
          f"verifier resolution {g.resolution:.2g} ({g.dtype} checkpoints: gradient changes below it can vanish)")
    lost = [r for r in g.rounds if not r.won]
    if lost:
        print(f"  e.g. round {lost[0].round}: {'; '.join(lost[0].reasons[:2])}")
    return 0


def _cmd_reevaluate(args: argparse.Namespace) -> int:
    from ..studies.reevaluate import Config, reevaluate, summary_table

    kw = dict(model=args.model, dataset=args.dataset, data_path=args.data_path, seed=args.seed)
    cfg = Config.quick(**kw) if args.quick else Config(**kw)
    rep = reevaluate(args.out, cfg, progress=not args.quiet)
    print(f"exactforge reevaluate: {cfg.model} on {rep['dataset']['name']}"
          f"{' (synthetic)' if rep['dataset']['synthetic'] else ''}, {rep['seconds']:.0f} s\n")
    print(summary_table(rep))
    wins = [g for g in rep["game"] if g["win_rate"] > 0]
    print("\nforging game: " + ("; ".join(f"{g['attack']} vs {g['verifier']}"
                                            f"{'' if g['domain_check'] else ' (no domain check)'}: {g['win_rate']:.0%}"
                                            for g in wins) if wins else "no attack won a round")
          + f"\nreport: {os.path.join(args.out, 'report.md')}")
    _json.write(args.json, rep)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .. import compile_options

    opts = compile_options()
    print(json.dumps(opts, indent=2))
    _json.write(args.json, opts)
    return 0


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown for every option (argparse's own formatter skips options without help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" not in text and action.option_strings and not (
                action.default is None or action.default is False or action.default == argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None:
            action.help = ""  # so that the default is printed for it too
        return super()._format_action(action)


_EXITS = {
    "done": "exit codes: 0 done, 2 invalid input (a bad argument, file or trace; the reason on stderr)",
    "verify": "exit codes: 0 accepted, 1 rejected (recomputed, a checkpoint farther than epsilon), 2 invalid input "
              "(a bad argument, data set or trace; the reason on stderr and in --json)",
}


def _data_choices():
    from ..data import DATASETS

    return DATASETS + ("npz",)


def _sub(sub, name: str, help_: str, exits: str = "done", *, json_what: str = "the result") -> argparse.ArgumentParser:
    """A subcommand with the conventions every command shares: --json FILE, --quiet, defaults in
    --help, exit codes in the epilog."""
    p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter, epilog=_EXITS[exits])
    p.add_argument("--json", metavar="FILE", help=f"also write {json_what} as JSON (undefined numbers are null)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    return p


def _data_args(p: argparse.ArgumentParser, default: Optional[str] = "digits", what: str = "training data") -> None:
    p.add_argument("--dataset", default=default, choices=_data_choices(),
                   help=f"{what}" + ("" if default else " (default: the one the trace names)") +
                   "; npz: your own arrays X, y in --data-path FILE.npz (optional lo, hi, levels: the domain)")
    p.add_argument("--data-path", help="local files of mnist, cifar10, adult or imdb (a folder), or the .npz file of "
                   "--dataset npz")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exactforge", description="Reproducible gradient reductions and "
                                "data-forging analysis for Proof-of-Learning execution traces.",
                                epilog="Every command takes --json FILE and --quiet; `exactforge COMMAND --help` "
                                "shows its defaults and exit codes.")
    sub = p.add_subparsers(dest="command", required=True)
    d = _sub(sub, "demo", "batch-order and thread-count experiment: torch vs exactforge's two modes")
    d.add_argument("--batch-size", type=_count(1), default=1000, help="examples in the batch")
    d.add_argument("--permutations", type=_count(1, 100_000), default=20, help="batch permutations to try")
    d.add_argument("--lr", type=_POSITIVE, default=0.01, help="SGD learning rate")
    d.add_argument("--seed", type=_SEED, default=0, help="seed of the weights, batch and permutations")
    d.set_defaults(func=_cmd_demo)

    t = _sub(sub, "train", "train a model with SGD and record its execution trace", json_what="a summary of the trace")
    t.add_argument("--engine", choices=("native", "torch"), default="native",
                   help="native: exactforge's bitwise-reproducible step; torch: autograd + BLAS")
    t.add_argument("--model", choices=("logreg", "fcn", "lenet", "vggmini", "transformer"), default="fcn",
                   help="lenet and vggmini: the papers' CNNs; transformer: a 2-layer causal Transformer on tokens "
                        "(synthetic-tokens, imdb); for these native = exactforge.nn's reproducible layers")
    t.add_argument("--hidden", default="100", help="hidden layer widths of the FCN, e.g. 32,32")
    _data_args(t)
    t.add_argument("--batch-size", type=_count(1, 1 << 20), default=64, help="examples per step")
    t.add_argument("--steps", type=_count(1, 100_000_000), default=50, help="SGD steps")
    t.add_argument("--lr", type=_POSITIVE, default=0.01, help="SGD learning rate")
    t.add_argument("--seed", type=_SEED, default=0, help="seed of the initial weights and of the batch order")
    t.add_argument("--checkpoint-every", type=_count(1), default=1, help="steps between checkpoints (k)")
    t.add_argument("--mode", choices=("fixed", "exact"), default=None,
                   help="reduction mode of the native engine (none given: fixed for logreg/fcn, exact for the "
                        "torch models)")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="weights and arithmetic")
    t.add_argument("--init", choices=("uniform", "gaussian"), default="uniform",
                   help="initial weights (logreg, fcn): torch's uniform law, or Gaussian of the same scale (the "
                        "law under which `exactforge invert --method tensor` has its guarantee)")
    t.add_argument("--threads", type=_threads_type(), help="CPU threads for training (none given: all)")
    t.add_argument("--resume", action="store_true", help="continue a trace in --out from its last checkpoint")
    t.add_argument("--out", required=True, help="folder of the trace (must not hold one, unless --resume)")
    t.set_defaults(func=_cmd_train)

    v = _sub(sub, "verify", "verify an execution trace", "verify", json_what="the verification report")
    v.add_argument("trace", help="the trace folder")
    # verify checks its own numbers (verify_trace) so that a bad one still gets a report in --json
    v.add_argument("--epsilon", type=float, default=0.0, help="largest accepted distance (>= 0)")
    v.add_argument("--distance", choices=("l2", "l1", "linf", "cosine", "l2sq", "l2sq_dim"), default="l2",
                   help="distance between the recomputed and the logged checkpoint")
    v.add_argument("--policy", choices=("all", "topq", "random"), default="all",
                   help="all steps; PoL's top-Q largest updates per epoch; a seeded random sample")
    v.add_argument("--q", type=int, default=1, help="steps per epoch for --policy topq")
    v.add_argument("--fraction", type=float, default=0.1, help="share of segments for --policy random")
    v.add_argument("--seed", type=int, default=0, help="seed of --policy random")
    v.add_argument("--permute-batches", type=int, metavar="SEED",
                   help="recompute with each batch's examples shuffled (same set)")
    v.add_argument("--threads", type=int, help="thread count of the recomputation (1..256)")
    _data_args(v, None, "the verifier's copy of the training data (a trace's own data path is never opened)")
    v.add_argument("--allow-partial", action="store_true",
                   help="verify the prefix of an incomplete trace (fewer steps than declared); reported as PARTIAL")
    _ray_args(v, "the segments", checkpoints=True)
    v.set_defaults(func=_cmd_verify)

    f = _sub(sub, "forge", "construct an exact forgery of one step of a trace and report it", json_what="the report")
    f.add_argument("trace", help="the trace folder (native or torch engine, logreg or fcn)")
    f.add_argument("--step", type=_count(0), required=True, help="the step whose batch is forged (needs theta_step)")
    f.add_argument("--method", choices=("nullspace", "error-matrix"), default="nullspace", help="the construction")
    f.add_argument("--target", choices=("random", "nearest"), default="random",
                   help="random: random nullspace coefficients / least-norm inputs; nearest: closest to real examples")
    f.add_argument("--scale", type=_POSITIVE, default=0.1, help="largest perturbation of --target random (nullspace)")
    f.add_argument("--seed", type=_SEED, default=0, help="seed of the construction")
    f.add_argument("--permutations", type=_count(0, 100_000), default=10,
                   help="torch permutations for the reproduction error")
    _data_args(f, None)
    f.add_argument("--out", metavar="DIR", help="folder for forgery.safetensors (X, Y), report.json and forgery.png")
    f.add_argument("--figure", metavar="PNG", help="original vs forged examples (also written into --out)")
    f.set_defaults(func=_cmd_forge)

    s_ = _sub(sub, "search", "exhaustive search for a distinct batch with the same gradient (Table 4)",
              json_what="every cell (with --table, rewritten as each cell finishes)")
    s_.add_argument("--model", choices=("logreg", "fcn10", "all"), default="logreg", help="the model of the cell")
    s_.add_argument("--d", type=_count(1, 64), default=4, help="pixels")
    s_.add_argument("--n", type=_count(2, 1000), default=3, help="classes")
    s_.add_argument("--v", type=_count(2, 1000), default=3, help="grey levels (pixel values q/(v-1))")
    s_.add_argument("--levels", choices=("grid", "paper"), default="grid",
                    help="grid: q/(v-1); paper: the papers' 8-bit levels floor(255 q/(v-1))/255 (0, 127, 255 at v=3)")
    s_.add_argument("--b", type=_count(1, 6), default=3, help="batch size")
    s_.add_argument("--seed", type=_SEED, default=0, help="seed of the weights and of the true batches")
    s_.add_argument("--bias", choices=("yes", "no", "both"), default="yes", help="models with a bias, without, both")
    s_.add_argument("--method", choices=("mitm", "brute"), default="mitm", help="meet in the middle or brute force")
    s_.add_argument("--true-batches", type=_count(1, 1_000_000), default=3, help="sampled true batches per search")
    s_.add_argument("--tolerance", type=_real(0.0), default=0.0, help="tau > 0: equal within ||delta|| <= tau")
    s_.add_argument("--threads", type=_threads_type(), help="threads of the search (none given: all)")
    s_.add_argument("--max-memory", type=_real(0.0, 2.0**40, lo_open=True), default=4096,
                    help="bound on everything the search allocates (examples, gradients, table; with --all the "
                         "key windows), MiB")
    s_.add_argument("--max-batches", type=_count(1), default=10**11,
                    help="brute force: refuse a search of more batches than this per true batch")
    s_.add_argument("--table", action="store_true", help="the whole grid v = 2..6, b = 1..5 (Table 4)")
    s_.add_argument("--all", action="store_true",
                    help="every batch of the cell is a true batch (cells up to 1e10 batches; v=3, b=5 takes a few "
                         "minutes): complete counts; with --table, for every cell that small (the others are sampled)")
    s_.set_defaults(func=_cmd_search)

    r = _sub(sub, "repro", "reproduction-error study and calibrated epsilon", json_what="the study's report")
    r.add_argument("--model", choices=("fcn", "lenet", "logreg", "vggmini", "transformer"), default="fcn",
                   help="the model trained and recomputed")
    _data_args(r)
    r.add_argument("--batch-sizes", default="32,100,1000", help="comma-separated batch sizes")
    r.add_argument("--conditions", default="permute,threads,deterministic,bf16",
                   help="comma-separated: permute, threads, deterministic, bf16, fp16, native, native+permute, "
                        "native+threads, reproducible, reproducible+permute, reproducible+threads (exactforge.nn: "
                        "logreg, fcn, lenet, vggmini, transformer) (and cuda, cuda+benchmark, cuda+deterministic on "
                        "a GPU machine)")
    r.add_argument("--gpu-conditions", action=argparse.BooleanOptionalAction, default=True,
                   help="add the CUDA conditions when a GPU is visible")
    r.add_argument("--repeats", type=_count(1), default=5, help="recomputations of each checkpoint per condition")
    r.add_argument("--steps", type=_count(1), default=50, help="SGD steps trained")
    r.add_argument("--lr", type=_POSITIVE, default=0.01, help="SGD learning rate")
    r.add_argument("--seed", type=_SEED, default=0, help="seed of the weights and of the batch order")
    r.add_argument("--safety-factor", type=_POSITIVE, default=10.0, help="epsilon = factor x largest benign error")
    r.add_argument("--matrix-steps", type=_count(0), default=10, help="steps of the cross-condition matrix (0: none)")
    r.add_argument("--out", required=True, help="folder of the report (report.md, report.json, figures)")
    _ray_args(r, "the recomputations (condition x batch size x repeat)")
    r.set_defaults(func=_cmd_repro)

    a = _sub(sub, "attack", "run a known forging attack on one step of a trace", json_what="the attack's result")
    a.add_argument("trace", help="the trace folder (logreg or fcn, --checkpoint-every 1)")
    a.add_argument("--method", "--attack", dest="method", choices=("greedy", "nearest", "gradmatch", "dlg"),
                   default="greedy", help="the attack (--attack is the same option, as in game)")
    a.add_argument("--step", type=_count(0), required=True, help="the step attacked")
    a.add_argument("--fraction", type=_FRACTION, default=0.01, help="forging fraction: share of the batch replaced")
    a.add_argument("--pool", type=_count(1), default=1000, help="greedy: points sampled from D minus U (n)")
    a.add_argument("--candidates", type=_count(1), default=300, help="greedy: candidate batches (M)")
    a.add_argument("--opt-steps", type=_count(1), default=100, help="gradmatch/dlg: optimisation steps")
    a.add_argument("--metric", choices=("l2", "cosine"), default="l2",
                   help="nearest: l2 distance, or cosine similarity of the raw inputs (Zhang et al.'s)")
    a.add_argument("--seed", type=_SEED, default=0, help="seed of the removed examples and of the attack")
    _data_args(a, None)
    a.set_defaults(func=_cmd_attack)

    iv = _sub(sub, "invert", "reconstruct the batch of a logged step from its update, and compare it with the "
              "claimed batch (forensics)", json_what="the report")
    iv.add_argument("trace", help="the trace folder (logreg or fcn, the step and the next checkpointed)")
    iv.add_argument("--step", type=_count(0), required=True, help="the step whose batch is reconstructed")
    iv.add_argument("--method", choices=("tensor", "dlg"), default="dlg",
                    help="tensor: the provable method for wide two-layer networks with Gaussian first-layer weights; "
                         "dlg: gradient matching with iDLG's labels, any model")
    iv.add_argument("--activation", choices=("relu", "tanh", "sigmoid"), default="relu",
                    help="the hidden layer's activation (tensor; exactforge's fcn uses relu)")
    iv.add_argument("--example", type=_count(0), help="a disputed example (data set index): is it consistent with the update?")
    iv.add_argument("--force", action="store_true", help="tensor: run where its conditions fail (no guarantee)")
    iv.add_argument("--opt-steps", type=_count(1, 100_000), default=100, help="dlg: L-BFGS iterations")
    iv.add_argument("--seed", type=_SEED, default=0, help="seed of the random start and contractions")
    iv.add_argument("--figure", metavar="PNG", help="reconstructions beside the claimed examples they match")
    _data_args(iv, None, "the verifier's copy of the training data")
    iv.set_defaults(func=_cmd_invert)

    g = _sub(sub, "game", "play the data forging game (Algorithm 1) and report the win rate", json_what="every round")
    g.add_argument("--attack", "--method", dest="attack",
                   choices=("greedy", "nearest", "gradmatch", "dlg", "nullspace", "error-matrix"),
                   default="greedy", help="the adversary's attack (--method is the same option, as in attack)")
    g.add_argument("--rounds", type=_count(1), default=10, help="rounds played")
    g.add_argument("--epsilon", type=_epsilon_or_auto, default="auto", help="auto (calibrated), 0, or a value")
    g.add_argument("--model", choices=("logreg", "fcn", "lenet", "vggmini"), default="fcn", help="the model trained")
    g.add_argument("--engine", choices=("torch", "native"), default="torch", help="the verifier's engine")
    _data_args(g)
    g.add_argument("--batch-size", type=_count(1), default=100, help="examples per step")
    g.add_argument("--steps", type=_count(1), default=10, help="steps the verifier trains")
    g.add_argument("--lr", type=_POSITIVE, default=0.01, help="SGD learning rate")
    g.add_argument("--fraction", type=_FRACTION, help="forging fraction (none given: only the target example)")
    g.add_argument("--domain-check", action=argparse.BooleanOptionalAction, default=True,
                   help="reject forgeries outside the data's declared domain (grid, range) or with non one-hot labels")
    g.add_argument("--scenario", choices=("membership", "unlearning"), default="membership", help="the adversary's goal")
    g.add_argument("--pool", type=_count(1), default=1000, help="greedy: points sampled from D minus U (n)")
    g.add_argument("--candidates", type=_count(1), default=300, help="greedy: candidate batches (M)")
    g.add_argument("--opt-steps", type=_count(1), default=100, help="gradmatch/dlg: optimisation steps")
    g.add_argument("--seed", type=_SEED, default=0, help="seed of the weights, the batches and the attacks")
    g.set_defaults(func=_cmd_game)

    e = _sub(sub, "reevaluate", "the main job: end-to-end re-evaluation of data forging (report folder)",
             json_what="the report (also in --out/report.json)")
    e.add_argument("--quick", action="store_true", help="small budgets (under a minute), for CI")
    e.add_argument("--model", choices=("fcn", "logreg", "lenet", "vggmini"), default="fcn", help="the model studied")
    _data_args(e)
    e.add_argument("--seed", type=_SEED, default=0, help="seed of everything")
    e.add_argument("--out", default="reevaluation", help="folder of the report")
    e.set_defaults(func=_cmd_reevaluate)

    i = _sub(sub, "info", "print what this installation was built with and dispatches to (compile_options)",
             json_what="compile_options()")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Exit codes: 0 success (accepted), 1 rejected after recomputation (verify), 2 invalid
    input: a bad argument, file or trace, with a message naming it on stderr. Never a
    traceback; EXACTFORGE_DEBUG=1 re-raises unexpected errors for a bug report."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse refused an argument (2, message printed) or --help (0)
        return int(exc.code) if isinstance(exc.code, int) else 2
    from ..trace import TraceError

    try:
        return int(args.func(args))
    except (TraceError, ValueError, TypeError, OSError, OverflowError) as exc:
        what = "invalid trace" if isinstance(exc, TraceError) else "error"
        msg = exc.strerror + (f": {exc.filename}" if exc.filename else "") if isinstance(exc, OSError) and exc.strerror else exc
        print(f"exactforge {args.command}: {what}: {msg}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"exactforge {args.command}: error: out of memory; choose smaller sizes (or --max-memory "
              "where the command has it)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"exactforge {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback
        if os.environ.get("EXACTFORGE_DEBUG"):
            raise
        print(f"exactforge {args.command}: internal error ({type(exc).__name__}: {exc}); "
              "please report it (EXACTFORGE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
