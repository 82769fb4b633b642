"""How a replay augments its inputs, read from the manifest.

A trace's ``augment`` replays the draws exactly: exactforge's keyed augmentation, or an
imported proof's draws from the torch stream recovered from its theta_0. An imported proof whose
stream could not be recovered (``imported.augmentation`` with ``recovered`` false: a GPU-trained
proof, a modified train.py) is replayed under fresh draws of the same transforms, as the
reference's own verify.py replays it: no epsilon of 0 can accept it, and the tolerance
``exactforge verify --pol-augmentation`` measures is the one for exactly this replay.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from ..trace.manifest import TraceSpec

__all__ = ["fresh_augmentation", "augmentation_note", "unrecovered"]

# far from the small seeds training loops use, so a fresh draw does not replay the original by chance
FRESH_SEED = 0x5EEDA06_9E3779B9


def unrecovered(spec: TraceSpec) -> Optional[Dict[str, Any]]:
    """An imported proof's declared augmentation whose draws were not recovered, else None."""
    aug = (spec.imported or {}).get("augmentation")
    return aug if isinstance(aug, dict) and not aug.get("recovered") and spec.augment is None else None


def fresh_augmentation(spec: TraceSpec, seed: int = FRESH_SEED) -> Optional[Callable[..., Any]]:
    """The replay's augmentation for an unrecovered proof: the reference CIFAR loop's flip then
    crop, drawn afresh for each step from a generator seeded by (seed, step), so a verification
    repeats; None where the trace has no such declaration."""
    aug = unrecovered(spec)
    if aug is None:
        return None
    import torch

    from ..nn.augment import torch_crop_flip

    gen = torch.Generator()
    padding = int(aug["padding"])

    def draw(x: Any, step: int, examples: Any) -> Any:
        gen.manual_seed((seed + 1009 * int(step)) % 2**63)
        return torch_crop_flip(x, gen, padding)

    return draw


def augmentation_note(spec: TraceSpec) -> Optional[str]:
    """The report's ``augmentation``: how this replay augmented its inputs."""
    aug = spec.augment
    if isinstance(aug, dict) and aug.get("kind") == "torch-stream":
        return "recovered: the proof's own draws, from the torch stream recovered from theta_0"
    if aug is not None:
        return "keyed: exactforge's augmentation keyed to (seed, step, example)"
    if unrecovered(spec) is not None:
        return (
            "fresh draws: the proof's augmentation was not recovered, so no replay reproduces it; exactforge verify "
            "--pol-augmentation crop-flip measures the epsilon an honest replay needs"
        )
    return None
