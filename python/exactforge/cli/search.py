"""``exactforge search``: exhaustive search for a distinct batch with the same gradient (Table 4)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import _SEED, _count, _real, _sub, _threads_type, say, write_json


def register(sub: Any) -> None:
    s_ = _sub(
        sub,
        "search",
        "exhaustive search for a distinct batch with the same gradient (Table 4)",
        json_what="every cell (with --table, rewritten as each cell finishes)",
    )
    s_.add_argument("--model", choices=("logreg", "fcn10", "all"), default="logreg", help="the model of the cell")
    s_.add_argument("--d", type=_count(1, 64), default=4, help="pixels")
    s_.add_argument("--n", type=_count(2, 1000), default=3, help="classes")
    s_.add_argument("--v", type=_count(2, 1000), default=3, help="grey levels (pixel values q/(v-1))")
    s_.add_argument(
        "--levels",
        choices=("grid", "paper"),
        default="grid",
        help="grid: q/(v-1); paper: the papers' 8-bit levels floor(255 q/(v-1))/255 (0, 127, 255 at v=3)",
    )
    s_.add_argument("--b", type=_count(1, 6), default=3, help="batch size")
    s_.add_argument("--seed", type=_SEED, default=0, help="seed of the weights and of the true batches")
    s_.add_argument("--bias", choices=("yes", "no", "both"), default="yes", help="models with a bias, without, both")
    s_.add_argument("--method", choices=("mitm", "brute"), default="mitm", help="meet in the middle or brute force")
    s_.add_argument("--true-batches", type=_count(1, 1_000_000), default=3, help="sampled true batches per search")
    s_.add_argument("--tolerance", type=_real(0.0), default=0.0, help="tau > 0: equal within ||delta|| <= tau")
    s_.add_argument("--threads", type=_threads_type(), help="threads of the search (none given: all)")
    s_.add_argument(
        "--max-memory",
        type=_real(0.0, 2.0**40, lo_open=True),
        default=4096,
        help="bound on everything the search allocates (examples, gradients, table; with --all the key windows), MiB",
    )
    s_.add_argument(
        "--max-batches",
        type=_count(1),
        default=10**11,
        help="brute force: refuse a search of more batches than this per true batch",
    )
    s_.add_argument("--table", action="store_true", help="the whole grid v = 2..6, b = 1..5 (Table 4)")
    s_.add_argument(
        "--all",
        action="store_true",
        help="every batch of the cell is a true batch (cells up to 1e10 batches; v=3, b=5 takes a few "
        "minutes): complete counts; with --table, for every cell that small (the others are sampled)",
    )
    s_.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    biases = {"yes": (True,), "no": (False,), "both": (True, False)}[args.bias]
    if args.table:
        return _table(args, biases)
    if args.model == "all" or len(biases) != 1:
        raise ValueError("--model all and --bias both apply to --table; choose one model and --bias yes|no")
    return _every_batch(args, biases[0]) if args.all else _sampled(args, biases[0])


def _table(args: argparse.Namespace, biases: tuple) -> int:
    """The whole grid, each cell printed (and the JSON rewritten) as it finishes: the grid takes
    about an hour, and a killed run keeps every finished cell in --json."""
    import time

    from ..forging.search import TABLE_B, TABLE_V, cell_cost, format_table, run_table

    models = ("logreg", "fcn10") if args.model == "all" else (args.model,)
    t0 = time.perf_counter()
    weights = [
        cell_cost(v, b, args.d, args.n, args.true_batches, args.all)
        for _m in models
        for _b in biases
        for v in TABLE_V
        for b in TABLE_B
    ]
    done_cells: list = []

    def cell(r: Any, done: int, total: int) -> None:
        # the ETA scales the time so far by the sizes of the cells left
        spent = time.perf_counter() - t0
        left = spent * sum(weights[done:]) / max(sum(weights[:done]), 1.0)
        eta = f", about {left / 60:.0f} min left" if done < total else ""
        say(
            args,
            f"[{done}/{total}, {spent:.0f} s{eta}] {r.model} {'bias' if r.bias else 'no bias'} "
            f"v={r.v} b={r.b}: {r.batches_with_forgery} of {r.true_batches} true batches with a forgery "
            f"({r.found} forgeries, {r.structural} trivial), {r.seconds:.1f} s",
        )
        done_cells.append(r)
        if args.json != "-":  # standard output gets one document, at the end
            cells = [c.to_dict() for c in done_cells]
            write_json(args, {"cells": cells, "complete": done == total, "seconds": time.perf_counter() - t0})

    results = run_table(
        models,
        biases,
        TABLE_V,
        TABLE_B,
        d=args.d,
        n=args.n,
        seed=args.seed,
        true_batches=args.true_batches,
        method=args.method,
        threads=args.threads,
        max_memory_mib=args.max_memory,
        progress=not args.quiet,
        max_batches=args.max_batches,
        levels=args.levels,
        all_cells=args.all,
        on_cell=cell,
    )
    say(args, format_table(results))
    total = sum(r.seconds for r in results)
    say(
        args,
        f"\n{len(results)} cells, {sum(r.found for r in results)} forgeries, "
        f"{sum(r.structural for r in results)} trivial ones, {total:.1f} s",
    )
    write_json(args, {"cells": [r.to_dict() for r in results], "complete": True, "seconds": total})
    return 0


def _every_batch(args: argparse.Namespace, bias: bool) -> int:
    """Every batch of the cell a true batch: the complete count."""
    from ..forging.search import run_search_all

    r = run_search_all(
        args.model,
        args.d,
        args.n,
        args.v,
        args.b,
        seed=args.seed,
        bias=bias,
        levels=args.levels,
        threads=args.threads,
        max_memory_mib=args.max_memory,
    )
    say(
        args,
        f"{r.model} ({'bias' if r.bias else 'no bias'}) d={r.d} n={r.n} v={r.v} b={r.b}, every batch a true "
        f"batch: {r.batches_with_forgery} of {r.batches} batches have a distinct batch with an equal gradient "
        f"({r.structural} only trivially); pairs by certificate: "
        f"{', '.join(f'{v} {k}' for k, v in sorted(r.certificates.items())) or 'none'}; {r.seconds:.1f} s",
    )
    write_json(args, r.to_dict())
    return 0


def _sampled(args: argparse.Namespace, bias: bool) -> int:
    """Sampled true batches, searched by meet in the middle or brute force."""
    from ..forging.search import run_search

    r = run_search(
        args.model,
        args.d,
        args.n,
        args.v,
        args.b,
        seed=args.seed,
        bias=bias,
        method=args.method,
        true_batches=args.true_batches,
        tolerance=args.tolerance,
        threads=args.threads,
        max_memory_mib=args.max_memory,
        progress=not args.quiet,
        max_batches=args.max_batches,
        levels=args.levels,
    )
    say(
        args,
        f"{r.model} ({'bias' if r.bias else 'no bias'}) d={r.d} n={r.n} v={r.v} b={r.b}: {r.batches} batches x "
        f"{r.true_batches} true batches searched by {r.method} ({r.mode}) in {r.seconds:.2f} s: {r.found} forgeries "
        f"({', '.join(f'{v} {k}' for k, v in sorted(r.certificates.items()) if k != 'trivial') or 'none'}), "
        f"{r.structural} trivial (zero-influence examples), {r.batches_with_forgery} true batch(es) with a forgery, "
        f"{r.false_candidates} candidate(s) certified different",
    )
    write_json(args, r.to_dict())
    return 0
