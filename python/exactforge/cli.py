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


def _parse_hidden(text: str) -> tuple:
    try:
        hidden = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise ValueError(f"--hidden: expected comma-separated layer widths like 32,32, got {text!r}") from None
    if any(h < 1 for h in hidden):
        raise ValueError("--hidden: layer widths must be positive")
    return hidden


def _cmd_train(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .models import ModelSpec
    from .record import record_native, record_torch_fcn

    data = load_dataset(args.dataset, args.data_path)
    hidden = _parse_hidden(args.hidden) if args.model == "fcn" else ()
    if args.model == "fcn" and not hidden:
        raise ValueError("--hidden: an FCN needs at least one hidden layer, e.g. --hidden 100")
    spec = ModelSpec(args.model, data.dim, data.num_classes, hidden, dtype=args.dtype)
    common = dict(lr=args.lr, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                  checkpoint_every=args.checkpoint_every, threads=args.threads, data_path=args.data_path,
                  progress=not args.quiet)
    if args.engine == "native":
        trace = record_native(args.out, spec, data, mode=args.mode, resume=args.resume, **common)
    else:
        if args.resume:
            raise ValueError("--resume: supported for --engine native (torch traces are recorded in one run)")
        trace = record_torch_fcn(args.out, spec, data, **common)
    print(f"recorded {len(trace.records)} steps ({len(trace.checkpoint_steps)} checkpoints) of {args.engine} "
          f"{args.model} on {data.name} in {args.out}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify_trace

    rep = verify_trace(args.trace, epsilon=args.epsilon, distance_kind=args.distance, policy=args.policy,
                       q=args.q, fraction=args.fraction, seed=args.seed, permute_batches=args.permute_batches,
                       threads=args.threads, data_path=args.data_path, progress=not args.quiet)
    if args.json:
        with open(args.json, "w") as f:
            f.write(rep.to_json())
    if not rep.valid:
        print(f"exactforge verify: invalid trace: {rep.reason}", file=sys.stderr)
        return 2
    verdict = "ACCEPTED" if rep.accepted else "REJECTED"
    failed = sum(not s.passed for s in rep.steps)
    print(f"{verdict}: {len(rep.steps)} segment(s) recomputed ({rep.engine}), max {rep.distance} error "
          f"{rep.max_error:.6g}, epsilon {rep.epsilon:g}, {failed} over epsilon")
    return 0 if rep.accepted else 1


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
    t = sub.add_parser("train", help="train a model with SGD and record its execution trace")
    t.add_argument("--engine", choices=("native", "torch"), default="native",
                   help="native: exactforge's bitwise-reproducible step; torch: autograd + BLAS")
    t.add_argument("--model", choices=("logreg", "fcn"), default="fcn")
    t.add_argument("--hidden", default="100", help="hidden layer widths of the FCN, e.g. 32,32 (default 100)")
    t.add_argument("--dataset", default="digits", choices=("digits", "breast-cancer", "mnist", "cifar10"))
    t.add_argument("--data-path", help="folder with the local files of mnist or cifar10")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--steps", type=int, default=50)
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--seed", type=int, default=0, help="seed of the initial weights and of the batch order")
    t.add_argument("--checkpoint-every", type=int, default=1, help="steps between checkpoints (k)")
    t.add_argument("--mode", choices=("fixed", "exact"), default="fixed", help="reduction mode of the native engine")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    t.add_argument("--threads", type=int, help="CPU threads for training")
    t.add_argument("--resume", action="store_true", help="continue a trace in --out from its last checkpoint")
    t.add_argument("--out", required=True, help="folder of the trace (must not hold one, unless --resume)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    v = sub.add_parser("verify", help="verify an execution trace (exit 0 accepted, 1 rejected, 2 invalid)")
    v.add_argument("trace", help="the trace folder")
    v.add_argument("--epsilon", type=float, default=0.0, help="largest accepted distance (default 0)")
    v.add_argument("--distance", choices=("l2", "l1", "linf", "cosine", "l2sq", "l2sq_dim"), default="l2")
    v.add_argument("--policy", choices=("all", "topq", "random"), default="all",
                   help="all steps; PoL's top-Q largest updates per epoch; a seeded random sample")
    v.add_argument("--q", type=int, default=1, help="steps per epoch for --policy topq")
    v.add_argument("--fraction", type=float, default=0.1, help="share of segments for --policy random")
    v.add_argument("--seed", type=int, default=0, help="seed of --policy random")
    v.add_argument("--permute-batches", type=int, metavar="SEED",
                   help="recompute with each batch's examples shuffled (same set)")
    v.add_argument("--threads", type=int, help="thread count of the recomputation")
    v.add_argument("--data-path", help="folder with the local files of mnist or cifar10")
    v.add_argument("--json", metavar="OUT", help="write the report as JSON")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=_cmd_verify)

    i = sub.add_parser("info", help="print what this installation was built with (compile_options)")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, FileExistsError, FileNotFoundError) as exc:
        print(f"exactforge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
