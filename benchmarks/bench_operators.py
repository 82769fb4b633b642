"""The reproducible operators against the peers a CPU user would pick, in one run.

Products (the kernel table's shapes, m x k x n, float32): torch's default matmul, torch under
MKL's conditional numerical reproducibility (``MKL_CBWR=COMPATIBLE,STRICT`` and
``MKL_CBWR=AVX512,STRICT``), and exactforge's fixed and exact products called as a user calls
them on tensors (``exactforge.ops.mm``). MKL reads MKL_CBWR once per process, so every setting
runs in its own child process, which also repeats torch's default time: each ratio is of two
times measured in one process, best of --repeats calls (short calls timed in loops), the spread
the quartiles of the call-by-call ratios. Beside each time, the invariance its bits promise,
checked here: the same bits on 1 and 2 threads; in a permuted batch order (exactforge's fixed
mode with the batch's keys); on another ISA level (exactforge: ``EXACTFORGE_ISA=generic``
against the native kernels; MKL: its COMPATIBLE branch against its AVX2 branch).

Then the per-call cost of a small product (64 x 100 x 10): torch.mm, ``exactforge.ops.mm``
(eager: the kernel called directly) and the dispatcher's operator ``torch.ops.exactforge.mm``
(what a compiled graph calls). Then whole SGD steps of reproducible models (LeNet-5, VGGmini
and the Transformer at b = 100, ResNet-20 at b = 128 on random 32 x 32 inputs), fixed and exact
against torch's step, and ``torch.compile`` of the reproducible model: the same bits as eager
(checked) and its step time.

    python benchmarks/bench_operators.py [--repeats 20] [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import torch

from _common import interleaved, loop_time

SHAPES = [(64, 100, 10), (784, 100, 100), (784, 1000, 100), (784, 4096, 10), (100, 3136, 128), (3136, 288, 32)]
LARGE = [(1024, 8192, 1024)]
STEP_MODELS = ["lenet", "vggmini", "transformer", "resnet20"]


def _digest(t) -> str:
    return hashlib.sha256(np.ascontiguousarray(t.numpy() if hasattr(t, "numpy") else t).tobytes()).hexdigest()[:16]


def _operands(m: int, k: int, n: int):
    g = np.random.default_rng(m * 1_000_003 + k * 101 + n)
    a = g.standard_normal((m, k)).astype(np.float32)
    b = g.standard_normal((k, n)).astype(np.float32)
    return torch.from_numpy(a), torch.from_numpy(b)


def _alternating(fns: list, repeats: int) -> list:
    return interleaved(fns, repeats, timer=loop_time)


def _summary(base: list, other: list) -> dict:
    r = np.asarray(other) / np.asarray(base)
    return {
        "best_s": float(min(other)),
        "ratio": float(min(other) / min(base)),
        "spread": [float(np.percentile(r, 25)), float(np.percentile(r, 75))],
    }


def child_products(args) -> dict:
    """One process: torch's matmul (under this process's MKL_CBWR) and, when asked, exactforge's
    products, alternating; and the digests of every result for the invariance checks."""
    import exactforge
    from exactforge import ops
    from exactforge import reduce as R

    shapes = SHAPES + ([] if args.quick else LARGE)
    out = {}
    for m, k, n in shapes:
        a, b = _operands(m, k, n)
        perm = torch.from_numpy(np.random.default_rng(k).permutation(k))
        ap, bp = a[:, perm].contiguous(), b[perm].contiguous()
        row: dict = {"digests": {}}
        fns = {"torch": lambda: torch.mm(a, b)}
        if args.exactforge:
            fns["fixed"] = lambda: ops.mm(a, b, "fixed")
            fns["exact"] = lambda: ops.mm(a, b, "exact")
        for name, fn in fns.items():
            d = {}
            for th in (1, 2):
                torch.set_num_threads(th)
                exactforge.set_num_threads(th)
                d[f"threads{th}"] = _digest(fn())
            torch.set_num_threads(args.threads)
            exactforge.set_num_threads(args.threads)
            if name == "torch":
                d["permuted"] = _digest(torch.mm(ap, bp))
            elif name == "fixed":  # the fixed mode's promise: ordered by the batch's keys
                d["permuted"] = _digest(R.matmul(ap, bp, mode="fixed", keys=perm))
                d["threads1"] = _digest(R.matmul(a, b, mode="fixed", keys=torch.arange(k)))
            else:
                d["permuted"] = _digest(ops.mm(ap, bp, "exact"))
            row["digests"][name] = d
        if args.time:
            reps = max(3, args.repeats // 4) if m * k * n > 1e9 else args.repeats
            names = list(fns)
            times = _alternating([fns[x] for x in names], reps)
            row["times"] = {x: t for x, t in zip(names, times)}
        out[f"{m}x{k}x{n}"] = row
    return out


def run_child(env_extra: dict, flags: list, args) -> dict:
    env = dict(os.environ, **env_extra)
    argv = [sys.executable, os.path.abspath(__file__), "--child", *flags, "--repeats", str(args.repeats)]
    argv += ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    res = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _f64_rate(threads: int) -> float:
    """Multiply-adds per second of torch's float64 matmul (MKL's dgemm) on 2048^3: the practical
    float64 FMA rate the exact product's slices run at (its floor below)."""
    torch.set_num_threads(threads)
    a = torch.rand(2048, 2048, dtype=torch.float64)
    a @ a
    best = min(loop_time(lambda: a @ a) for _ in range(3))
    return 2048**3 / best


def products_table(args) -> str:
    f64 = _f64_rate(args.threads)
    avx512 = "avx512f" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else True
    runs = {
        "native": run_child({}, ["--exactforge", "--time"], args),
        "compatible": run_child({"MKL_CBWR": "COMPATIBLE,STRICT"}, ["--time"], args),
        "avx512": run_child({"MKL_CBWR": "AVX512,STRICT"}, ["--time"], args),
        "avx2": run_child({"MKL_CBWR": "AVX2,STRICT"}, [], args),
        "generic": run_child({"EXACTFORGE_ISA": "generic"}, ["--exactforge"], args),
    }
    lines = [
        "| m x k x n | torch (ms) | MKL_CBWR=COMPATIBLE,STRICT | MKL_CBWR=AVX512,STRICT | exactforge fixed | "
        "exactforge exact | exact's floor | exact / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    inv = {
        p: {"threads": True, "order": True, "isa": True} for p in ("torch", "compatible", "avx512", "fixed", "exact")
    }
    for shape, row in runs["native"].items():
        cells = [shape, f"{min(row['times']['torch']) * 1e3:.3f}"]
        for peer in ("compatible", "avx512"):
            prow = runs[peer][shape]
            s = _summary(prow["times"]["torch"], prow["times"]["torch"])  # best of its own process
            base = min(prow["times"]["torch"]) / min(row["times"]["torch"])
            cells.append(f"{base:.2f}x ({s['best_s'] * 1e3:.3f} ms)")
        for mode in ("fixed", "exact"):
            s = _summary(row["times"]["torch"], row["times"][mode])
            cells.append(f"{s['ratio']:.2f}x ({s['spread'][0]:.2f}-{s['spread'][1]:.2f})")
        m, k, n = (int(v) for v in shape.split("x"))
        floor = 3 * m * k * n / f64  # three float64 FMAs per multiply-add (the two slices' kept pairs)
        cells.append(f"{floor / min(row['times']['torch']):.2f}x")
        cells.append(f"{min(row['times']['exact']) / floor:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
        for peer, run, key, other in (
            ("torch", runs["native"], "torch", runs["compatible"]),
            ("compatible", runs["compatible"], "torch", runs["avx2"]),
            ("avx512", runs["avx512"], "torch", runs["avx2"]),
            ("fixed", runs["native"], "fixed", runs["generic"]),
            ("exact", runs["native"], "exact", runs["generic"]),
        ):
            d = run[shape]["digests"][key]
            inv[peer]["threads"] &= d["threads1"] == d["threads2"]
            inv[peer]["order"] &= d["permuted"] == d["threads2"]
            inv[peer]["isa"] &= d["threads2"] == other[shape]["digests"][key]["threads2"]
    lines += [
        "",
        "Ratios of best times to torch's default best time in the same process; in brackets the quartiles of "
        "the call-by-call ratios (each call paired with the torch call beside it). MKL's settings run in their "
        "own processes: their ratio is to the native process's torch time, their own best time in brackets. "
        f"The exact product's floor: three float64 FMAs per multiply-add at torch's float64 matmul rate here "
        f"({2 * f64 / 1e9:.1f} GFLOP/s on 2048^3), as a multiple of torch's time; exact / floor is how far "
        "the kernel is from it."
        + (
            ""
            if avx512
            else " This CPU has no AVX-512: under MKL_CBWR=AVX512,STRICT MKL runs its best available branch "
            "(AVX2), so that row's 'other ISA level' compares AVX2 with AVX2."
        ),
        "",
        "| bits the same | threads 1 vs 2 | permuted batch | other ISA level |",
        "|---|---|---|---|",
    ]
    names = {
        "torch": "torch default (vs its COMPATIBLE branch)",
        "compatible": "MKL_CBWR=COMPATIBLE,STRICT (vs AVX2,STRICT)",
        "avx512": "MKL_CBWR=AVX512,STRICT (vs AVX2,STRICT)",
        "fixed": "exactforge fixed, keyed (vs EXACTFORGE_ISA=generic)",
        "exact": "exactforge exact (vs EXACTFORGE_ISA=generic)",
    }
    for peer, v in inv.items():
        yes = {True: "yes", False: "no"}
        lines.append(f"| {names[peer]} | {yes[v['threads']]} | {yes[v['order']]} | {yes[v['isa']]} |")
    return "\n".join(lines)


def per_call_table(args) -> str:
    from exactforge import ops

    a, b = _operands(64, 100, 10)
    op = torch.ops.exactforge.mm.default
    fns = [
        lambda: torch.mm(a, b),
        lambda: ops.mm(a, b, "fixed"),
        lambda: ops.mm(a, b, "exact"),
        lambda: op(a, b, "fixed", False),
        lambda: op(a, b, "exact", False),
    ]
    names = ["torch.mm", "ops.mm fixed", "ops.mm exact", "torch.ops.exactforge.mm fixed", "... exact"]
    times = _alternating(fns, args.repeats)
    lines = ["| 64 x 100 x 10 | best (us) | ratio to torch.mm (quartiles) |", "|---|---|---|"]
    for name, t in zip(names, times):
        s = _summary(times[0], t)
        lines.append(
            f"| {name} | {s['best_s'] * 1e6:.1f} | {s['ratio']:.2f}x ({s['spread'][0]:.2f}-{s['spread'][1]:.2f}) |"
        )
    return "\n".join(lines)


def _step_data(name: str):
    from exactforge.data import load_dataset
    from exactforge.models.zoo import build_model

    if name == "resnet20":
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g)
        return build_model(name, (3, 32, 32), 10, seed=0), x, y, "random 3x32x32, b = 128"
    data = load_dataset("synthetic-tokens" if name == "transformer" else "mnist-5k")
    net = build_model(name, data.shape, data.num_classes, vocab=data.vocab, seed=0)
    x = torch.from_numpy(data.X[:100]).reshape(100, *data.shape)
    return net, x, torch.from_numpy(data.y[:100]), f"{data.name}, b = 100"


def _sgd(model, loss, x, y, lr: float = 0.01):
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss(out, y).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-lr)


def steps_table(args) -> str:
    import exactforge.nn as xnn

    lines = [
        "| model | data | torch step (ms) | fixed | exact | compiled fixed: same bits as eager | compiled fixed |",
        "|---|---|---|---|---|---|---|",
    ]
    models = STEP_MODELS[:2] if args.quick else STEP_MODELS
    for name in models:
        net, x, y, what = _step_data(name)
        fixed = xnn.reproducible(copy.deepcopy(net), mode="fixed")
        exact = xnn.reproducible(copy.deepcopy(net), mode="exact")
        comp_model = xnn.reproducible(copy.deepcopy(net), mode="fixed")
        compiled = torch.compile(comp_model)

        def loss_of(mode):
            return lambda o, t: xnn.cross_entropy(o, t, mode=mode)

        # correctness first: the compiled step's gradients are the eager step's, bit for bit
        ref = xnn.reproducible(copy.deepcopy(net), mode="fixed")
        ref.zero_grad()
        loss_of("fixed")(ref(x), y).backward()
        compiled.zero_grad()
        loss_of("fixed")(compiled(x), y).backward()
        same = all(torch.equal(p.grad, q.grad) for p, q in zip(ref.parameters(), comp_model.parameters()))
        reps = max(5, args.repeats // 2) if name in ("vggmini", "resnet20") else args.repeats
        times = _alternating(
            [
                lambda: _sgd(net, torch.nn.functional.cross_entropy, x, y),
                lambda: _sgd(fixed, loss_of("fixed"), x, y),
                lambda: _sgd(exact, loss_of("exact"), x, y),
                lambda: _sgd(compiled, loss_of("fixed"), x, y),
            ],
            reps,
        )
        cells = [name, what, f"{min(times[0]) * 1e3:.1f}"]
        for t in times[1:3]:
            s = _summary(times[0], t)
            cells.append(f"{s['ratio']:.2f}x ({s['spread'][0]:.2f}-{s['spread'][1]:.2f})")
        s = _summary(times[0], times[3])
        cells += ["yes" if same else "NO", f"{s['ratio']:.2f}x ({s['spread'][0]:.2f}-{s['spread'][1]:.2f})"]
        lines.append("| " + " | ".join(cells) + " |")
        if not same:
            raise SystemExit(f"{name}: the compiled step's gradients differ from eager's; not publishing")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="no 1024 x 8192 x 1024 product; two step models")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--exactforge", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--time", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import exactforge

    torch.set_num_threads(args.threads)
    exactforge.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child_products(args)))
        return
    print(f"{args.threads} threads; best of {args.repeats}; torch {torch.__version__}\n")
    print("### Products\n")
    print(products_table(args) + "\n")
    print("### Per call\n")
    print(per_call_table(args) + "\n")
    print("### SGD steps\n")
    print(steps_table(args))


if __name__ == "__main__":
    main()
