"""``exactforge spoof``: a complete trace for a model one did not train (spoofing Proof-of-Learning)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import _SEED, _count, _data_args, _given_data, _real, _sub, _thresholds_type, say, write_json


def register(sub: Any) -> None:
    from ..forging.spoof import NOISE_WEIGHT
    from ..trace.limits import DEFAULT_LIMITS

    s = _sub(
        sub,
        "spoof",
        "build a spoofed trace that ends at a trace's final model, from a fresh theta_0 and public data",
        json_what="the spoof's description, with per segment its error, the zero update's error and the noise norm",
    )
    s.add_argument("trace", help="the trace whose final model is claimed (an exactforge logreg or fcn trace)")
    s.add_argument(
        "--attack",
        choices=("adversarial", "infinitesimal", "reorder"),
        required=True,
        help="adversarial: Zhang et al.'s dummy checkpoints with optimised noise; infinitesimal: Fang et al.'s "
        "updates too small to leave the verifier's thresholds; reorder: honest steps with the batch order chosen "
        "to approach the model",
    )
    s.add_argument("--out", required=True, help="folder of the spoofed trace (a new one)")
    top = DEFAULT_LIMITS.max_steps  # a trace holds no more steps; refused before anything is sized by them
    s.add_argument(
        "--steps", type=_count(1, top), help=f"steps of the spoof, at most {top} (none given: the trace's own)"
    )
    s.add_argument(
        "--checkpoint-every",
        type=_count(1, top),
        default=1,
        help="checkpoint interval k of the spoof, at most its number of steps",
    )
    s.add_argument("--noise-steps", type=_count(1), default=30, help="adversarial: Adam iterations per step")
    s.add_argument(
        "--noise-weight",
        type=_real(0.0),
        default=NOISE_WEIGHT,
        metavar="LAMBDA",
        help="adversarial: lambda of the noise term of Zhang et al.'s objective ||W_next - (W - lr g(B + R))|| + "
        "lambda ||R|| (the published sum has weight 1; 0 drops the term)",
    )
    s.add_argument(
        "--pol-thresholds",
        type=_thresholds_type,
        metavar="L1,L2,LINF,COS",
        help="infinitesimal: the verifier's thresholds its rate is chosen from (the largest rate whose update keeps "
        "every segment within them): four numbers, or a named set of the Proof-of-Learning reference, as verify "
        "takes them; default current (1000,10,0.1,0.01)",
    )
    s.add_argument("--candidates", type=_count(1), default=8, help="reorder: batches tried per step")
    s.add_argument("--seed", type=_SEED, default=1, help="seed of the spoof's theta_0 and batches")
    _data_args(s, None, "the public data (the trace's data is checked against it)")
    s.set_defaults(func=run)


def _savings(res: Any) -> str:
    """The segment error against the zero update's: what the attack's update bought beyond the
    spacing of its checkpoints."""
    zero, err = res.max_zero_update_error, res.max_residual
    if zero <= 0:
        return f"largest segment error {err:.5g}; a zero update would land exactly on each checkpoint"
    share = 100 * (zero - err) / zero
    what = "optimisation" if res.attack == "adversarial" else "the update"
    if err == zero:
        return f"{what} left the segment error at the zero update's {zero:.5g}"
    if err < zero:
        return f"{what} reduced the segment error from the zero update's {zero:.5g} to {err:.5g} ({share:.2g}%)"
    return (
        f"{what} did not reduce the segment error: {err:.5g} against the zero update's {zero:.5g} ({-share:.2g}% more)"
    )


def run(args: argparse.Namespace) -> int:
    from ..forging.spoof import spoof

    if args.steps is not None and args.checkpoint_every > args.steps:
        raise ValueError(
            f"--checkpoint-every: expected at most --steps ({args.steps}), got {args.checkpoint_every}; "
            "choose a smaller interval or more steps"
        )
    given = _given_data(args)
    res = spoof(
        args.trace,
        args.attack,
        args.out,
        dataset=given,
        data_path=None if given else args.data_path,
        steps=args.steps,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        noise_steps=args.noise_steps,
        candidates=args.candidates,
        noise_weight=args.noise_weight,
        pol_thresholds=args.pol_thresholds,
    )
    write_json(args, res.to_dict())
    data = f" --dataset npz --data-path {res.data_path}" if res.data_path else ""
    lines = [
        f"{args.attack} spoof of {args.trace}: {res.steps} steps (a checkpoint every {res.checkpoint_every}) from a "
        f"fresh theta_0 at l2 {res.final_distance:.3g} from the final model, in {args.out}; step rate "
        f"{res.step_lr:.3g}, {res.synthesised} synthesised examples",
        f"{_savings(res)} over {len(res.segments)} segment(s) (the zero update's error is the gap between "
        "consecutive checkpoints)",
    ]
    if res.attack == "adversarial":
        dom = (
            f"{res.outside_domain} of them outside the data's domain {res.domain}"
            if res.outside_domain is not None
            else f"the data has {res.domain or 'no declared range'}"
        )
        lines.append(f"noise: ||R||_2 up to {res.noise_l2:.3g} per segment (lambda {res.noise_weight:g}); {dom}")
    if res.attack == "infinitesimal" and res.pol_thresholds is not None:
        thr = ", ".join(f"{m} {v:g}" for m, v in res.pol_thresholds.items())
        lines.append(f"rate: {res.rate_rule} ({thr})")
    lines.append(f"verify it: exactforge verify {args.out}{data}")
    say(args, "\n".join(lines))
    return 0
