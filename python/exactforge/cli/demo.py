"""``exactforge demo``: batch-order and thread-count experiment: torch vs exactforge's two modes."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import _POSITIVE, _SEED, _count, _sub, say, write_json


def register(sub: Any) -> None:
    d = _sub(sub, "demo", "batch-order and thread-count experiment: torch vs exactforge's two modes")
    d.add_argument("--batch-size", type=_count(1), default=1000, help="examples in the batch")
    d.add_argument("--permutations", type=_count(1, 100_000), default=20, help="batch permutations to try")
    d.add_argument("--lr", type=_POSITIVE, default=0.01, help="SGD learning rate")
    d.add_argument("--seed", type=_SEED, default=0, help="seed of the weights, batch and permutations")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..studies.demo import format_table, run_demo

    result = run_demo(
        batch_size=args.batch_size, permutations=args.permutations, lr=args.lr, seed=args.seed, progress=not args.quiet
    )
    say(args, format_table(result))
    write_json(args, result)
    return 0
