"""``exactforge repro``: reproduction-error study and calibrated epsilon."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ._common import _POSITIVE, _SEED, _count, _data_args, _executor, _ray_args, _sub, say, write_json


def register(sub: Any) -> None:
    r = _sub(sub, "repro", "reproduction-error study and calibrated epsilon", json_what="the study's report")
    r.add_argument(
        "--model",
        choices=("fcn", "lenet", "logreg", "vggmini", "transformer"),
        default="fcn",
        help="the model trained and recomputed",
    )
    _data_args(r)
    r.add_argument("--batch-sizes", default="32,100,1000", help="comma-separated batch sizes")
    r.add_argument(
        "--conditions",
        default="permute,threads,deterministic,bf16",
        help="comma-separated: permute, threads, deterministic, bf16, fp16, native, native+permute, "
        "native+threads, reproducible, reproducible+permute, reproducible+threads (exactforge.nn: "
        "logreg, fcn, lenet, vggmini, transformer) (and cuda, cuda+benchmark, cuda+deterministic on "
        "a GPU machine)",
    )
    r.add_argument(
        "--gpu-conditions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the CUDA conditions when a GPU is visible",
    )
    r.add_argument("--repeats", type=_count(1), default=5, help="recomputations of each checkpoint per condition")
    r.add_argument("--steps", type=_count(1), default=50, help="SGD steps trained")
    r.add_argument("--lr", type=_POSITIVE, default=0.01, help="SGD learning rate")
    r.add_argument("--seed", type=_SEED, default=0, help="seed of the weights and of the batch order")
    r.add_argument("--safety-factor", type=_POSITIVE, default=10.0, help="epsilon = factor x largest benign error")
    r.add_argument("--matrix-steps", type=_count(0), default=10, help="steps of the cross-condition matrix (0: none)")
    r.add_argument("--out", required=True, help="folder of the report (report.md, report.json, figures)")
    _ray_args(r, "the recomputations (condition x batch size x repeat)")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..studies.repro import available_conditions, run_study

    try:
        bss = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"--batch-sizes: expected comma-separated integers like 32,100,1000, got {args.batch_sizes!r}"
        ) from None
    conds = [c.strip() for c in args.conditions.split(",") if c.strip()]
    if args.gpu_conditions:
        conds += [c for c in available_conditions(args.model) if c.startswith("cuda") and c not in conds]
    executor = _executor(args)
    try:
        rep = run_study(
            args.model,
            args.dataset,
            bss,
            conds,
            repeats=args.repeats,
            steps=args.steps,
            lr=args.lr,
            seed=args.seed,
            safety_factor=args.safety_factor,
            matrix_steps=args.matrix_steps,
            out=args.out,
            data_path=args.data_path,
            progress=not args.quiet,
            executor=executor,
        )
    except RuntimeError as exc:  # Ray tasks lost after their retries
        if executor is None:
            raise
        raise ValueError(f"--ray: {exc}") from None
    say(
        args,
        f"{rep.model} on {rep.dataset}{' (synthetic)' if rep.synthetic else ''}: {len(rep.conditions)} conditions, "
        f"{rep.seconds:.1f} s",
    )
    for name, s in rep.conditions.items():
        say(args, f"  {name:18s} max {s.max_error:.3g}  mean {s.mean_error:.3g}  exactly 0: {s.zero_fraction:.0%}")
    say(
        args,
        f"calibrated epsilon {rep.epsilon:.3g} (x{rep.safety_factor:g}), held-out false-reject rate "
        f"{rep.false_reject_rate:.2%}; report in {os.path.join(args.out, 'report.json')}",
    )
    write_json(args, rep.to_dict())
    return 0
