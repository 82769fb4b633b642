"""The examples of the README and of every documentation page run as written: the Python
blocks, and each page's shell lines in order in a folder of its own (later lines use what
earlier ones wrote)."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README] + sorted((ROOT / "docs").glob("*.md"))


def _have_ray() -> bool:
    """The extra exactforge[ray]: Ray with Ray Train (which imports only with its dependencies)."""
    try:
        import ray.train  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_pages_have_examples():
    assert re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert sum(bool(shell_examples(page)) for page in PAGES) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for code in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
        if "RayExecutor" in code and not _have_ray():  # the optional extra exactforge[ray]
            continue
        exec(compile(code, str(page), "exec"), {})


def shell_examples(page=README):
    """Every `exactforge ...` and `python -c ...` line of a page's bash blocks, in order
    (continuations joined), with the comment that may say how long it takes."""
    import shlex

    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            code, _, comment = line.partition("  #")
            words = shlex.split(code)
            if words and words[0] in ("exactforge", "python"):
                out.append((words, comment.strip()))
    return out


def table_examples():
    """(words, measured time) of each row of the command table."""
    import shlex

    rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]  # the command table
    out = []
    for line in rows:
        for m in re.findall(r"`(exactforge [^`]+)`", line):
            out.append((shlex.split(m), line.rstrip(" |").rsplit("|", 1)[-1].strip()))
    return out


def slow(comment: str) -> bool:
    """An example whose comment gives its time in minutes or hours (the README's own measure)."""
    return bool(re.search(r"\d+(\.\d+)? ?(min|h)\b", comment))


def test_commands_parse():
    """Every command line of the README and the pages (blocks and the command table) is
    accepted by the parser: a renamed flag or choice fails here."""
    from exactforge.cli import build_parser

    parser = build_parser()
    table = table_examples()
    assert len(table) >= 10 and all(re.match(r"[\d.]+ (s|min|h)$", t) for _, t in table), table
    lines = [w for page in PAGES for w, _ in shell_examples(page) if w[0] == "exactforge"]
    for words in lines + [w for w, _ in table]:
        parser.parse_args(words[1:])


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_shell_examples_run(page, tmp_path, monkeypatch):
    """Every example of a page runs as written, in order, in one folder (later ones use
    earlier output); the ones whose comment says they take minutes run with
    EXACTFORGE_README_SLOW=1. The README's command table runs too, in a folder of its own."""
    import os
    import subprocess
    import sys

    from exactforge.cli import main

    monkeypatch.chdir(tmp_path)
    run_slow = os.environ.get("EXACTFORGE_README_SLOW") == "1"
    os.makedirs("table")
    for words, took in table_examples() if page == README else []:  # the command table, in order
        if slow(took) and not run_slow:
            continue
        monkeypatch.chdir(tmp_path / "table")
        assert main(words[1:] + ["--quiet"]) in (0, 1), " ".join(words)
    monkeypatch.chdir(tmp_path)
    for words, comment in shell_examples(page):
        if slow(comment) and not run_slow:
            continue
        if "--ray" in words and not _have_ray():  # the optional extra exactforge[ray]
            continue
        if words[0] == "python":
            subprocess.run([sys.executable, *words[1:]], check=True)
            continue
        assert main(words[1:] + ["--quiet"]) in (0, 1), " ".join(words)
