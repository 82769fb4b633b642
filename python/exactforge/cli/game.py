"""``exactforge game``: play the data forging game (Algorithm 1) and report the win rate."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import _FRACTION, _POSITIVE, _SEED, _count, _data_args, _epsilon_or_auto, _sub, say, write_json


def register(sub: Any) -> None:
    g = _sub(sub, "game", "play the data forging game (Algorithm 1) and report the win rate", json_what="every round")
    g.add_argument(
        "--attack",
        "--method",
        dest="attack",
        choices=(
            "greedy",
            "nearest",
            "gradmatch",
            "gradmatch-subset",
            "dlg",
            "idlg",
            "nullspace",
            "error-matrix",
            "adversarial",
            "infinitesimal",
            "reorder",
        ),
        default="greedy",
        help="the adversary's attack (--method is the same option, as in attack); adversarial, infinitesimal and "
        "reorder play the spoofing game: the adversary spoofs a whole trace for the verifier's trained model",
    )
    g.add_argument("--rounds", type=_count(1), default=10, help="rounds played")
    g.add_argument("--epsilon", type=_epsilon_or_auto, default="auto", help="auto (calibrated), 0, or a value")
    g.add_argument("--model", choices=("logreg", "fcn", "lenet", "vggmini"), default="fcn", help="the model trained")
    g.add_argument("--engine", choices=("torch", "native"), default="torch", help="the verifier's engine")
    _data_args(g)
    g.add_argument("--batch-size", type=_count(1), default=100, help="examples per step")
    g.add_argument("--steps", type=_count(1), default=10, help="steps the verifier trains")
    g.add_argument("--lr", type=_POSITIVE, default=0.01, help="SGD learning rate")
    g.add_argument("--fraction", type=_FRACTION, help="forging fraction (none given: only the target example)")
    g.add_argument(
        "--domain-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reject forgeries outside the data's declared domain (grid, range) or with non one-hot labels",
    )
    g.add_argument(
        "--scenario", choices=("membership", "unlearning"), default="membership", help="the adversary's goal"
    )
    g.add_argument("--pool", type=_count(1), default=1000, help="greedy: points sampled from D minus U (n)")
    g.add_argument("--candidates", type=_count(1), default=300, help="greedy: candidate batches (M)")
    g.add_argument(
        "--opt-steps", type=_count(1), default=100, help="gradmatch, dlg and their variants: optimisation steps"
    )
    g.add_argument("--seed", type=_SEED, default=0, help="seed of the weights, the batches and the attacks")
    g.add_argument("--spoof-steps", type=_count(1), default=200, help="spoofing game: steps of each spoofed trace")
    g.add_argument(
        "--checkpoint-every", type=_count(1), default=1, help="spoofing game: the spoof's checkpoint interval"
    )
    g.add_argument(
        "--require",
        metavar="CHECKS",
        help="spoofing game: verifier checks that reject (as verify --require); the domain check adds domain and "
        "known-data",
    )
    g.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from ..forging.game import play_game
    from ..forging.spoof import SPOOFS

    eps = args.epsilon
    if args.attack in SPOOFS:
        return _spoofing(args)
    from ..forging.attacks import budget_for

    budget = budget_for(args.attack, args.pool, args.candidates, args.opt_steps)
    from ..data import load_dataset

    g = play_game(
        args.attack,
        args.rounds,
        eps,
        model=args.model,
        engine=args.engine,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        fraction=args.fraction,
        domain_check=args.domain_check,
        scenario=args.scenario,
        seed=args.seed,
        budget=budget,
        progress=not args.quiet,
        data=load_dataset(args.dataset, args.data_path),
    )
    write_json(args, g.to_dict())
    say(
        args,
        f"{args.attack} vs the {g.engine} verifier ({g.model}, epsilon {g.epsilon:.3g}, {g.epsilon_source}; "
        f"domain check {'on' if g.domain_check else 'off'}; {g.scenario}): win rate {g.win_rate:.0%} over {len(g.rounds)} rounds; "
        f"verifier resolution {g.resolution:.2g} ({g.dtype} checkpoints: gradient changes below it can vanish)",
    )
    lost = [r for r in g.rounds if not r.won]
    if lost:
        say(args, f"  e.g. round {lost[0].round}: {'; '.join(lost[0].reasons[:2])}")
    return 0


def _spoofing(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..forging.spoof_game import play_spoofing
    from ..verify.checks import parse_checks

    require = list(parse_checks(args.require)) + (["domain", "known-data"] if args.domain_check else [])
    g = play_spoofing(
        args.attack,
        args.rounds,
        args.epsilon,
        model=args.model,
        engine=args.engine,
        data=load_dataset(args.dataset, args.data_path),
        batch_size=args.batch_size,
        steps=args.steps,
        spoof_steps=args.spoof_steps,
        checkpoint_every=args.checkpoint_every,
        require=list(dict.fromkeys(require)),
        seed=args.seed,
    )
    write_json(args, g.to_dict())
    say(
        args,
        f"{args.attack} spoofs vs the {g.engine} verifier ({g.model}, epsilon {g.epsilon:.3g}; requiring "
        f"{', '.join(g.required) or 'no check'}; {g.spoof_steps} steps, a checkpoint every {g.checkpoint_every}): "
        f"win rate {g.win_rate:.0%} over {len(g.rounds)} rounds",
    )
    for r in g.rounds[:5]:
        if not r.won:
            say(args, f"  round {r.round}: rejected: {'; '.join(r.reasons) or 'not accepted'}")
    return 0
