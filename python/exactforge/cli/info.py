"""``exactforge info``: print what this installation was built with and dispatches to (compile_options)."""

from __future__ import annotations

import argparse
from typing import Any

from ..report import jsonio
from ._common import _sub, say, write_json


def register(sub: Any) -> None:
    i = _sub(
        sub,
        "info",
        "print what this installation was built with and dispatches to (compile_options)",
        json_what="compile_options()",
    )
    i.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import compile_options

    opts = compile_options()
    say(args, jsonio.dumps(opts, indent=2))
    write_json(args, opts)
    return 0
