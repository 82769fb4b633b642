"""The README's command table, with each example's wall time on this machine.

Runs every example of the table in order, in one scratch folder (later examples use what
earlier ones wrote, as the README says), each in a fresh process as a user would type it, and
prints the table the README quotes:

    python benchmarks/publish.py cli -- python benchmarks/bench_cli.py

``--repeats`` runs each example that many times in fresh folders and keeps the fastest (the
machine is shared). The main job also runs in full (``reevaluate`` without --quick), since the
README gives its time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time

# (command, what it does, the example): the README's table, in the order the examples run
TABLE = [
    (
        "reevaluate",
        "the main job: the whole re-evaluation, with a report folder",
        "exactforge reevaluate --quick --out r/",
    ),
    ("demo", "the batch-order and thread experiment on one SGD step", "exactforge demo"),
    (
        "train",
        "trains and records an execution trace",
        "exactforge train --engine native --model fcn --hidden 32,32 --steps 50 --out t/",
    ),
    (
        "verify",
        "verifies a trace (exit 0 accepted, 1 rejected, 2 invalid)",
        "exactforge verify t/ --epsilon 0 --permute-batches 7 --json v.json",
    ),
    (
        "repro",
        "a reproduction-error study and a calibrated ε",
        "exactforge repro --model lenet --batch-sizes 32,100 --out s/",
    ),
    (
        "invert",
        "reconstructs a logged step's batch from its update, beside the claimed batch",
        "exactforge invert t/ --step 3 --method dlg --json i.json",
    ),
    (
        "attack",
        "a known attack on one step of a trace",
        "exactforge attack t/ --method greedy --step 3 --fraction 0.01 --json a.json",
    ),
    (
        "spoof",
        "a whole trace for a model one did not train, from public data",
        "exactforge spoof t/ --attack infinitesimal --steps 200 --out sp/",
    ),
    ("game", "the data forging game", "exactforge game --attack dlg --rounds 20 --epsilon auto --json g.json"),
    (
        "forge",
        "an exact forgery of one step, with its report and figure",
        "exactforge forge t/ --step 3 --method nullspace --target nearest --figure f.png",
    ),
    ("search", "exhaustive search for equal-gradient batches (Table 4)", "exactforge search --v 3 --b 3 --json s.json"),
    ("info", "what the installation was built with and dispatches to", "exactforge info --json i.json"),
]


def _run(example: str, cwd: str) -> float:
    words = shlex.split(example)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "exactforge.cli", *words[1:], "--quiet"], cwd=cwd, capture_output=True, text=True
    )
    took = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"bench_cli: {example!r} failed (exit {proc.returncode}): {proc.stderr[-500:]}")
    return took


def _fmt(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    best = [float("inf")] * len(TABLE)
    full = float("inf")
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            for i, (_, _, example) in enumerate(TABLE):
                best[i] = min(best[i], _run(example, d))
            full = min(full, _run("exactforge reevaluate --out full/", d))
    print(f"# the README's examples, fresh process each (start-up included), best of {args.repeats}\n")
    print("| command | does | example | time (2 cores) |")
    print("|---|---|---|---|")
    for (cmd, does, example), t in zip(TABLE, best):
        print(f"| `{cmd}` | {does} | `{example}` | {_fmt(t)} |")
    print(f"\nexactforge reevaluate (the full main job, not --quick): {_fmt(full)}")
    print(f"cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
