"""``exactforge import-pol``: a Proof-of-Learning reference proof, imported as a trace."""

from __future__ import annotations

import argparse
import re
from typing import Any, List

from ._common import _POSITIVE, _count, _data_args, _real, _sub, factory_model, say, write_json


def _floats(text: str) -> List[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _ints(text: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected step numbers separated by commas, got {text!r}") from None


_floats.__name__ = "numbers"
_ints.__name__ = "steps"

_FROM_PROOF = "default: the proof's"


def register(sub: Any) -> None:
    p = _sub(
        sub, "import-pol", "import a Proof-of-Learning reference proof as an exactforge trace", json_what="the import"
    )
    p.add_argument("proof", metavar="PROOF_DIR", help="the proof folder (indices.npy, hash.txt, model_step_<i>)")
    p.add_argument("--out", required=True, help="the new trace folder (new, or an empty folder)")
    m = p.add_mutually_exclusive_group(required=True)
    m.add_argument("--model", help="the architecture: a zoo name (resnet20, lenet, vggmini, ...)")
    m.add_argument(
        "--model-factory",
        metavar="MODULE:FUNCTION",
        help="the verifier's own function (MODULE:FUNCTION or path/to/file.py:FUNCTION) returning a fresh model",
    )
    _data_args(p, "digits", "the verifier's copy of the training data (its path is stored in the trace for verify)")
    n = p.add_mutually_exclusive_group()
    n.add_argument(
        "--normalize",
        type=_floats,
        metavar="MEAN,STD",
        help="the proof's input normalisation: MEAN,STD for every channel, or M1,..,Mc,S1,..,Sc per channel",
    )
    n.add_argument(
        "--preset",
        choices=("mnist", "cifar10", "cifar100", "none"),
        help="the reference's normalisation for that data set (mnist: 0.5,0.5; cifar10: ImageNet's means and "
        "deviations; cifar100: its own), or none; default: the --dataset's where it is one of these, else none",
    )
    # every training argument below is read from the proof when left out: given, it must agree
    p.add_argument("--lr", type=_POSITIVE, help=f"learning rate (the reference's --lr; {_FROM_PROOF})")
    p.add_argument("--batch-size", type=_count(1), help="batch size (default: the proof's)")
    p.add_argument("--save-freq", type=_count(1), help="steps between checkpoints (default: the checkpoint names')")
    p.add_argument("--optimizer", choices=("sgd", "adam"), help=f"{_FROM_PROOF} (Adam's state holds betas)")
    p.add_argument("--momentum", type=_real(0.0, 1.0), help=f"SGD momentum ({_FROM_PROOF})")
    p.add_argument("--weight-decay", type=_real(0.0), help=f"weight decay ({_FROM_PROOF})")
    p.add_argument(
        "--milestones", type=_ints, metavar="STEPS", help=f"MultiStepLR milestones, in steps ({_FROM_PROOF})"
    )
    p.add_argument("--gamma", type=_POSITIVE, help=f"MultiStepLR's factor ({_FROM_PROOF})")
    p.add_argument(
        "--augmentation",
        choices=("cifar10", "cifar100", "none"),
        help="the unlogged training transforms of the reference's train.py for that data set (cifar10: flip, then "
        "crop with padding 4), recovered from theta_0 so that verify replays them exactly; default: the --preset's, "
        "else the --dataset's",
    )
    p.add_argument(
        "--workers", type=_count(0, 1024), default=0, help="the prover's DataLoader num_workers (the reference's: 0)"
    )
    p.set_defaults(func=run)


# the import names its arguments as TrainingArgs does: the CLI names the flag
_FLAG = re.compile(
    r"^(lr|batch_size|save_freq|optimizer|momentum|weight_decay|milestones|gamma|normalize|preset|augmentation|workers|out|model): "
)


def run(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..pol import TrainingArgs, import_proof

    data = load_dataset(args.dataset, args.data_path)
    norm = None
    if args.normalize is not None:
        v = args.normalize
        if len(v) % 2:
            raise ValueError("--normalize: expected MEAN,STD or the means then the deviations, one per channel")
        norm = (v[: len(v) // 2], v[len(v) // 2 :])
    model = args.model if args.model else _factory(args.model_factory)
    targs = TrainingArgs(
        lr=args.lr,
        batch_size=args.batch_size,
        save_freq=args.save_freq,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        milestones=args.milestones,
        gamma=args.gamma,
        normalize=norm,
        preset=args.preset,
        augmentation=args.augmentation,
        workers=args.workers,
    )
    try:
        rep = import_proof(args.proof, args.out, model=model, data=data, args=targs, data_path=args.data_path)
    except ValueError as exc:  # ProofError too: a TraceError is a ValueError
        text = str(exc)
        named = _FLAG.match(text)
        if named is None:
            raise
        flag = "--model-factory" if named.group(1) == "model" and args.model_factory else "--" + named.group(1)
        raise type(exc)(flag.replace("_", "-") + text[len(named.group(1)) :]) from None
    write_json(args, rep.to_dict())
    for line in _summary(rep):
        say(args, line)
    return 0


def _factory(spec: str) -> Any:
    """The verifier's model factory, called once here so that what it returns is checked
    before the proof is read: the import takes the model it built."""
    net = factory_model(
        spec, "give a function taking no arguments that returns a fresh model of the proof's architecture"
    )
    return lambda: net


def _summary(rep: Any) -> List[str]:
    t, src = rep.training, rep.sources

    def said(key: str, shown: str) -> str:
        where = src.get(key, "")
        return f"{shown} ({'given' if where == 'argument' else where.split(' (')[0]})"

    hyper = [said("optimizer", t["optimizer"]), said("lr", f"lr {t['lr']:g}")]
    hyper += [said(k, f"{k.replace('_', ' ')} {t[k]:g}") for k in ("momentum", "weight_decay") if k in t]
    if t["milestones"]:
        hyper += [said("milestones", f"milestones {t['milestones'][:8]}"), said("gamma", f"gamma {t['gamma']:g}")]
    norm = rep.normalize
    lines = [
        f"imported {rep.steps} steps of batch {rep.batch_size} with {rep.checkpoints} checkpoints into {rep.trace}; "
        f"the proof's data hash: {rep.data_hash_note}",
        f"training: {', '.join(hyper)}; a checkpoint every {rep.save_freq} steps "
        f"({'given' if src.get('save_freq') == 'argument' else 'from the checkpoint names'})",
        "normalisation: "
        + (f"mean {[round(v, 6) for v in norm['mean']]}, std {[round(v, 6) for v in norm['std']]}, " if norm else "")
        + rep.normalize_source,
    ]
    lines.append(f"augmentation: {rep.augmentation}")
    if rep.data_path:
        lines.append(f"data path stored in the trace: {rep.data_path} (verify reads it there by default)")
    if rep.unused_checkpoints:
        shown = ", ".join(rep.unused_checkpoints[:10]) + (" ..." if len(rep.unused_checkpoints) > 10 else "")
        lines.append(f"not used by the trace (never read, not verified): {shown}")
    lines += [f"note: {n}" for n in rep.notes]
    return lines
