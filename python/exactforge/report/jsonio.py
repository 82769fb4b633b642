"""One JSON writer for every result: JSON has no NaN or infinity, so an undefined number is
null (never the string "nan"), NumPy scalars and arrays become numbers and lists, and a file
is written atomically (a killed run leaves the old file or the new one, never half of one)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Optional

import numpy as np

from .files import atomic_write

__all__ = ["clean", "dumps", "write"]


def clean(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean(v) for v in o]
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return clean(o.to_dict() if hasattr(o, "to_dict") else dataclasses.asdict(o))
    if isinstance(o, np.ndarray):
        return clean(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(float(o)) else None
    if o is None or isinstance(o, str):
        return o
    return str(o)  # a path, an enum: named, never a number


def dumps(o: Any, indent: Optional[int] = 1) -> str:
    return json.dumps(clean(o), indent=indent, allow_nan=False)


def write(path: Optional[str], o: Any) -> None:
    """Writes ``o`` as JSON to ``path`` (nothing when path is None)."""
    if not path:
        return
    atomic_write(path, (dumps(o) + "\n").encode())
