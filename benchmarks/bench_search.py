"""Benchmark of the exhaustive search (the main paper's Table 4).

* meet in the middle vs brute force at v = 3, b = 3 (2.36M batches) and at v = 3, b = 5
  (6.8e9 batches): both must report the same results first; times are the native search
  (table build + enumeration; the per-example gradients are shared), best of several runs;
* the whole grid: v = 2..6, b = 1..5, logistic regression and the FCN with 10 hidden units,
  with and without bias, 3 sampled true batches per cell, exact equality.

  python benchmarks/bench_search.py [--out benchmarks/out/search.json]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import time

from exactforge.forging.search import format_table, run_search, run_table
from exactforge.report import jsonio


def best(method, v, b, repeats):
    rs = [run_search("logreg", 4, 3, v, b, method=method, seed=0, true_batches=3) for _ in range(repeats)]
    return min(r.search_seconds for r in rs), rs[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/out/search.json")
    ap.add_argument("--skip-grid", action="store_true")
    args = ap.parse_args()
    res = {"date": _dt.date.today().isoformat(), "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    cmp = []
    for v, b, reps in ((3, 3, 15), (3, 5, 1)):
        tb, rb = best("brute", v, b, reps)
        tm, rm = best("mitm", v, b, max(reps, 3))
        assert (rb.found, rb.structural, rb.forgeries) == (rm.found, rm.structural, rm.forgeries)
        cmp.append({"v": v, "b": b, "batches": rb.batches, "brute_s": tb, "mitm_s": tm, "speedup": tb / tm})
        print(
            f"v={v} b={b} ({rb.batches:.3g} batches): brute {tb * 1e3:.2f} ms, mitm {tm * 1e3:.3f} ms: {tb / tm:.0f}x",
            flush=True,
        )
    res["mitm_vs_brute"] = cmp
    if not args.skip_grid:
        t0 = time.perf_counter()
        cells = run_table(("logreg", "fcn10"), (True, False), true_batches=3)
        total = time.perf_counter() - t0
        res["grid"] = {"seconds": total, "cells": [c.to_dict() for c in cells]}
        print(format_table(cells))
        print(
            f"\nwhole grid ({len(cells)} cells x 3 true batches): {total:.0f} s; forgeries "
            f"{sum(c.found for c in cells)}, structural {sum(c.structural for c in cells)}",
            flush=True,
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    jsonio.write(args.out, res)


if __name__ == "__main__":
    main()
