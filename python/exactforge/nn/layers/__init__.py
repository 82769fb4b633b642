"""One file per layer type; importing this package registers them all."""
from . import conv, elementwise, linear, norm  # noqa: F401
