"""The ``exactforge`` operator namespace of torch's dispatcher, and the one way an operator is
added to it: a schema, the implementation that runs (every backend, no autograd of its own:
the reproducible layers' autograd Functions call these in their forward and backward) and a
fake implementation that gives only shapes and dtypes, for ``torch.compile`` to trace with."""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["LIBRARY", "define"]

# Registrations live as long as this object: one per process, made on first import.
LIBRARY = torch.library.Library("exactforge", "DEF")


def define(schema: str, impl: Callable, fake: Callable) -> Callable:
    """Registers ``exactforge::<schema>`` with ``impl`` for every backend and ``fake`` for
    tracing; returns the one way to call it: under ``torch.compile`` the operator (which the
    compiler keeps whole), in eager code ``impl`` itself (the same kernel, without the
    dispatcher's round trip)."""
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema)
    LIBRARY.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"exactforge::{name}", fake, lib=LIBRARY)
    op = getattr(torch.ops.exactforge, name).default

    def call(*args):
        return op(*args) if torch.compiler.is_compiling() else impl(*args)

    return call
