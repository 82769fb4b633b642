"""``exactforge invert``: reconstruct the batch of a logged step from its update, and compare it with the ."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import _SEED, _count, _data_args, _given_data, _sub, fail, say, write_json


def register(sub: Any) -> None:
    iv = _sub(
        sub,
        "invert",
        "reconstruct the batch of a logged step from its update, and compare it with the claimed batch (forensics)",
        json_what="the report",
    )
    iv.add_argument("trace", help="the trace folder (logreg or fcn, the step and the next checkpointed)")
    iv.add_argument("--step", type=_count(0), required=True, help="the step whose batch is reconstructed")
    iv.add_argument(
        "--method",
        choices=("tensor", "dlg"),
        default="dlg",
        help="tensor: the provable method for wide two-layer networks with Gaussian first-layer weights; "
        "dlg: gradient matching with iDLG's labels, any model",
    )
    iv.add_argument(
        "--activation",
        choices=("relu", "tanh", "sigmoid"),
        default="relu",
        help="the hidden layer's activation (tensor; exactforge's fcn uses relu)",
    )
    iv.add_argument(
        "--example", type=_count(0), help="a disputed example (data set index): is it consistent with the update?"
    )
    iv.add_argument("--force", action="store_true", help="tensor: run where its conditions fail (no guarantee)")
    iv.add_argument("--opt-steps", type=_count(1, 100_000), default=100, help="dlg: L-BFGS iterations")
    iv.add_argument("--seed", type=_SEED, default=0, help="seed of the random start and contractions")
    iv.add_argument("--figure", metavar="PNG", help="reconstructions beside the claimed examples they match")
    _data_args(iv, None, "the verifier's copy of the training data")
    iv.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..invert.forensics import invert_step

    ctx = _step_context(args)
    rep, R = invert_step(
        ctx,
        args.step,
        args.method,
        activation=args.activation,
        force=args.force,
        example=args.example,
        steps=args.opt_steps,
        seed=args.seed,
    )
    out = rep.to_dict()
    out["trace"] = args.trace
    out["reconstructions"] = R.tolist()
    write_json(args, out)
    if args.method == "tensor" and rep.reasons and not args.force:
        return fail(
            "invert",
            "error",
            f"the tensor method does not apply to this step: {'; '.join(rep.reasons)}. "
            "--method dlg works for any model; --force runs the tensor method without its guarantee",
        )
    if args.figure and len(R):
        from ..report.figures import plot_forgery

        X = ctx.data.X.reshape(len(ctx.data), -1)
        lo, hi = float(X.min()), float(X.max())
        plot_forgery(
            X[rep.matched],
            R,
            args.figure,
            n=min(8, len(R)),
            domain=(lo, hi),
            rows=("claimed", "reconstructed"),
            labels=[f"#{i}" for i in rep.matched],
            bottom_labels=[f"|cos| {c:.2f}" for c in rep.matched_cos],
            title=f"step {args.step}: {args.method} reconstruction beside the claimed batch",
        )
    n = len(R)
    say(
        args,
        f"{args.method} at step {args.step}: {n} reconstruction(s) of a batch of {len(rep.batch)}; |cos| with the "
        f"matched claimed examples: {', '.join(f'{c:.2f}' for c in rep.matched_cos)}; {rep.nearest_in_batch}/{n} "
        f"nearest data-set examples are in the claimed batch"
        + (f"; labels {rep.labels}" if rep.labels is not None else "")
        + (
            f"; example {rep.example}: best |cos| {rep.example_cos:.2f}, "
            f"{'consistent' if rep.example_consistent else 'not the nearest example of any reconstruction'}"
            if rep.example is not None
            else ""
        )
        + f" ({rep.seconds:.1f} s)",
    )
    return 0


def _step_context(args: argparse.Namespace) -> Any:
    from ..forging.context import open_exactforge_trace, step_context

    trace, spec, data = open_exactforge_trace(args.trace, _given_data(args), args.data_path)
    return step_context(trace, spec, data, args.step)
