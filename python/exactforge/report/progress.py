"""The one progress bar helper: every long loop of exactforge reports through it, so bars look
alike and a quiet run (``progress=False``, ``--quiet``) creates none."""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["progress_bar"]


def progress_bar(
    total: int, enabled: bool, desc: str, unit: str = "step", *, unit_scale: bool = False
) -> Optional[Any]:
    """A tqdm bar that disappears when done (``leave=False``: the result printed after it stays
    readable), or None when ``enabled`` is false; callers test for None before updating."""
    if not enabled:
        return None
    from tqdm import tqdm  # imported here: a quiet run never loads it

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=False)
