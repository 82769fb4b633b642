"""``exactforge train``: train a model with SGD and record its execution trace."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import _POSITIVE, _SEED, _count, _data_args, _sub, _threads_type, say, write_json


def register(sub: Any) -> None:
    t = _sub(sub, "train", "train a model with SGD and record its execution trace", json_what="a summary of the trace")
    t.add_argument(
        "--engine",
        choices=("native", "torch"),
        default="native",
        help="native: exactforge's bitwise-reproducible step; torch: autograd + BLAS",
    )
    t.add_argument(
        "--model",
        choices=("logreg", "fcn", "lenet", "vggmini", "transformer", "resnet20"),
        default="fcn",
        help="lenet and vggmini: the papers' CNNs; resnet20: He et al.'s CIFAR ResNet (BatchNorm in training "
        "mode); transformer: a 2-layer causal Transformer on tokens (synthetic-tokens, imdb); for these "
        "native = exactforge.nn's reproducible layers",
    )
    t.add_argument(
        "--augment",
        choices=("none", "crop-flip"),
        default="none",
        help="CNNs: crop-flip = random crops of the image padded by 4 (or a quarter of its side) and horizontal "
        "flips, keyed to --seed, the step and the example (replayed by the verifier under any batch order)",
    )
    t.add_argument("--hidden", default="100", help="hidden layer widths of the FCN, e.g. 32,32")
    _data_args(t)
    t.add_argument("--batch-size", type=_count(1, 1 << 20), default=64, help="examples per step")
    t.add_argument("--steps", type=_count(1, 100_000_000), default=50, help="SGD steps")
    t.add_argument("--lr", type=_POSITIVE, default=0.01, help="SGD learning rate")
    t.add_argument("--seed", type=_SEED, default=0, help="seed of the initial weights and of the batch order")
    t.add_argument("--checkpoint-every", type=_count(1), default=1, help="steps between checkpoints (k)")
    t.add_argument(
        "--mode",
        choices=("fixed", "exact"),
        default=None,
        help="reduction mode of the native engine (none given: fixed for logreg/fcn, exact for the torch models)",
    )
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="weights and arithmetic")
    t.add_argument(
        "--init",
        choices=("uniform", "gaussian"),
        default="uniform",
        help="initial weights (logreg, fcn): torch's uniform law, or Gaussian of the same scale (the "
        "law under which `exactforge invert --method tensor` has its guarantee)",
    )
    t.add_argument("--threads", type=_threads_type(), help="CPU threads for training (none given: all)")
    t.add_argument("--resume", action="store_true", help="continue a trace in --out from its last checkpoint")
    t.add_argument("--out", required=True, help="folder of the trace (must not hold one, unless --resume)")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..models.native import ModelSpec
    from ..trace.record import record_native, record_torch_fcn, record_zoo

    if args.init != "uniform" and args.model not in ("logreg", "fcn"):
        raise ValueError(f"--init: sets the law of exactforge's own logreg and fcn; {args.model} is a torch zoo model")
    data = load_dataset(args.dataset, args.data_path)
    if args.augment != "none" and args.model not in ("lenet", "vggmini", "resnet20"):
        raise ValueError(f"--augment: for the image models (lenet, vggmini, resnet20), not {args.model}")
    if args.model in ("lenet", "vggmini", "transformer", "resnet20"):
        # CNNs and the Transformer: torch with exactforge.nn's reproducible layers (native) or torch's own layers
        if args.resume or args.dtype != "float32":
            raise ValueError("--resume, --dtype: supported for logreg and fcn only")
        mode = None if args.engine == "torch" else (args.mode or "exact")
        if mode == "fixed":
            raise ValueError(
                "--mode: the reproducible torch layers use --mode exact (fixed mode has no example keys "
                "inside a torch model, so it would follow the batch order)"
            )
        trace = record_zoo(
            args.out,
            args.model,
            data,
            lr=args.lr,
            steps=args.steps,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            threads=args.threads,
            mode=mode,
            data_path=args.data_path,
            progress=not args.quiet,
            augment=_augment(args, data),
        )
        return _trained(args, trace, data)
    args.mode = args.mode or "fixed"
    hidden = _parse_hidden(args.hidden) if args.model == "fcn" else ()
    if args.model == "fcn" and not hidden:
        raise ValueError("--hidden: an FCN needs at least one hidden layer, e.g. --hidden 100")
    spec = ModelSpec(args.model, data.dim, data.num_classes, hidden, dtype=args.dtype, init=args.init)
    common = dict(
        lr=args.lr,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        threads=args.threads,
        data_path=args.data_path,
        progress=not args.quiet,
    )
    if args.engine == "native":
        trace = record_native(args.out, spec, data, mode=args.mode, resume=args.resume, **common)
    else:
        if args.resume:
            raise ValueError("--resume: supported for --engine native (torch traces are recorded in one run)")
        trace = record_torch_fcn(args.out, spec, data, **common)
    return _trained(args, trace, data)


def _augment(args: argparse.Namespace, data: Any) -> Any:
    if args.augment == "none":
        return None
    from ..nn import KeyedAugment

    side = min(data.shape[1:]) if data.shape else 0
    return KeyedAugment(crop_padding=max(1, min(4, side // 4)), hflip=True, seed=int(args.seed) % (2**63))


def _parse_hidden(text: str) -> tuple:
    try:
        hidden = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise ValueError(f"--hidden: expected comma-separated layer widths like 32,32, got {text!r}") from None
    if any(h < 1 for h in hidden):
        raise ValueError("--hidden: layer widths must be positive")
    return hidden


def _engine_ran(trace: Any) -> Any:
    """(engine, layers, words): which engine recorded the trace, as its manifest says. --engine
    native on a zoo model runs torch with exactforge.nn's reproducible layers (the native engine
    trains logreg and fcn only)."""
    man = trace.manifest
    engine = man.get("engine")
    if engine == "native":
        return "native", None, "native"
    if man.get("model", {}).get("zoo") is not None and man.get("reduction") is not None:
        return engine, "exactforge.nn", f"torch with exactforge.nn's reproducible layers ({man.get('reduction')} mode)"
    return engine, "torch", "torch"


def _trained(args: argparse.Namespace, trace, data) -> int:
    engine, layers, words = _engine_ran(trace)
    say(
        args,
        f"recorded {trace.num_records} steps ({len(trace.checkpoint_steps)} checkpoints) of {args.model} on "
        f"{data.name} in {args.out}; engine: {words}" + (f" (--engine {args.engine})" if args.engine != engine else ""),
    )
    write_json(
        args,
        {
            "trace": args.out,
            "engine": engine,
            "engine_requested": args.engine,
            "layers": layers,
            "model": args.model,
            "dataset": data.name,
            "steps": trace.num_records,
            "checkpoints": list(trace.checkpoint_steps),
            "complete": trace.complete,
            "fingerprint": trace.manifest["data"]["fingerprint"],
        },
    )
    return 0
