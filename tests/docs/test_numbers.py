"""Every measured number the README and the docs quote is either the latest output of the
benchmark that measures it, or marked as a measurement with the machine and the date.

* A benchmark page's results block (``<!-- results -->``) is written by benchmarks/publish.py:
  the command, the CPU, the date and what the benchmark printed.
* A quote block (``<!-- quote PAGE -->`` ... ``<!-- /quote -->``) anywhere in the docs holds
  lines of that page's results block, verbatim: a test fails once the benchmark's latest output
  no longer has them.
* Any other measured number (a time, a ratio, a percentage, a scientific-notation error) must
  sit in a section that names the machine and the date it was measured on, or cite the papers.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES = (
    [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "docs" / "benchmarks").glob("*.md"))
)

MEASURED = re.compile(
    r"(?<![\w.\-/])\d+(?:[.,]\d+)*(?:e[-+]?\d+)?\s?(?:s|ms|µs|x|×|%|GB|MB|GFLOP/s|Gop/s)(?![\w×])"
    r"|(?<![\w.])\d(?:\.\d+)?e-\d+"
)
DIMENSIONS = re.compile(r"\d+\s?[x×]\s?\d+")  # shapes and tiles (16 x 4), not ratios
DATE = re.compile(r"20\d\d-\d\d-\d\d")
MACHINE = re.compile(r"EPYC|Zen ?\d|Intel|Xeon|H200|Sapphire Rapids|Granite Rapids")
CITED = re.compile(r"\b(papers?|published|Zhang et al|Fang et al|Thudi et al|Kong et al)\b", re.I)
# what a benchmark aims for or checks against is not a measurement
SET = re.compile(r"\b(targets?|tolerance)\b", re.I)
CODE = re.compile(r"```(?:bash|python|sh|console)\n.*?```", re.S)


def _blank(m: re.Match) -> str:
    return "\n" * m.group(0).count("\n")


def _prose(text: str) -> str:
    """The text a reader takes as the page's own claims: runnable examples, results blocks,
    quote blocks and inline code removed (line numbers kept)."""
    text = CODE.sub(_blank, text)
    text = re.sub(r"<!-- results -->.*?<!-- /results -->", _blank, text, flags=re.S)
    text = re.sub(r"<!-- quote [\w-]+ -->.*?<!-- /quote -->", _blank, text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "``", text)


def unmarked(text: str) -> list:
    """(number, line) for every measured number outside a section that names machine and date."""
    out = []
    for sec in re.split(r"\n(?=#{1,4} )", _prose(text)):
        if DATE.search(sec) and MACHINE.search(sec):
            continue
        for para in re.split(r"\n\s*\n", sec):
            if SET.search(para):  # a paragraph of targets or tolerances
                continue
            for line in para.splitlines():
                if CITED.search(line):
                    continue
                line = DIMENSIONS.sub("", line)
                out += [(m.group(0), line.strip()[:100]) for m in MEASURED.finditer(line)]
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_measured_number_is_marked_with_machine_and_date(path):
    found = unmarked(path.read_text())
    assert not found, f"{path.name}: measured numbers with no machine and date: {found[:5]}"


def _results(page: str) -> str:
    text = (ROOT / "docs" / "benchmarks" / f"{page}.md").read_text()
    m = re.search(r"<!-- results -->(.*?)<!-- /results -->", text, flags=re.S)
    assert m, f"docs/benchmarks/{page}.md has no results block (python benchmarks/publish.py {page} -- ...)"
    return m.group(1)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_quotes_are_the_benchmarks_latest_output(path):
    for page, body in re.findall(r"<!-- quote ([\w-]+) -->(.*?)<!-- /quote -->", path.read_text(), flags=re.S):
        latest = _results(page)
        lines = [ln.strip() for ln in body.strip().splitlines() if ln.strip() and not ln.startswith("```")]
        assert lines, f"{path.name}: an empty quote of {page}"
        missing = [ln for ln in lines if ln not in latest]
        assert not missing, f"{path.name} quotes docs/benchmarks/{page}.md, whose latest run lacks {missing[:2]}"


def test_the_checks_catch_what_they_are_for():
    assert unmarked("# t\n\nThe step takes 3.1x torch's.\n") == [("3.1x", "The step takes 3.1x torch's.")]
    assert not unmarked("# t\n\nOn AMD EPYC (Zen 4), 2026-12-05: 3.1x.\n")
    assert not unmarked("# t\n\nThe papers report 4e-4 across GPUs.\n")
    assert not unmarked("# t\n\nTiles of 16 x 4 and 16 × 12.\n")
    assert unmarked("# t\n\n```text\n1.5e-08\n```\n")  # an output pasted as text is a quote like any other
