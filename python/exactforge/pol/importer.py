"""A Proof-of-Learning reference proof, imported as an exactforge execution trace.

The proof does not say how it was trained: the reference's training arguments (model, data
and its normalisation, learning rate, batch size, checkpoint interval, optimizer, MultiStepLR
milestones) are the verifier's, as in the reference's own ``verify.py``. The import reads every
checkpoint without running code (:mod:`exactforge.pol.proof`), checks each against the model,
and writes a torch trace whose manifest says where it came from: its hash chain starts at the
import (it proves the trace is the proof as imported, nothing about the proof's own history),
theta_0 is "given", and the proof's ``hash.txt`` is kept and checked where the verifier holds
the same data in the same form (:func:`reference_data_hash`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ..data import Dataset
from ..trace.limits import DEFAULT_LIMITS, Limits
from ..trace.writer import TraceWriter
from .proof import ProofError, checkpoint_steps, read_checkpoint, read_proof

__all__ = ["ImportReport", "import_proof", "reference_data_hash", "text_hash", "TrainingArgs"]


@dataclass(frozen=True)
class TrainingArgs:
    """The reference's training arguments, as its ``train.py`` takes them: SGD (momentum and
    weight decay for CIFAR; plain for MNIST) or Adam, MultiStepLR over steps, cross-entropy."""

    lr: float = 0.01
    batch_size: Optional[int] = None  # None: the proof's
    save_freq: int = 100
    optimizer: str = "sgd"  # "sgd" | "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0
    milestones: Sequence[int] = ()  # MultiStepLR milestones, in steps
    gamma: float = 0.1
    normalize: Optional[Sequence[Sequence[float]]] = None  # (mean per channel, std per channel)


@dataclass
class ImportReport:
    trace: str
    steps: int
    batch_size: int
    checkpoints: int
    data_hash: Optional[str]
    data_hash_checked: Optional[bool]  # None: the verifier's data is not in the form the hash covers
    data_hash_note: str
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def reference_data_hash(data: Dataset) -> Optional[str]:
    """The reference's ``hash.txt`` of a training set, where exactforge holds it in the form
    the reference hashed: SHA-256 over the text of each element of torchvision's ``.data``
    (MNIST: uint8 tensors printed by torch; CIFAR-10: uint8 height x width x channel arrays
    printed by numpy, which summarises arrays over 1,000 values: that hash covers only each
    image's corners). None for other data sets and for part of one (MNIST-5k is 5,000 of
    60,000; fewer CIFAR-10 batches than the five)."""
    full = {"mnist": 60000, "cifar10": 50000}
    if data.name not in full or data.levels != 255 or len(data) != full[data.name]:
        return None
    return text_hash(np.rint(np.asarray(data.X, dtype=np.float64) * 255.0).astype(np.uint8), data.name)


def text_hash(u8: np.ndarray, kind: str) -> str:
    """SHA-256 over the printed text of each image, as torchvision holds them: ``kind``
    "mnist" (uint8 28x28 tensors printed by torch) or "cifar10" (uint8 32x32x3 arrays printed
    by numpy); ``u8`` holds the images as exactforge lays them out (channels first)."""
    m = hashlib.sha256()
    if kind == "mnist":
        import torch

        for img in torch.from_numpy(np.ascontiguousarray(u8.reshape(-1, 28, 28))):
            m.update(str(img).encode("utf-8"))
    else:
        for img in u8.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1):
            m.update(str(img).encode("utf-8"))
    return m.hexdigest()


def _optimizer(args: TrainingArgs, model: Any) -> Any:
    import torch

    if args.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    raise ValueError(f"optimizer: expected 'sgd' or 'adam', got {args.optimizer!r}")


def _state(model: Any, ckpt: Dict[str, Any], spec: Dict[str, Any], step: int, name: str) -> Dict[str, np.ndarray]:
    """The exactforge checkpoint of a reference checkpoint: the state dict (checked against
    the model's names, dtypes and shapes) and the optimizer's state tensors."""
    from ..models import optim as O

    want = model.state_dict()
    net = ckpt["net"]
    for k, v in want.items():
        got = net.get(k)
        if got is None:
            raise ProofError(f"proof: {name} has no tensor {k!r} of the model")
        if got.dtype != v.dtype or tuple(got.shape) != tuple(v.shape):
            raise ProofError(
                f"proof: {name}: {k!r} is {got.dtype} {list(got.shape)}, the model's is {v.dtype} {list(v.shape)}"
            )
    extra = sorted(set(net) - set(want))
    if extra:
        raise ProofError(f"proof: {name} holds {extra[0]!r}, which the model does not have")
    out = {k: net[k].detach().cpu().numpy().copy() for k in want}
    params = list(model.parameters())
    per = (ckpt.get("optimizer") or {}).get("state", {})
    for i, p in enumerate(params):
        for key in O.state_keys(spec):
            v = per.get(i, {}).get(key)
            if key != "step" and v is not None and (not hasattr(v, "shape") or tuple(v.shape) != tuple(p.shape)):
                raise ProofError(f"proof: {name}: the optimizer's {key} of parameter {i} has the wrong shape")
    # the proof's state in the layout a recorder writes, by the recorder's own converter (which
    # reads an optimizer's .state: parameter -> its state)
    view = SimpleNamespace(state={p: per.get(i, {}) for i, p in enumerate(params)})
    out.update(O.state_tensors(view, spec, params, step))
    return out


def _model(model: Union[str, Callable[[], Any]], data: Dataset) -> Any:
    from ..models.zoo import ZOO, build_model

    if isinstance(model, str):
        if model not in ZOO:
            raise ValueError(f"model: expected one of {ZOO} or a factory, got {model!r}")
        return build_model(model, tuple(data.shape or (data.dim,)), data.num_classes, vocab=data.vocab)
    if not callable(model):
        raise TypeError("model: expected a zoo name or a function returning a fresh torch module")
    return model()


def _normalize_entry(args: TrainingArgs, data: Dataset) -> Optional[Dict[str, List[float]]]:
    if args.normalize is None:
        return None
    mean, std = ([float(v) for v in vs] for vs in args.normalize)
    channels = (data.shape or (1,))[0]
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"normalize: expected {channels} means and {channels} positive deviations")
    return {"mean": mean, "std": std}


def import_proof(
    proof_dir: str,
    out: str,
    *,
    model: Union[str, Callable[[], Any]],
    data: Dataset,
    args: TrainingArgs = TrainingArgs(),
    limits: Limits = DEFAULT_LIMITS,
) -> ImportReport:
    """Writes the trace of the reference proof ``proof_dir`` into ``out`` (a new folder).

    ``model``: a zoo name (``resnet20``, ``lenet``, ...) or a function returning a fresh model
    of the proof's architecture; ``data``: the verifier's copy of the training set (as
    exactforge loads it, pixels in [0, 1]); ``args``: the reference's training arguments.
    Raises ProofError (a TraceError) for a malformed or hostile proof, ValueError for arguments
    that do not fit it."""
    import torch

    from ..models.optim import spec_of
    from ..models.schedule import replay_rates
    from ..trace.record import TraceRecorder

    proof = read_proof(proof_dir, limits)
    if args.batch_size is not None and args.batch_size != proof.batch_size:
        raise ValueError(f"batch_size: {args.batch_size}, but the proof's batches hold {proof.batch_size}")
    if int(proof.indices.max()) >= len(data):
        raise ValueError(
            f"data: the proof's indices reach {int(proof.indices.max())}, the data set has {len(data)} examples"
        )
    if args.save_freq < 1:
        raise ValueError("save_freq: expected a positive checkpoint interval")
    net = _model(model, data)
    opt = _optimizer(args, net)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(args.milestones), args.gamma) if args.milestones else None
    steps = checkpoint_steps(proof.steps, args.save_freq)
    first = read_checkpoint(proof_dir, 0, limits)
    theta0 = _state(net, first, spec_of(opt, net), 0, "model_step_0")  # checked against the model before torch loads it
    net.load_state_dict(first["net"])  # theta_0 as the proof gives it
    rec = TraceRecorder(
        out,
        net,
        opt,
        data,
        checkpoint_every=args.save_freq,
        batch_size=proof.batch_size,
        steps=proof.steps,
        loss_fn=torch.nn.CrossEntropyLoss(),
        scheduler=sched,
        zoo=model if isinstance(model, str) else None,
        data_name=data.name,
    )
    manifest = dict(rec.manifest)
    norm = _normalize_entry(args, data)
    if norm is not None:
        manifest["normalize"] = norm
    expected = reference_data_hash(data)
    checked = None if expected is None or proof.data_hash is None else expected == proof.data_hash
    manifest["imported"] = {
        "format": "proof-of-learning",
        "proof": os.path.basename(os.path.abspath(proof_dir))[:200],
        "data_hash": proof.data_hash,
        "data_hash_checked": checked,
    }
    spec = manifest["optimizer"]
    rates = [r[0] for r in replay_rates(manifest["scheduler"], spec, proof.steps)] if sched else None
    existed = os.path.exists(out)
    try:
        _write(TraceWriter(out, manifest, theta0), proof, steps, rates, spec, net, limits)
    except BaseException:
        if not existed:  # a refused import leaves nothing behind (TraceWriter refuses an existing trace)
            shutil.rmtree(out, ignore_errors=True)
        raise
    note = (
        "checked: equal"
        if checked
        else "checked: DIFFERENT data"
        if checked is False
        else "unchecked: the verifier's data is not the full MNIST or CIFAR-10 training set the hash covers"
    )
    return ImportReport(out, proof.steps, proof.batch_size, len(steps), proof.data_hash, checked, note)


def _write(
    writer: Any, proof: Any, steps: List[int], rates: Any, spec: Dict[str, Any], net: Any, limits: Limits
) -> None:
    for t in range(proof.steps):
        ck = None
        if t + 1 in steps:
            ckpt = read_checkpoint(proof.directory, t + 1, limits)
            _check_rate(ckpt, rates, t + 1, proof.steps)
            ck = _state(net, ckpt, spec, t + 1, f"model_step_{t + 1}")
        lr = None if rates is None or rates[t] == spec["lr"] else rates[t]
        writer.append(proof.indices[t], ck, final=t + 1 == proof.steps, lr=lr)


def _check_rate(ckpt: Dict[str, Any], rates: Optional[List[float]], step: int, last: int) -> None:
    """The learning rate a checkpoint's optimizer holds is the one of the next step: the
    arguments' schedule must give it (else they are not the proof's)."""
    groups = (ckpt.get("optimizer") or {}).get("param_groups") or []
    if not groups or rates is None or step >= last or "lr" not in groups[0]:
        return
    if float(groups[0]["lr"]) != rates[step]:
        raise ValueError(
            f"milestones: the proof's optimizer holds lr {groups[0]['lr']!r} at step {step}, the arguments give "
            f"{rates[step]!r} (check lr, milestones and gamma)"
        )
