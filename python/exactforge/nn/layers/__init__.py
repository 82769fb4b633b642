"""One file per layer type; importing this package registers them all."""

from . import attention, conv, dropout, elementwise, embedding, linear, norm, pool, shortcut  # noqa: F401
