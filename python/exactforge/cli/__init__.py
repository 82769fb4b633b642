"""The ``exactforge`` command line: one module per command (``register`` adds its options,
``run`` calls the library and prints), the shared conventions in ``_common``. No library
logic lives here."""

from __future__ import annotations

import os
import sys
from typing import List, Optional

from . import attack, demo, forge, game, info, invert, pol, reevaluate, repro, search, spoof, train, verify
from ._common import Parser, fail

__all__ = ["main", "build_parser", "COMMANDS"]

#: the commands in the order ``exactforge --help`` lists them
COMMANDS = (demo, train, verify, pol, forge, search, repro, attack, spoof, invert, game, reevaluate, info)


def build_parser() -> Parser:
    from .. import __version__

    p = Parser(
        prog="exactforge",
        description="Reproducible gradient reductions and "
        "data-forging analysis for Proof-of-Learning execution traces.",
        epilog="Every command takes --json FILE and --quiet; `exactforge COMMAND --help` "
        "shows its defaults and exit codes.",
    )
    p.add_argument("--version", action="version", version=f"exactforge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Exit codes: 0 success (accepted), 1 rejected after recomputation (verify), 2 invalid
    input: a bad argument, file or trace, with one line naming it on stderr. Never a
    traceback; EXACTFORGE_DEBUG=1 re-raises unexpected errors for a bug report."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse refused an argument (2, message printed) or --help (0)
        return int(exc.code) if isinstance(exc.code, int) else 2
    from ..trace import TraceError

    try:
        return int(args.func(args))
    except (TraceError, ValueError, TypeError, OSError, OverflowError) as exc:
        what = "invalid trace" if isinstance(exc, TraceError) else "error"
        msg = (
            exc.strerror + (f": {exc.filename}" if exc.filename else "")
            if isinstance(exc, OSError) and exc.strerror
            else exc
        )
        return fail(args.command, what, msg)
    except MemoryError:
        return fail(
            args.command, "error", "out of memory; choose smaller sizes (or --max-memory where the command has it)"
        )
    except KeyboardInterrupt:
        print(f"exactforge {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback
        if os.environ.get("EXACTFORGE_DEBUG"):
            raise
        return fail(
            args.command,
            "internal error",
            f"{type(exc).__name__}: {exc}; please report it (EXACTFORGE_DEBUG=1 shows the traceback)",
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
