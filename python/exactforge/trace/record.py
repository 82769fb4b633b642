"""Recording execution traces: native models (exactforge trains), and any torch model and
optimizer inside the user's own training loop (``TraceRecorder``)."""

from __future__ import annotations

from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np

from .._backend.threads import threads as torch_threads
from ..data import Dataset
from ..models import native as M
from ..report.progress import progress_bar
from . import Trace, TraceWriter, environment
from .engine import native_step
from .manifest import TraceSpec
from .recorder import TraceRecorder

__all__ = ["batch_schedule", "record_native", "record_torch_fcn", "TraceRecorder"]


def batch_schedule(num_examples: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Batches of dataset indices: each epoch a seeded permutation cut into full batches."""
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size: expected 1..{num_examples} (the dataset size), got {batch_size}")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(num_examples)
        for s in range(0, num_examples - batch_size + 1, batch_size):
            yield perm[s : s + batch_size].astype(np.int64)


def _data_entry(data: Dataset, path: Optional[str]) -> Dict[str, Any]:
    return {
        "name": data.name,
        "fingerprint": data.fingerprint(),
        "num_examples": len(data),
        "dim": data.dim,
        "num_classes": data.num_classes,
        "path": path,
    }


def _check_steps(steps: int, checkpoint_every: int) -> None:
    if steps < 1:
        raise ValueError(f"steps: expected a positive number of SGD steps, got {steps}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected a positive interval, got {checkpoint_every}")


_RESUME_KEYS = (
    "engine",
    "model",
    "lr",
    "batch_size",
    "seed",
    "steps",
    "checkpoint_every",
    "reduction",
    "data",
    "optimizer",
    "initial",
)


def _resume_or_create(
    out: str,
    manifest: Dict[str, Any],
    initial: Mapping[str, np.ndarray],
    resume: bool,
) -> Tuple[TraceWriter, Optional[Dict[str, np.ndarray]]]:
    import os

    if resume and os.path.exists(os.path.join(out, "manifest.json")):

        def check(found: Dict[str, Any]) -> None:  # before resume removes anything
            for key in _RESUME_KEYS:
                if found.get(key) != manifest.get(key):
                    raise ValueError(
                        f"--resume: the trace in {out} was recorded with {key} = "
                        f"{str(found.get(key))[:60]}, this run has {str(manifest.get(key))[:60]}; "
                        "resume with the same arguments, or record into a new --out folder"
                    )

        writer, trace = TraceWriter.resume(out, check)
        # a trace keeps the reduction plan it was started with (absent: plan 1, before plans)
        manifest["reduction_plan"] = trace.manifest.get("reduction_plan", 1)
        return writer, trace.load_checkpoint(writer.next_step)
    return TraceWriter(out, manifest, initial), None


def record_native(
    out: str,
    spec: M.ModelSpec,
    data: Dataset,
    *,
    lr: float = 0.01,
    steps: int = 50,
    batch_size: int = 64,
    seed: int = 0,
    checkpoint_every: int = 1,
    mode: str = "fixed",
    threads: Optional[int] = None,
    data_path: Optional[str] = None,
    resume: bool = False,
    progress: bool = False,
) -> Trace:
    """Trains a native model with SGD for ``steps`` steps and records the trace in ``out``."""
    _check_steps(steps, checkpoint_every)
    if spec.input_dim != data.dim or spec.num_classes != data.num_classes:
        raise ValueError(
            f"model: built for {spec.input_dim} inputs / {spec.num_classes} classes, "
            f"but {data.name} has {data.dim} / {data.num_classes}"
        )
    X = data.X.astype(spec.dtype, copy=False)
    params = M.init_params(spec, seed)
    manifest = {
        "engine": "native",
        "model": spec.to_dict(),
        "optimizer": {"name": "sgd", "lr": lr},
        "lr": lr,
        "dtype": spec.dtype,
        "seed": seed,
        "initial": "seeded",
        "batch_size": batch_size,
        "steps": steps,
        "checkpoint_every": checkpoint_every,
        "reduction": mode,
        "reduction_plan": M.REDUCTION_PLAN,
        # each epoch a seeded permutation cut into batches: no example twice in one batch
        "sampling": "without-replacement",
        "data": _data_entry(data, data_path),
        "environment": environment("cpu"),
    }
    writer, restored = _resume_or_create(out, manifest, params, resume)
    if restored is not None:
        params = M.check_params(spec, restored, "checkpoint")
    sched = batch_schedule(len(data), batch_size, seed)
    for _ in range(writer.next_step):  # the schedule is a pure function of the seed
        next(sched)
    bar = progress_bar(steps - writer.next_step, progress, "train (native)")
    # the step the verifier recomputes, built from the manifest as written (a resumed trace's plan)
    step = native_step(TraceSpec.parse(manifest), X, data.y, threads=threads)
    while writer.next_step < steps:
        t = writer.next_step
        idx = next(sched)
        params = step(params, idx, t)
        last = t + 1 == steps
        writer.append(idx, params if ((t + 1) % checkpoint_every == 0 or last) else None, final=last)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return Trace.open(out)


def _train(
    rec: "TraceRecorder",
    model: Any,
    opt: Any,
    loss_fn: Any,
    X: Any,
    y: Any,
    sched: Iterator[np.ndarray],
    steps: int,
    bar: Any,
    augment: bool = False,
) -> None:
    """The plain torch loop both recorders run: one optimizer step per scheduled batch (its
    inputs through the recorder's keyed augmentation where ``augment``)."""
    import torch

    for _ in range(steps):
        idx = next(sched)
        t = torch.from_numpy(idx)
        rec.begin(idx)
        xb = rec.augment(X[t], idx) if augment else X[t]
        loss = loss_fn(model(xb), y[t])
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(idx)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def record_torch_fcn(
    out: str,
    spec: M.ModelSpec,
    data: Dataset,
    *,
    lr: float = 0.01,
    steps: int = 50,
    batch_size: int = 64,
    seed: int = 0,
    checkpoint_every: int = 1,
    threads: Optional[int] = None,
    data_path: Optional[str] = None,
    progress: bool = False,
) -> Trace:
    """The same training as ``record_native`` (same init, same batches) with torch autograd,
    recorded through ``TraceRecorder``: what a model owner using plain torch produces."""
    import torch

    from ..models.torch_fcn import to_torch
    from ..reduce import check_threads

    _check_steps(steps, checkpoint_every)
    threads = check_threads(threads)
    with torch_threads(threads):
        model = to_torch(spec, M.init_params(spec, seed))
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        X = torch.from_numpy(data.X.astype(spec.dtype))
        y = torch.from_numpy(data.y)
        sched = batch_schedule(len(data), batch_size, seed)
        bar = progress_bar(steps, progress, "train (torch)")
        with TraceRecorder(
            out,
            model,
            opt,
            data,
            checkpoint_every=checkpoint_every,
            seed=seed,
            batch_size=batch_size,
            steps=steps,
            model_spec=spec,
            data_path=data_path,
            initial="seeded",
        ) as rec:
            _train(rec, model, opt, torch.nn.functional.cross_entropy, X, y, sched, steps, bar)
    return Trace.open(out)


def record_zoo(
    out: str,
    name: str,
    data: Dataset,
    *,
    lr: float = 0.01,
    steps: int = 50,
    batch_size: int = 64,
    seed: int = 0,
    checkpoint_every: int = 1,
    threads: Optional[int] = None,
    mode: Optional[str] = "exact",
    data_path: Optional[str] = None,
    progress: bool = False,
    augment: Any = None,
) -> Trace:
    """A zoo model (LeNet, VGGmini, the Transformer, ResNet-20) trained with torch and plain SGD
    and recorded through ``TraceRecorder``; ``mode`` "exact" or "fixed" runs it through
    exactforge.nn's reproducible layers and loss (the native engine for CNNs), None through
    torch's own. ``augment``: an ``exactforge.nn.KeyedAugment`` for the inputs (random crops and
    flips keyed to the seed, step and example). The manifest names the zoo model, so a verifier
    builds it from its own code."""
    import torch

    from .. import nn as xnn
    from ..models.zoo import build_model
    from ..reduce import check_threads

    _check_steps(steps, checkpoint_every)
    threads = check_threads(threads)
    if name == "transformer" and data.vocab is None:
        raise ValueError(f"dataset: the transformer reads tokens (synthetic-tokens, imdb), not {data.name}")
    if name != "transformer" and (data.shape is None or len(data.shape) != 3):
        raise ValueError(f"dataset: {name} needs images, not {data.name}")
    with torch_threads(threads, native=True):
        assert data.shape is not None  # images or token sequences, checked above
        model = build_model(name, data.shape, data.num_classes, vocab=data.vocab, seed=seed)
        if mode is not None:
            model = xnn.reproducible(model, mode=mode)
        loss_fn = xnn.cross_entropy if mode is not None else torch.nn.functional.cross_entropy
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        assert data.shape is not None  # images or token sequences, checked above
        X = torch.from_numpy(data.X).reshape(len(data), *data.shape)
        y = torch.from_numpy(data.y)
        sched = batch_schedule(len(data), batch_size, seed)
        bar = progress_bar(steps, progress, f"train ({name})")
        with TraceRecorder(
            out,
            model,
            opt,
            data,
            checkpoint_every=checkpoint_every,
            seed=seed,
            batch_size=batch_size,
            steps=steps,
            data_path=data_path,
            loss_fn=loss_fn,
            zoo=name,
            data_name=data.name,
            augment=augment,
        ) as rec:
            _train(rec, model, opt, loss_fn, X, y, sched, steps, bar, augment=augment is not None)
    return Trace.open(out)
