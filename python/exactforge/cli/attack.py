"""``exactforge attack``: run a known forging attack on one step of a trace."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import _FRACTION, _SEED, _count, _data_args, _given_data, _sub, say, write_json


def register(sub: Any) -> None:
    a = _sub(sub, "attack", "run a known forging attack on one step of a trace", json_what="the attack's result")
    a.add_argument("trace", help="the trace folder (logreg or fcn, --checkpoint-every 1)")
    a.add_argument(
        "--method",
        "--attack",
        dest="method",
        choices=("greedy", "nearest", "gradmatch", "gradmatch-subset", "dlg", "idlg"),
        default="greedy",
        help="the attack (--attack is the same option, as in game)",
    )
    a.add_argument("--step", type=_count(0), required=True, help="the step attacked")
    a.add_argument("--fraction", type=_FRACTION, default=0.01, help="forging fraction: share of the batch replaced")
    a.add_argument("--pool", type=_count(1), default=1000, help="greedy: points sampled from D minus U (n)")
    a.add_argument("--candidates", type=_count(1), default=300, help="greedy: candidate batches (M)")
    a.add_argument(
        "--opt-steps", type=_count(1), default=100, help="gradmatch, dlg and their variants: optimisation steps"
    )
    a.add_argument(
        "--metric",
        choices=("l2", "cosine"),
        default="cosine",
        help="nearest: cosine similarity of the raw inputs (Zhang et al.'s, the default) or l2 distance",
    )
    a.add_argument("--seed", type=_SEED, default=0, help="seed of the removed examples and of the attack")
    _data_args(a, None)
    a.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    import numpy as np

    from ..forging.attacks import run_attack

    ctx = _step_context(args)
    rng = np.random.default_rng(args.seed)  # (--fraction is range-checked by argparse)
    r = max(1, int(round(args.fraction * len(ctx.batch))))
    distinct = np.unique(ctx.batch)  # a batch drawn with replacement may repeat an example
    remove = [int(i) for i in rng.choice(distinct, min(r, len(distinct)), replace=False)]
    res = run_attack(
        args.method,
        ctx,
        remove,
        pool=args.pool,
        candidates=args.candidates,
        steps=args.opt_steps,
        seed=args.seed,
        metric=args.metric,
    )
    out = res.to_dict()
    out.update({"step": args.step, "trace": args.trace, **{k: v for k, v in res.metrics.items()}})
    write_json(args, out)
    say(
        args,
        f"{args.method} at step {args.step}: replaced {res.replaced}/{len(ctx.batch)} "
        f"(forging fraction {res.fraction:.3g}; {res.objective}), approx_error {res.approx_error:.3g} "
        f"(linf {res.metrics['linf']:.3g}, l2sq {res.metrics['l2sq']:.3g}, l2sq_dim {res.metrics['l2sq_dim']:.3g}), "
        f"distinct={res.distinct}, in domain={res.in_domain}, {res.seconds:.2f} s",
    )
    return 0


def _step_context(args: argparse.Namespace) -> Any:
    from ..forging.context import open_exactforge_trace, step_context

    trace, spec, data = open_exactforge_trace(args.trace, _given_data(args), args.data_path)
    return step_context(trace, spec, data, args.step)
