"""The verifier of execution traces.

- ``verifier``: integrity first (manifest, hash chain, checkpoints, data, theta_0), then the
  chosen segments recomputed with the step engine and compared within epsilon;
- ``distances``: the distances a verifier compares checkpoints with;
- ``ray``: the same verification (and the studies' cells) as Ray tasks.

The verifier's names are re-exported here: ``from exactforge.verify import verify_trace``."""

from .verifier import (  # noqa: F401
    POLICIES,
    SegmentJob,
    StepResult,
    VerificationReport,
    check_threads,
    engine_for,
    open_with_data,
    recompute_segments,
    resolution,
    select_segments,
    verify_trace,
)
from .verifier import __all__ as __all__  # noqa: F401


def __getattr__(name: str) -> object:
    # Every other name of the module this package's API was before it became a package
    # (``exactforge.verify.X``) still reads: it is looked up in ``verifier``.
    from . import verifier

    try:
        return getattr(verifier, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
