"""MkDocs hook: the CLI reference is generated from exactforge's own parser at build time."""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stdout
from typing import Any


def _help(parser: argparse.ArgumentParser) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        parser.print_help()
    return buf.getvalue()


def cli_reference() -> str:
    from exactforge.cli import build_parser

    top = build_parser()
    parts = ["```text\n" + _help(top) + "```\n"]
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        parts.append(f"## `exactforge {name}`\n\n```text\n{_help(parser)}```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if "<!-- cli-reference -->" in markdown:
        return markdown.replace("<!-- cli-reference -->", cli_reference())
    return markdown
