"""The loss of a recorded torch step, as a JSON spec a verifier can replay.

``spec_of(loss_fn)`` describes what TraceRecorder was given; ``replay(spec, reduction, loss_fn)``
gives back the function the verifier recomputes with: torch's when the trace was recorded with
torch's layers, exactforge.nn's when with the reproducible ones (``reduction`` "exact" or
"fixed"). Specs: ``{"name": "cross_entropy", "label_smoothing": s}`` (class-index targets),
``{"name": "mse"}`` (against one-hot labels in the model's dtype), ``{"name": "custom"}`` (a
callable the verifier must supply). Anything whose arguments cannot be replayed (class weights,
ignore_index, a reduction other than the mean) is refused when recording.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, Optional

__all__ = ["spec_of", "replay", "check_spec"]


def spec_of(loss_fn: Any) -> Dict[str, Any]:
    import torch.nn as tnn
    import torch.nn.functional as F

    from .. import nn as xnn

    if loss_fn is None or loss_fn in (F.cross_entropy, xnn.cross_entropy):
        return {"name": "cross_entropy", "label_smoothing": 0.0}
    if loss_fn in (F.mse_loss, xnn.mse_loss):
        return {"name": "mse"}
    if (
        isinstance(loss_fn, functools.partial)
        and loss_fn.func in (F.cross_entropy, xnn.cross_entropy)
        and not loss_fn.args
        and set(loss_fn.keywords) <= {"label_smoothing"}
    ):
        return {"name": "cross_entropy", "label_smoothing": float(loss_fn.keywords.get("label_smoothing", 0.0))}
    if isinstance(loss_fn, tnn.CrossEntropyLoss):
        if loss_fn.weight is not None or loss_fn.ignore_index != -100 or loss_fn.reduction != "mean":
            raise ValueError(
                "loss_fn: CrossEntropyLoss with class weights, ignore_index or a reduction other than "
                "'mean' cannot be replayed by the verifier"
            )
        return {"name": "cross_entropy", "label_smoothing": float(loss_fn.label_smoothing)}
    if isinstance(loss_fn, tnn.MSELoss):
        if loss_fn.reduction != "mean":
            raise ValueError("loss_fn: MSELoss with a reduction other than 'mean' cannot be replayed")
        return {"name": "mse"}
    if isinstance(loss_fn, tnn.Module) or callable(loss_fn):
        return {"name": "custom", "what": getattr(loss_fn, "__qualname__", type(loss_fn).__qualname__)[:80]}
    raise TypeError(f"loss_fn: expected a torch loss or a callable, got {type(loss_fn).__name__}")


def check_spec(spec: Any) -> None:
    """For the manifest parser: a spec from an untrusted trace."""
    if not isinstance(spec, dict) or spec.get("name") not in ("cross_entropy", "mse", "custom"):
        raise ValueError("'loss' must be an object naming cross_entropy, mse or custom")
    if spec["name"] == "cross_entropy":
        s = spec.get("label_smoothing")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s <= 1:
            raise ValueError("'loss': label_smoothing must be a number in [0, 1]")


def replay(spec: Optional[Dict[str, Any]], reduction: Any, loss_fn: Optional[Callable] = None) -> Callable:
    """loss(output, y) for the verifier, y being the class indices of the batch."""
    import torch.nn.functional as F

    from .. import nn as xnn

    spec = spec or {"name": "cross_entropy", "label_smoothing": 0.0}
    if loss_fn is not None:
        return loss_fn
    # a shared batch (exactforge.distributed.SharedBatch) replays the exact loss over the
    # processes' whole batch, as the loop computed it
    shared = reduction is not None and not isinstance(reduction, str)
    rep = shared or reduction in ("exact", "fixed")
    mode: Any = reduction if shared else str(reduction)
    if spec["name"] == "cross_entropy":
        s = float(spec["label_smoothing"])
        if rep:
            return lambda out, y: xnn.cross_entropy(out, y, label_smoothing=s, mode=mode)
        return lambda out, y: F.cross_entropy(out, y, label_smoothing=s)
    if spec["name"] == "mse":

        def mse(out, y):
            t = F.one_hot(y, out.shape[1]).to(out.dtype)
            return xnn.mse_loss(out, t, mode=mode) if rep else F.mse_loss(out, t)

        return mse
    raise ValueError(
        "loss_fn: this trace was recorded with a custom loss; pass the same function as loss_fn= to verify it"
    )
