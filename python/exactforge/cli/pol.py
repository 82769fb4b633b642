"""``exactforge import-pol``: a Proof-of-Learning reference proof, imported as a trace."""

from __future__ import annotations

import argparse
from typing import Any, List

from ._common import _POSITIVE, _count, _data_args, _real, _sub, import_function, say, write_json


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


def register(sub: Any) -> None:
    p = _sub(
        sub, "import-pol", "import a Proof-of-Learning reference proof as an exactforge trace", json_what="the import"
    )
    p.add_argument("proof", metavar="PROOF_DIR", help="the proof folder (indices.npy, hash.txt, model_step_<i>)")
    p.add_argument("--out", required=True, help="the new trace folder")
    m = p.add_mutually_exclusive_group(required=True)
    m.add_argument("--model", help="the architecture: a zoo name (resnet20, lenet, vggmini, ...)")
    m.add_argument(
        "--model-factory",
        metavar="MODULE:FUNCTION",
        help="the verifier's own function (MODULE:FUNCTION or path/to/file.py:FUNCTION) returning a fresh model",
    )
    _data_args(p, "digits", "the verifier's copy of the training data")
    p.add_argument(
        "--normalize",
        type=_floats,
        metavar="MEAN,STD",
        help="the proof's input normalisation: MEAN,STD for every channel, or M1,..,Mc,S1,..,Sc per channel "
        "(the reference: 0.5,0.5 for MNIST)",
    )
    p.add_argument("--lr", type=_POSITIVE, default=0.01, help="learning rate (the reference's --lr)")
    p.add_argument("--batch-size", type=_count(1), help="batch size (default: the proof's)")
    p.add_argument("--save-freq", type=_count(1), default=100, help="steps between checkpoints")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--momentum", type=_real(0.0, 1.0), default=0.0, help="SGD momentum (the reference's CIFAR: 0.9)")
    p.add_argument("--weight-decay", type=_real(0.0), default=0.0, help="weight decay (the reference's CIFAR-10: 1e-4)")
    p.add_argument("--milestones", type=_ints, default=[], metavar="STEPS", help="MultiStepLR milestones, in steps")
    p.add_argument("--gamma", type=_POSITIVE, default=0.1, help="MultiStepLR's factor")
    p.set_defaults(func=run)


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
    model = args.model if args.model else import_function(args.model_factory, "--model-factory")
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
    )
    rep = import_proof(args.proof, args.out, model=model, data=data, args=targs)
    write_json(args, rep.to_dict())
    say(
        args,
        f"imported {rep.steps} steps of batch {rep.batch_size} with {rep.checkpoints} checkpoints into {rep.trace}; "
        f"the proof's data hash: {rep.data_hash_note}",
    )
    return 0
