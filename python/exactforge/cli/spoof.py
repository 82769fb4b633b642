"""``exactforge spoof``: a complete trace for a model one did not train (spoofing Proof-of-Learning)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import _SEED, _count, _data_args, _given_data, _sub, say, write_json


def register(sub: Any) -> None:
    s = _sub(
        sub,
        "spoof",
        "build a spoofed trace that ends at a trace's final model, from a fresh theta_0 and public data",
        json_what="the spoof's description",
    )
    s.add_argument("trace", help="the trace whose final model is claimed (an exactforge logreg or fcn trace)")
    s.add_argument(
        "--attack",
        choices=("adversarial", "infinitesimal", "reorder"),
        required=True,
        help="adversarial: Zhang et al.'s dummy checkpoints with optimised noise; infinitesimal: Fang et al.'s "
        "updates too small to matter; reorder: honest steps with the batch order chosen to approach the model",
    )
    s.add_argument("--out", required=True, help="folder of the spoofed trace (a new one)")
    s.add_argument("--steps", type=_count(1), help="steps of the spoof (none given: the trace's own)")
    s.add_argument("--checkpoint-every", type=_count(1), default=1, help="checkpoint interval k of the spoof")
    s.add_argument("--noise-steps", type=_count(1), default=30, help="adversarial: Adam iterations per step")
    s.add_argument("--candidates", type=_count(1), default=8, help="reorder: batches tried per step")
    s.add_argument("--seed", type=_SEED, default=1, help="seed of the spoof's theta_0 and batches")
    _data_args(s, None, "the public data (the trace's data is checked against it)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..forging.spoof import spoof

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
    )
    write_json(args, res.to_dict())
    data = f" --dataset npz --data-path {res.data_path}" if res.data_path else ""
    say(
        args,
        f"{args.attack} spoof of {args.trace}: {res.steps} steps (a checkpoint every {res.checkpoint_every}) from a "
        f"fresh theta_0 at l2 {res.final_distance:.3g} from the final model, in {args.out}; step rate "
        f"{res.step_lr:.3g}, {res.synthesised} synthesised examples; largest segment error by the spoofer's "
        f"estimate {res.max_residual:.3g}\nverify it: exactforge verify {args.out}{data}",
    )
    return 0
