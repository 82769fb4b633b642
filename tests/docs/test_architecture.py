"""The architecture page's tree names every source file of the package and the core, and
nothing that is not there."""

from __future__ import annotations

import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCES = (".py", ".pyi", ".cpp", ".hpp", ".inc", ".cu")


def _page_tree() -> set:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- tree -->\n```text\n(.*?)```", text, flags=re.S).group(1)
    out, stack = set(), []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        stack = stack[:depth] + [name.rstrip("/")]
        if not name.endswith("/"):
            out.add("/".join(stack))
    return out


def _repo_tree() -> set:
    out = set()
    for top in ("python/exactforge", "src", "csrc"):
        for folder, dirs, files in os.walk(ROOT / top):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith(SOURCES):
                    out.add(str(pathlib.Path(folder, f).relative_to(ROOT)))
    return out


def test_the_architecture_page_lists_the_tree():
    page, repo = _page_tree(), _repo_tree()
    assert not repo - page, f"files missing from docs/architecture.md: {sorted(repo - page)}"
    assert not page - repo, f"docs/architecture.md names files that do not exist: {sorted(page - repo)}"
