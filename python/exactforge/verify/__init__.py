"""The verifier of execution traces.

- ``verifier``: ``verify_trace``, integrity first (manifest, hash chain, checkpoints, data,
  theta_0), then the chosen segments recomputed with the step engine and compared within epsilon;
- ``options``: ``VerifyOptions``, its settings; ``results``: the report it returns;
- ``replay``: opening a trace with the verifier's data, choosing segments, replaying one;
  ``segments``: recomputing segments and comparing them (the serial verifier's and Ray's);
  ``explain``: the report's description of the trace, its other checks and its reasons;
- ``distances``, ``checks``, ``initial``, ``machines``, ``augmentation``: what those compare;
- ``calibrate``: epsilon "auto"; ``reference``: the Proof-of-Learning reference's verdict;
- ``ray``: the same verification (and the studies' cells) as Ray tasks.

Imports inside the package run one way: ``replay`` (above ``distances`` and ``augmentation``)
is imported by ``reference`` and ``calibrate``, which ``segments``, ``explain`` and ``options``
import, and ``verifier`` imports them all; ``ray`` imports ``replay``, ``segments`` and
``results``.
The verifier's names are re-exported here: ``from exactforge.verify import verify_trace``."""

from ..reduce import check_threads
from .options import VerifyOptions
from .replay import POLICIES, engine_for, open_with_data, select_segments
from .results import StepResult, VerificationReport, resolution
from .segments import SegmentJob, recompute_segments
from .verifier import _check_table as _check_table  # the first layout's name, which callers import
from .verifier import verify_trace

__all__ = [
    "POLICIES",
    "StepResult",
    "VerificationReport",
    "VerifyOptions",
    "verify_trace",
    "select_segments",
    "open_with_data",
    "check_threads",
    "resolution",
    "SegmentJob",
    "engine_for",
    "recompute_segments",
]
