"""The `exactforge` command line."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    result = run_demo(batch_size=args.batch_size, permutations=args.permutations, lr=args.lr,
                      seed=args.seed, progress=not args.quiet)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            f.write(result.to_json())
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from . import compile_options

    print(json.dumps(compile_options(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exactforge", description="Reproducible gradient reductions and "
                                "data-forging analysis for Proof-of-Learning execution traces.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="batch-order and thread-count experiment: torch vs exactforge's two modes")
    d.add_argument("--batch-size", type=int, default=1000, help="examples in the batch (default 1000)")
    d.add_argument("--permutations", type=int, default=20, help="batch permutations to try (default 20)")
    d.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    d.add_argument("--seed", type=int, default=0, help="seed of the weights, batch and permutations")
    d.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    d.add_argument("--quiet", action="store_true", help="no progress lines")
    d.set_defaults(func=_cmd_demo)
    i = sub.add_parser("info", help="print what this installation was built with (compile_options)")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError) as exc:
        print(f"exactforge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
