"""What a hostile trace can make the reader do, declared in one place.

A trace comes from the party being audited. Every file of it is read through
``exactforge.trace.safeio``, which refuses anything larger or deeper than these limits
*before* parsing it, so the verifier's memory is bounded by the model size (and the data set
the verifier itself supplies), never by what the prover wrote. The defaults hold real
training runs with room to spare; a verifier with a larger model raises them explicitly
(``Limits(max_checkpoint_bytes=...)``, ``exactforge verify --max-model-mb``), the way
safetensors bounds its header. A model larger than the verifier's bound is refused from the
manifest's declaration, before any checkpoint is read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict

__all__ = ["Limits", "DEFAULT_LIMITS", "MAX_THREADS"]

from .._backend.native import _core

# Native kernels and the torch engine refuse thread counts above this. OpenMP crashes the
# process (not an exception) when it cannot create the threads it was asked for, so the
# count is checked in Python and clamped again in C++ (kMaxThreads in src/exactforge/reduce.hpp).
MAX_THREADS = int(_core.MAX_THREADS)


@dataclass(frozen=True)
class Limits:
    """Bounds on every file and document of a trace (bytes unless said otherwise)."""

    manifest_bytes: int = 1 << 20  # manifest.json
    record_base_bytes: int = 4096  # a record: this plus record_bytes_per_index per batch index
    record_bytes_per_index: int = 24  # (an index is at most 20 digits and a comma)
    json_depth: int = 32  # nesting of any JSON document
    json_int_digits: int = 24  # integers longer than this are refused (int("9"*10**6) is slow)
    max_steps: int = 100_000_000  # declared or recorded SGD steps
    max_batch: int = 1 << 20  # examples in one step (also at most the data set's size)
    max_checkpoint_bytes: int = 1 << 30  # the tensors of one checkpoint (the model size)
    max_tensors: int = 4096  # tensors in one checkpoint
    safetensors_header_bytes: int = 1 << 20  # a checkpoint's JSON header
    max_directory_entries: int = 100_000_010  # entries listed in records/ or checkpoints/

    def record_bytes(self, batch_size: int) -> int:
        return self.record_base_bytes + self.record_bytes_per_index * int(batch_size)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


DEFAULT_LIMITS = Limits()
