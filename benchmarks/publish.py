"""Runs a benchmark and writes what it printed into its documentation page, with the machine
and the date:

    python benchmarks/publish.py step -- python benchmarks/bench_step.py
    python benchmarks/publish.py threads -- python benchmarks/bench_threads.py --steps 50

The first argument names the page (docs/benchmarks/PAGE.md); the words after ``--`` are the
command, run from the repository's root. Its output also goes to the terminal as it runs."""

from __future__ import annotations

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import PAGES, ROOT, write_results  # noqa: E402


def main(argv: list) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    page, command = argv[0], argv[2:]
    if not os.path.exists(os.path.join(PAGES, f"{page}.md")):
        print(
            f"publish: no page docs/benchmarks/{page}.md; choose one of "
            f"{sorted(p[:-3] for p in os.listdir(PAGES) if p.endswith('.md'))}",
            file=sys.stderr,
        )
        return 2
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    if proc.wait() != 0:
        print(f"publish: the benchmark failed (exit {proc.returncode}); the page is unchanged", file=sys.stderr)
        return 1
    path = write_results(page, " ".join(command), "".join(lines))
    print(f"publish: wrote {os.path.relpath(path, ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
