"""What every benchmark shares: timing helpers, the machine it ran on, and the page of the
documentation site where its results are written (docs/benchmarks/PAGE.md)."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import re
import time
from typing import Callable, Dict

import numpy as np

from exactforge.report.machine import cpu_name  # noqa: F401  (the benchmarks name their CPU with it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = os.path.join(ROOT, "docs", "benchmarks")


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_time(fn: Callable[[], object], repeats: int = 15) -> float:
    """Median of ``repeats`` single calls, after one call to warm up."""
    fn()
    return float(np.median([timed(fn) for _ in range(repeats)]))


def min_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """The fastest of ``repeats`` single calls, after one call to warm up."""
    fn()
    return float(min(timed(fn) for _ in range(repeats)))


def fast_half_median(fn: Callable[[], object], total: float) -> float:
    """Calls ``fn`` for ``total`` seconds; the median of the faster half of the calls (a noisy
    machine's slow spells fall in the other half)."""
    fn()
    out: list = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < total:
        out.append(timed(fn))
    return float(np.median(sorted(out)[: max(1, len(out) // 2)]))


def sgd_step(model, loss, x, y, lr: float = 0.01) -> None:
    """One plain SGD step of a torch model (forward, backward, update): what the layer
    benchmarks time on both sides."""
    import torch

    model.zero_grad()
    loss(model(x), y).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p.grad, alpha=-lr)


def grads(model, loss, x, y) -> list:
    """The parameters' gradients of ``loss(model(x), y)``, copied."""
    model.zero_grad()
    loss(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def loop_time(fn: Callable[[], object], target: float = 0.02) -> float:
    """Seconds per call: one call, or a loop of short calls lasting about ``target`` (one
    perf_counter reading is too coarse for a call of microseconds)."""
    t0 = time.perf_counter()
    fn()
    el = time.perf_counter() - t0
    n = max(1, int(target / max(el, 1e-7)))
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def interleaved(fns: list, repeats: int, timer: Callable = timed) -> list:
    """Every call's time for each function, the calls alternating: on a shared machine a slow
    spell then hits both sides of a ratio, not one. ``timer=loop_time`` for short calls."""
    out: list = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            out[i].append(timer(fn))
    return out


def interleaved_min(fns: list, repeats: int) -> list:
    """The fastest call of each function, the calls alternating (see interleaved)."""
    return [min(o) for o in interleaved(fns, repeats)]


def ratio_spread(base: list, other: list) -> str:
    """The spread of a ratio measured pair by pair: other[i] / base[i] for the i-th alternation,
    as its quartiles "p25-p75" (a pair shares the machine's state, so its ratio is steadier than
    either time)."""
    r = np.asarray(other, dtype=float) / np.asarray(base, dtype=float)
    return f"{np.percentile(r, 25):.2f}-{np.percentile(r, 75):.2f}x"


def best_time(fn: Callable[[], object], min_total: float = 0.25, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean time of a loop lasting at least min_total/repeats
    (short calls are timed in loops: one perf_counter reading is too coarse for them)."""
    fn()
    out = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            el = time.perf_counter() - t0
            if el >= min_total / repeats:
                break
        out.append(el / n)
    return float(np.median(out))


def machine() -> Dict[str, object]:
    """Where a benchmark ran: CPU, cores, the ISA level exactforge dispatches to, and the date."""
    import exactforge

    opts = exactforge.compile_options()
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "isa": opts["isa"]["kernels"],
        "exact_kernel": opts["exact_kernel"],
        "date": _dt.date.today().isoformat(),
    }


def write_results(page: str, command: str, output: str) -> str:
    """Writes the results block of ``docs/benchmarks/PAGE.md``: the command, the machine and
    the date, and what the benchmark printed. The block lies between two markers, so the
    page's own text around it stays; a page without them gets the block at its end."""
    m = machine()
    # every page states the limits its times are measured against, measured in the same run
    # (the benchmarks that compute shares of peak print the same line for their thread count)
    block = (
        f"<!-- results -->\n## Latest run\n\n`{command}` on {m['cpu']}; {m['cores']} cores; "
        f"kernels {m['isa']}; exact kernel {m['exact_kernel']}; {m['date']}; "
        f"{peaks_text(int(m['cores'] or 1))}:\n\n"
        f"```text\n{output.rstrip()}\n```\n<!-- /results -->\n"
    )
    path = os.path.join(PAGES, f"{page}.md")
    with open(path) as f:
        text = f.read()
    if "<!-- results -->" in text:
        text = re.sub(r"<!-- results -->.*?<!-- /results -->\n", lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with open(path, "w") as f:
        f.write(text)
    return path


@functools.lru_cache(maxsize=None)  # measured once per run: one value per page, and the tool built once
def fma_peak(threads: int):
    """The FMA and int8 peaks of this CPU on `threads` threads, measured by
    benchmarks/bench_fma_peak.cpp (compiled here with -march=native): a dict with
    avx2_f32_gflops, avx512_f32_gflops and avx512_f64_gflops (None without AVX-512) and
    vnni_int8_gops (None without AVX-512 VNNI), or None without a compiler."""
    import shutil
    import subprocess
    import tempfile

    cxx = shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        return None
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_fma_peak.cpp")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "fma_peak")
        subprocess.run([cxx, "-O3", "-march=native", "-fopenmp", src, "-o", exe], check=True)
        return json.loads(subprocess.run([exe, str(threads)], check=True, capture_output=True, text=True).stdout)


def peaks_text(threads: int) -> str:
    """One line naming this machine's measured peaks on ``threads`` threads (bench_fma_peak.cpp),
    and what torch's BLAS is: the yardstick of every share of peak a page states."""
    import torch

    p = fma_peak(threads)
    blas = "MKL" if torch.backends.mkl.is_available() else "not MKL"
    if p is None:
        return f"peaks: not measured (no C++ compiler); torch's BLAS: {blas}"
    f32 = p["avx512_f32_gflops"] or p["avx2_f32_gflops"]
    text = (
        f"measured peaks on {threads} thread(s): float32 FMA {f32} GFLOP/s (AVX2 {p['avx2_f32_gflops']}), float64 FMA "
        f"{p['avx512_f64_gflops']} GFLOP/s, int8 VNNI {p.get('vnni_int8_gops')} Gop/s (a multiply-add counts two); "
        f"torch's BLAS: {blas}"
    )
    if blas == "MKL" and "AMD" in cpu_name() and p["avx512_f32_gflops"]:
        # MKL may take its AVX2 code on AMD CPUs; where the two peaks differ, torch's share
        # against the AVX-512 one understates how well it uses what it runs
        gap = p["avx512_f32_gflops"] / p["avx2_f32_gflops"]
        text += (
            f" (on this AMD CPU MKL may run AVX2 code; its AVX2 and AVX-512 float32 peaks differ by {gap:.2f}x, "
            "so shares are stated against the larger)"
        )
    return text


def step_flops(model, loss_fn, x, y) -> float:
    """Floating-point operations of one forward and backward pass of ``model`` (torch's counter,
    a multiply-add counting two): the work both steps of a comparison do."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def start(threads: int) -> None:
    """Sets torch's and exactforge's thread counts and prints the machine's peaks first."""
    import torch

    import exactforge

    torch.set_num_threads(threads)
    exactforge.set_num_threads(threads)
    print(peaks_text(threads) + "\n")


def weight_grad_macs(net, x) -> int:
    """Multiply-adds of the weight gradients of net's Conv2d and Linear layers for input x: the
    reductions over the batch that the exact mode computes on float64 slices (a Conv2d's is
    C/groups x kh x kw x O per output position of every example, a Linear's in x out per row)."""
    import torch

    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            kh, kw = mod.kernel_size
            total += (mod.in_channels // mod.groups) * kh * kw * out.numel()
        else:
            total += mod.in_features * out.numel()

    hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        net(x)
    for h in hs:
        h.remove()
    return total


def in_processes(n: int, argv: list) -> list:
    """Runs ``python ARGV`` in n fresh processes, one after another, and returns what each printed
    last as JSON: a measurement taken in several processes, since some effects (where the heap
    puts a buffer, how two OpenMP runtimes' waiting threads meet) are settled once per process."""
    import json
    import subprocess
    import sys

    out = []
    for _ in range(n):
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"a measuring process failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def across_processes(runs: list) -> dict:
    """The torch-against-reproducible timings of several processes (each a dict with the lists
    "torch" and "reproducible" of its alternating calls): the median of the processes' best
    times, the median of their best-of ratios with its range, and the pair-by-pair spread of all
    calls together, as a table cell each."""
    ratios = [min(r["reproducible"]) / min(r["torch"]) for r in runs]
    pairs = (sum((r["torch"] for r in runs), []), sum((r["reproducible"] for r in runs), []))
    return {
        "torch": float(np.median([min(r["torch"]) for r in runs])),
        "reproducible": float(np.median([min(r["reproducible"]) for r in runs])),
        "ratio": f"{np.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x)",
        "spread": ratio_spread(*pairs),
    }


def weight_grad_floor(threads: int, macs: int, t_torch: float) -> str:
    """A floor, not a measurement: the time the exact mode's weight gradients (``macs``
    multiply-adds, three float64 FMAs each: the float32 slices' level products) take at the
    measured float64 peak (two flops an FMA), as a multiple of torch's step; "-" unmeasured."""
    pk = fma_peak(threads)
    if pk is None or not pk["avx512_f64_gflops"]:
        return "-"
    return f"{6 * macs / (pk['avx512_f64_gflops'] * 1e9) / t_torch:.2f}x"
