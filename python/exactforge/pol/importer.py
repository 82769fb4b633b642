"""A Proof-of-Learning reference proof, imported as an exactforge execution trace.

The proof says much of how it was trained: its checkpoint names give the save frequency, its
checkpoints' optimizer and scheduler states the learning rate, momentum, weight decay and
MultiStepLR milestones (:mod:`exactforge.pol.hyper`); the verifier gives the rest (model, data,
the input normalisation, which the reference fixes per data set: presets), as in the
reference's own ``verify.py``, and an argument that contradicts the proof is refused. The
import reads every checkpoint without running code (:mod:`exactforge.pol.proof`), checks each
against the model and the schedule, and writes a torch trace whose manifest says where it came
from: its hash chain starts at the import (it proves the trace is the proof as imported,
nothing about the proof's own history), theta_0 is "given", the data it was imported with is
named (data set, path, fingerprint), and the proof's ``hash.txt`` is kept and checked where the
verifier holds the same data in the same form (:func:`reference_data_hash`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import numpy as np

from ..data import Dataset
from ..trace.limits import DEFAULT_LIMITS, Limits
from ..trace.writer import TraceWriter
from .hyper import TrainingArgs, build_optimizer, check_checkpoint, normalization, preset_notes, resolve, stored
from .proof import ProofError, checkpoint_files, checkpoint_steps, read_checkpoint, read_proof, save_frequency

__all__ = ["ImportReport", "import_proof", "reference_data_hash", "text_hash", "TrainingArgs"]


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
    save_freq: int = 0
    unused_checkpoints: List[str] = field(default_factory=list)  # model_step_* files the trace does not hold
    training: Dict[str, Any] = field(default_factory=dict)  # the arguments the trace replays
    sources: Dict[str, str] = field(default_factory=dict)  # where each came from: the proof, an argument, ...
    normalize: Optional[Dict[str, List[float]]] = None
    normalize_source: str = ""
    data_path: Optional[str] = None  # stored in the manifest: where verify reads the data by default
    augmentation: str = ""  # the unlogged augmentation: none, recovered from theta_0, or not (and why)
    recovery: Optional[Dict[str, Any]] = None  # how the generator was recovered (StreamRecovery, words left out)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def reference_data_hash(data: Dataset) -> Optional[str]:
    """The reference's ``hash.txt`` of a training set: SHA-256 over the text of each element of
    torchvision's ``trainset.data``, in order (MNIST: uint8 28x28 tensors printed by torch;
    CIFAR-10 and CIFAR-100: uint8 height x width x channel arrays printed by numpy, which
    summarises arrays over 1,000 values: that hash covers only each image's corners). It is
    computed for whatever training set the verifier loaded, whole or a subset (a folder holding
    only data_batch_1): the hash covers exactly those elements, so it matches a proof trained
    on the same files; ``.data`` is rebuilt exactly from pixels on the grid q/255. None for
    other data sets (digits; MNIST-5k, which torchvision does not load)."""
    shapes = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
    if data.name not in shapes or data.levels != 255 or tuple(data.shape or ()) != shapes[data.name]:
        return None
    return text_hash(np.rint(np.asarray(data.X, dtype=np.float64) * 255.0).astype(np.uint8), data.name)


def text_hash(u8: np.ndarray, kind: str) -> str:
    """SHA-256 over the printed text of each image, as torchvision holds them: ``kind``
    "mnist" (uint8 28x28 tensors printed by torch), "cifar10" or "cifar100" (uint8 32x32x3
    arrays printed by numpy); ``u8`` holds the images as exactforge lays them out (channels first)."""
    m = hashlib.sha256()
    if kind == "mnist":
        import torch

        for img in torch.from_numpy(np.ascontiguousarray(u8.reshape(-1, 28, 28))):
            m.update(str(img).encode("utf-8"))
    elif kind in ("cifar10", "cifar100"):
        for img in u8.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1):
            m.update(str(img).encode("utf-8"))
    else:
        raise ValueError(f"kind: expected 'mnist', 'cifar10' or 'cifar100', got {kind!r}")
    return m.hexdigest()


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
    # views of the checkpoint's tensors, which stay alive until it is written: a copy would
    # hold a large model twice
    out = {k: net[k].detach().cpu().numpy() for k in want}
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
    import torch

    if not callable(model):
        raise TypeError("model: expected a zoo name or a function returning a fresh torch module")
    try:
        net = model()
    except Exception as exc:  # noqa: BLE001 - the verifier's own code: its failure is reported as the argument's
        raise ValueError(f"model: the factory raised {type(exc).__name__}: {exc}") from None
    if not isinstance(net, torch.nn.Module):
        raise ValueError(
            f"model: the factory returned {type(net).__name__}, not a torch.nn.Module; give a function taking no "
            "arguments that returns a fresh model of the proof's architecture"
        )
    return net


def import_proof(
    proof_dir: str,
    out: str,
    *,
    model: Union[str, Callable[[], Any]],
    data: Dataset,
    args: TrainingArgs = TrainingArgs(),
    limits: Limits = DEFAULT_LIMITS,
    data_path: Optional[str] = None,
) -> ImportReport:
    """Writes the trace of the reference proof ``proof_dir`` into ``out`` (a new or empty folder).

    ``model``: a zoo name (``resnet20``, ``lenet``, ...) or a function returning a fresh model
    of the proof's architecture; ``data``: the verifier's copy of the training set (as
    exactforge loads it, pixels in [0, 1]); ``args``: the reference's training arguments, each
    read from the proof where left out; ``data_path``: where ``data`` was read from, stored in
    the manifest so that ``exactforge verify`` can read it again. Raises ProofError (a
    TraceError) for a malformed or hostile proof, ValueError for arguments that do not fit it."""
    import torch

    from ..models.optim import spec_of

    existed = _check_out(out)
    proof, save_freq, odd = _read(proof_dir, data, args, limits)
    first = read_checkpoint(proof_dir, 0, limits)
    values, sources = resolve(args, stored(first, "model_step_0"))
    sources["save_freq"] = "argument" if args.save_freq is not None else "proof (the checkpoint names)"
    norm, norm_source = normalization(args, data)
    net = _model(model, data)
    opt = build_optimizer(values, net)
    sched = (
        torch.optim.lr_scheduler.MultiStepLR(opt, values["milestones"], values["gamma"])
        if values["milestones"]
        else None
    )
    theta0 = _state(net, first, spec_of(opt, net), 0, "model_step_0")  # checked against the model before torch loads it
    net.load_state_dict(first["net"])  # theta_0 as the proof gives it
    manifest = _recorder_manifest(out, model, net, opt, sched, data, proof, save_freq)
    if norm is not None:
        manifest["normalize"] = norm
    manifest["imported"] = _imported(proof, data, data_path, manifest["data"]["fingerprint"])
    aug_note, recovery = _augmentation(manifest, args, data, net, theta0, proof.batch_size)
    checked = manifest["imported"]["data_hash_checked"]
    rates = _rates(manifest, proof.steps)
    check_checkpoint(stored(first, "model_step_0"), values, sources, rates, 0, "model_step_0")
    steps = checkpoint_steps(proof.steps, save_freq)
    try:
        _write(TraceWriter(out, manifest, theta0), proof, set(steps), rates, (values, sources), net, limits)
    except BaseException:
        _clear(out, existed)
        raise
    return ImportReport(
        out,
        proof.steps,
        proof.batch_size,
        len(steps),
        proof.data_hash,
        checked,
        _hash_note(checked),
        notes=preset_notes(values, data),
        save_freq=save_freq,
        unused_checkpoints=odd,
        training={**values, "save_freq": save_freq, "batch_size": proof.batch_size},
        sources=sources,
        normalize=norm,
        normalize_source=norm_source,
        data_path=manifest["imported"]["data_path"],
        augmentation=aug_note,
        recovery=recovery,
    )


def _recorder_manifest(
    out: str, model: Any, net: Any, opt: Any, sched: Any, data: Dataset, proof: Any, save_freq: int
) -> Dict[str, Any]:
    """The manifest a TraceRecorder writes for the proof's training: the same fields as a trace
    recorded in a torch loop, so the verifier replays both alike."""
    import torch

    from ..trace.record import TraceRecorder

    rec = TraceRecorder(
        out,
        net,
        opt,
        data,
        checkpoint_every=save_freq,
        batch_size=proof.batch_size,
        steps=proof.steps,
        loss_fn=torch.nn.CrossEntropyLoss(),
        scheduler=sched,
        zoo=model if isinstance(model, str) else None,
        data_name=data.name,
    )
    return dict(rec.manifest)


def _read(proof_dir: str, data: Dataset, args: TrainingArgs, limits: Limits) -> Tuple[Any, int, List[str]]:
    """The proof's indices and hash (checked against the arguments and the data), its save
    frequency and the model_step_* names it holds that the trace will not read."""
    proof = read_proof(proof_dir, limits)
    if args.batch_size is not None and args.batch_size != proof.batch_size:
        raise ValueError(f"batch_size: {args.batch_size}, but the proof's batches hold {proof.batch_size}")
    if int(proof.indices.max()) >= len(data):
        raise ValueError(
            f"data: the proof's indices reach {int(proof.indices.max())}, the data set has {len(data)} examples"
        )
    found, odd = checkpoint_files(proof_dir, limits)
    return proof, save_frequency(found, proof.steps, args.save_freq), odd


def _imported(proof: Any, data: Dataset, data_path: Optional[str], fingerprint: str) -> Dict[str, Any]:
    """The manifest's ``imported``: the proof's name and hash (checked where it can be), and the
    data of the import, which ``exactforge verify`` reads again from its path by default."""
    expected = reference_data_hash(data)
    checked = None if expected is None or proof.data_hash is None else expected == proof.data_hash
    path = os.path.abspath(data_path) if data_path else None
    return {
        "format": "proof-of-learning",
        "proof": os.path.basename(os.path.abspath(proof.directory))[:200],
        "data_hash": proof.data_hash,
        "data_hash_checked": checked,
        "dataset": data.name,
        "data_path": path if path and len(path) < 4096 else None,  # longer: no path the system can open
        "data_fingerprint": fingerprint,
    }


def _augmentation(
    manifest: Dict[str, Any], args: TrainingArgs, data: Dataset, net: Any, theta0: Dict[str, Any], batch_size: int
) -> Tuple[str, Optional[Dict[str, Any]]]:
    """The reference's unlogged augmentation, recovered from theta_0 where it can be: the
    manifest's ``augment`` replays it bit for bit; otherwise ``imported.augmentation`` says it
    ran unrecovered, and verify replays under fresh draws of the same transforms (the policy
    ``--pol-augmentation`` measures its tolerance under)."""
    from .recover import AUGMENTATIONS, reference_augmentation

    kind = args.augmentation
    if kind is None:
        kind = args.preset if args.preset is not None else data.name
    if kind == "none" or kind not in AUGMENTATIONS:
        if args.augmentation not in (None, "none"):
            raise ValueError(f"augmentation: expected one of {sorted(AUGMENTATIONS) + ['none']}, got {kind!r}")
        return "none", None
    if type(args.workers) is not int or not 0 <= args.workers <= 1024:
        raise ValueError(f"workers: expected the DataLoader's num_workers, 0..1024, got {args.workers!r}")
    names = list(net.state_dict())
    entry, rec, note = reference_augmentation(
        {k: theta0[k] for k in names}, names, dataset=kind, batch_size=batch_size, workers=args.workers
    )
    transforms, padding = AUGMENTATIONS[kind]
    if entry is not None:
        manifest["augment"] = entry
    manifest["imported"]["augmentation"] = {
        "transforms": list(transforms),
        "padding": padding,
        "workers": args.workers,
        "recovered": entry is not None,
        "note": note[:400],
    }
    info = rec.to_dict()
    info.pop("words", None)
    return f"{kind}'s {' + '.join(transforms)}: {note}", info


def _hash_note(checked: Optional[bool]) -> str:
    if checked is None:
        return "unchecked: the verifier's data was not read from the MNIST, CIFAR-10 or CIFAR-100 files the hash covers"
    return (
        "checked: equal"
        if checked
        else "checked: DIFFERENT data: hash.txt is not the text hash of this data, so the replay uses other data "
        "than the proof's (the reference's verify.py calls the proof invalid)"
    )


def _check_out(out: str) -> bool:
    """Whether ``out`` exists (an empty folder, which the import may fill); ValueError for
    anything else that exists: an import never writes among files it did not make."""
    if not os.path.lexists(out):
        return False
    if not os.path.isdir(out):
        raise ValueError(f"out: {out} exists and is not a folder; give a new folder or an empty one")
    if os.listdir(out):
        raise ValueError(f"out: {out} is not empty; give a new folder or an empty one")
    return True


def _clear(out: str, existed: bool) -> None:
    """A refused import leaves nothing behind: the folder it made, or the files it wrote in the
    empty folder it was given."""
    if not existed:
        shutil.rmtree(out, ignore_errors=True)
        return
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def _rates(manifest: Dict[str, Any], steps: int) -> List[float]:
    """The rate of steps 0..``steps`` (one more than the proof trains: the last checkpoint
    holds the rate of the step after it) under the trace's schedule."""
    from ..models.schedule import replay_rates

    if manifest.get("scheduler") is None:
        return [float(manifest["optimizer"]["lr"])] * (steps + 1)
    return [r[0] for r in replay_rates(manifest["scheduler"], manifest["optimizer"], steps + 1)]


def _write(
    writer: Any, proof: Any, steps: Set[int], rates: List[float], training: Any, net: Any, limits: Limits
) -> None:
    values, sources = training
    spec = writer.manifest["optimizer"]
    for t in range(proof.steps):
        ck = None
        if t + 1 in steps:
            name = f"model_step_{t + 1}"
            ckpt = read_checkpoint(proof.directory, t + 1, limits)
            check_checkpoint(stored(ckpt, name), values, sources, rates, t + 1, name)
            ck = _state(net, ckpt, spec, t + 1, name)
        lr = None if rates[t] == spec["lr"] else rates[t]
        writer.append(proof.indices[t], ck, final=t + 1 == proof.steps, lr=lr)
