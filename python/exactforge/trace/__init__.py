"""Execution traces: a directory that commits to every step of training, safe to load from an
untrusted party.

* ``format``: the layout, the hash chain and the manifest's schema (version 2).
* ``limits``: every bound a hostile trace meets, in one place (``Limits``).
* ``safeio``: how bytes are read (regular files inside the trace only, bounded sizes, strict JSON,
  safetensors headers checked before decoding). No pickle anywhere.
* ``manifest`` (``TraceSpec``): the manifest's training fields parsed once, when the trace is
  opened, into frozen dataclasses (``Trace.spec``); a field that does not fit is named.
* ``reader`` (``Trace``) and ``writer`` (``TraceWriter``, atomic and crash-safe).
* ``engine``: the one factory from a typed manifest to its step engine (recorder, verifier, spoofs).
"""

from __future__ import annotations

from .format import (
    INITIAL_KINDS,
    SCHEMA,
    SCHEMA_VERSION,
    canonical_json,
    checkpoint_name,
    record_hash,
    record_name,
    sha256_bytes,
)
from .limits import DEFAULT_LIMITS, MAX_THREADS, Limits
from .manifest import TraceSpec
from .reader import Record, Trace
from .safeio import TraceError
from .writer import TraceWriter, atomic_write, encode_checkpoint, environment

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "INITIAL_KINDS",
    "TraceError",
    "Trace",
    "TraceSpec",
    "TraceWriter",
    "Record",
    "Limits",
    "DEFAULT_LIMITS",
    "MAX_THREADS",
    "canonical_json",
    "sha256_bytes",
    "record_hash",
    "checkpoint_name",
    "record_name",
    "environment",
    "atomic_write",
    "encode_checkpoint",
]

_record_hash = record_hash  # the name the tests of schema 1 used
