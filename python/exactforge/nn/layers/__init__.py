"""One file per layer type; importing this package registers them all."""
from . import conv, dropout, elementwise, linear, norm  # noqa: F401
