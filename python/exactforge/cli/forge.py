"""``exactforge forge``: construct an exact forgery of one step of a trace and report it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..report import jsonio as _json
from ._common import _POSITIVE, _SEED, _count, _data_args, _given_data, _sub, say, write_json


def register(sub: Any) -> None:
    f = _sub(sub, "forge", "construct an exact forgery of one step of a trace and report it", json_what="the report")
    f.add_argument("trace", help="the trace folder (native or torch engine, logreg or fcn)")
    f.add_argument("--step", type=_count(0), required=True, help="the step whose batch is forged (needs theta_step)")
    f.add_argument("--method", choices=("nullspace", "error-matrix"), default="nullspace", help="the construction")
    f.add_argument(
        "--target",
        choices=("random", "nearest"),
        default="random",
        help="random: random nullspace coefficients / least-norm inputs; nearest: closest to real examples",
    )
    f.add_argument("--scale", type=_POSITIVE, default=0.1, help="largest perturbation of --target random (nullspace)")
    f.add_argument("--seed", type=_SEED, default=0, help="seed of the construction")
    f.add_argument(
        "--permutations", type=_count(0, 100_000), default=10, help="torch permutations for the reproduction error"
    )
    _data_args(f, None)
    f.add_argument("--out", metavar="DIR", help="folder for forgery.safetensors (X, Y), report.json and forgery.png")
    f.add_argument("--figure", metavar="PNG", help="original vs forged examples (also written into --out)")
    f.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..forging.context import forge_step, open_exactforge_trace
    from ..report.files import atomic_write
    from ..trace import encode_checkpoint

    trace, spec, data = open_exactforge_trace(args.trace, _given_data(args), args.data_path)
    forged, rep = forge_step(
        trace,
        spec,
        data,
        args.step,
        method=args.method,
        target=args.target,
        scale=args.scale,
        seed=args.seed,
        permutations=args.permutations,
    )
    lr = float(trace.manifest["lr"])
    X = data.X[trace.batch(args.step)]
    out = rep.to_dict()
    out.update({"step": args.step, "trace": args.trace, "lr": lr, "batch_size": int(len(X))})
    figures = [args.figure] if args.figure else []
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        Y = np.asarray(forged.Y)
        atomic_write(
            os.path.join(args.out, "forgery.safetensors"),
            encode_checkpoint(
                {"X": np.asarray(forged.X, np.float64), "Y": Y.astype(np.int64 if Y.ndim == 1 else np.float64)},
                args.step,
            ),
        )
        _json.write(os.path.join(args.out, "report.json"), out)
        figures.append(os.path.join(args.out, "forgery.png"))
    if figures and data.shape is not None and len(data.shape) == 3:
        from ..report.figures import plot_forgery

        for path in figures:
            plot_forgery(
                X,
                forged.X,
                path,
                domain=data.domain,
                title=f"{forged.method} forgery of step {args.step} "
                f"(approx. error {rep.approx_error:.2g}, in range {rep.in_range_fraction:.0%})",
            )
    elif figures:
        print(f"exactforge forge: no figure: {data.name} examples are not images", file=sys.stderr)
    write_json(args, out)
    say(
        args,
        f"{forged.method} forgery of step {args.step}: distinct={rep.distinct}, approx_error={rep.approx_error:.3g} "
        f"(float64 {rep.approx_error_f64:.3g}; torch permutation repro {rep.repro_error_torch or 0:.3g}), "
        f"in range {rep.in_range_fraction:.1%}, labels one-hot={rep.labels_one_hot}",
    )
    return 0
