"""The verifier's settings, ``VerifyOptions``: one object that ``verify_trace``, the command line
and the Ray executor pass around, each setting checked in ``checked()`` and written into the
report (``to_dict``) so a verdict says what it was reached under.

A setting that is wrong never raises out of ``verify_trace``: ``checked()`` raises ValueError
naming it, which the verifier reports as an invalid trace check (``valid=False`` with the
reason), as it does for a hostile trace. Only an unknown setting's name is a TypeError, as an
unknown keyword argument is.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from ..reduce import check_threads
from ..trace import DEFAULT_LIMITS, Limits
from .checks import parse_checks
from .distances import DISTANCES
from .reference import parse_thresholds
from .replay import POLICIES

__all__ = ["VerifyOptions", "Checked"]


@dataclass(frozen=True)
class VerifyOptions:
    """Every setting of :func:`exactforge.verify.verify_trace`, with its default; see its
    docstring for what each one does."""

    epsilon: Union[float, str] = 0.0
    distance_kind: str = "l2"
    policy: str = "all"
    q: int = 1
    fraction: float = 0.1
    seed: int = 0
    permute_batches: Optional[int] = None
    threads: Optional[int] = None
    dataset: Any = None
    data_path: Optional[str] = None
    model: Any = None
    progress: bool = False
    allow_partial: bool = False
    limits: Limits = DEFAULT_LIMITS
    loss_fn: Any = None
    executor: Any = None
    initial_test: bool = False
    lr_lambda: Optional[Callable[[int], float]] = None
    reference: Optional[bool] = None
    reference_q: Optional[int] = None
    reference_thresholds: Any = None
    reference_epochs: Optional[int] = None
    require: Any = None
    known_data: Any = None
    max_interval: Optional[int] = None

    @classmethod
    def of(cls, options: Optional["VerifyOptions"] = None, **kwargs: Any) -> "VerifyOptions":
        """``options`` (or the defaults) with the keyword arguments set; TypeError naming an
        unknown one."""
        if options is not None and not isinstance(options, VerifyOptions):
            raise TypeError(f"options: expected a VerifyOptions or None, got {type(options).__name__}")
        names = {f.name for f in fields(cls)}
        for key in kwargs:
            if key not in names:
                raise TypeError(f"verify_trace() got an unexpected keyword argument {key!r}")
        return dataclasses.replace(options or cls(), **kwargs)

    @property
    def auto_epsilon(self) -> bool:
        """epsilon "auto": calibrated on this machine once the trace is open."""
        return isinstance(self.epsilon, str) and self.epsilon == "auto"

    @property
    def epsilon_value(self) -> float:
        """The epsilon as a number: 0 until "auto" is calibrated; NaN where it is no number."""
        if self.auto_epsilon:
            return 0.0
        if isinstance(self.epsilon, (int, float, np.floating)):
            return float(self.epsilon)
        return float("nan")

    def checked(self) -> "Checked":
        """Checks every setting before the trace is opened; raises ValueError naming the first
        wrong one."""
        if self.distance_kind not in DISTANCES:
            raise ValueError(f"distance: expected one of {DISTANCES}, got {self.distance_kind!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy: expected one of {POLICIES}, got {self.policy!r}")
        eps = self.epsilon_value
        if isinstance(self.epsilon, bool) or not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"epsilon: expected a finite number >= 0, got {self.epsilon!r}")
        threads = check_threads(self.threads)
        seed = self.permute_batches
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"permute_batches: expected a seed >= 0 or None, got {seed!r}")
        if self.policy == "random" and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction: expected a value in (0, 1], got {self.fraction}")
        q = self.q
        if self.policy == "topq" and (isinstance(q, bool) or not isinstance(q, int) or q < 1):
            raise ValueError(f"q: expected a positive number of steps per epoch, got {q!r}")
        if self.executor is not None and not callable(getattr(self.executor, "verify", None)):
            raise ValueError(
                f"executor: expected None or an exactforge.verify.ray.RayExecutor, got {type(self.executor).__name__}"
            )
        if not isinstance(self.limits, Limits):
            raise ValueError(f"limits: expected an exactforge.trace.Limits, got {type(self.limits).__name__}")
        required = parse_checks(self.require)
        epochs = self._reference_settings()
        known = None
        if self.known_data is not None:
            from ..data import as_dataset

            known = as_dataset(self.known_data, "known")
        mi = self.max_interval
        if mi is not None and (isinstance(mi, bool) or int(mi) < 1):
            raise ValueError(f"max_interval: expected a positive number of steps, got {mi!r}")
        return Checked(threads, required, epochs, known)

    def _reference_settings(self) -> Optional[int]:
        """The reference's thresholds and epochs, checked before any segment is recomputed."""
        try:
            parse_thresholds(self.reference_thresholds)
        except ValueError as exc:
            raise ValueError(f"reference_thresholds: {exc}") from None
        epochs = self.reference_epochs
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1):
            raise ValueError(f"reference_epochs: expected a positive number of epochs, got {epochs!r}")
        return None if epochs is None else int(epochs)

    def to_dict(self) -> Dict[str, Any]:
        """The settings as JSON: numbers, names and flags as given; the objects the verifier
        was handed (its data, model, loss, executor, functions) by their type's name."""
        out: Dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, Limits) else _plain(v)
        return out


@dataclass(frozen=True)
class Checked:
    """What ``VerifyOptions.checked`` derives: the thread count, the required checks, the
    reference's epochs and the verifier's known data as a Dataset."""

    threads: Optional[int]
    required: Tuple[str, ...]
    reference_epochs: Optional[int]
    known: Any


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (list, tuple)) and all(x is None or isinstance(x, (bool, int, float, str)) for x in v):
        return [_plain(x) for x in v]
    return type(v).__name__
