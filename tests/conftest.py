"""Shared test configuration: hypothesis profiles and exact rational references."""

from __future__ import annotations

import gzip
import math
import os
import struct
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# CI profile: reproducible examples, bounded count (the suite runs on 2 cores).
settings.register_profile(
    "ci", derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FORMATS = {np.float32: (24, -126), np.float64: (53, -1022)}


def round_fraction(q: Fraction, dtype) -> float:
    """q rounded to `dtype` to nearest, ties to even (subnormals included), exactly."""
    p, emin = FORMATS[np.dtype(dtype).type]
    if q == 0:
        return 0.0
    sign = -1.0 if q < 0 else 1.0
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if (q.numerator << max(0, -e)) < (q.denominator << max(0, e)):  # q < 2^e
        e -= 1
    e = max(e, emin)
    quantum = e - p + 1
    scaled = q / (Fraction(2) ** quantum)
    n, r = divmod(scaled.numerator, scaled.denominator)
    if 2 * r > scaled.denominator or (2 * r == scaled.denominator and n % 2 == 1):
        n += 1
    try:
        return sign * math.ldexp(n, quantum)
    except OverflowError:
        return sign * math.inf


def fma_chain_reference(a: np.ndarray, b: np.ndarray, order=None) -> np.ndarray:
    """The fixed-mode definition, computed exactly: acc = round(a*b + acc) in key order."""
    m, k = a.shape
    n = b.shape[1]
    order = range(k) if order is None else order
    out = np.empty((m, n), dtype=a.dtype)
    for i in range(m):
        for j in range(n):
            acc = 0.0
            for t in order:
                acc = round_fraction(Fraction(float(a[i, t])) * Fraction(float(b[t, j])) + Fraction(acc), a.dtype)
            out[i, j] = acc
    return out


def exact_dot(a: np.ndarray, b: np.ndarray) -> list:
    """Exact rational a @ b (a list of rows of Fractions)."""
    fa = [[Fraction(float(v)) for v in row] for row in a]
    fb = [[Fraction(float(v)) for v in row] for row in b]
    k = a.shape[1]
    return [
        [sum((fa[i][t] * fb[t][j] for t in range(k)), Fraction(0)) for j in range(b.shape[1])]
        for i in range(a.shape[0])
    ]


def ulp(x: float, dtype) -> float:
    p, emin = FORMATS[np.dtype(dtype).type]
    if x == 0 or not math.isfinite(x):
        return math.ldexp(1.0, emin - p + 1)
    e = max(math.frexp(abs(x))[1] - 1, emin)
    return math.ldexp(1.0, e - p + 1)


def bits(x) -> bytes:
    """Bytes of an array: bitwise comparison that also covers NaN and the sign of zero."""
    return np.ascontiguousarray(np.asarray(x)).tobytes()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def write_mnist(folder, n=40, seed=0, gz=False):
    """A folder of MNIST's IDX files (random images), as a user who has MNIST holds it."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    os.makedirs(folder, exist_ok=True)
    op = gzip.open if gz else open
    sfx = ".gz" if gz else ""
    with op(os.path.join(folder, "train-images-idx3-ubyte" + sfx), "wb") as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28) + imgs.tobytes())
    with op(os.path.join(folder, "train-labels-idx1-ubyte" + sfx), "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, n) + labels.tobytes())
    return imgs, labels


_VERIFY_ELSEWHERE = """
import importlib.util, json, sys
from exactforge.verify import verify_trace
spec = importlib.util.spec_from_file_location("maker", sys.argv[1])
maker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(maker)
out = {}
for arg in sys.argv[2:]:
    trace, factory = arg.split("=")
    model = getattr(maker, factory)() if factory else None
    rep = verify_trace(trace, model=model, epsilon=0.0, permute_batches=7, threads=1)
    out[trace] = [rep.accepted, rep.max_error, rep.reason]
print(json.dumps(out))
"""


def verify_elsewhere(env: dict, maker: str, traces: list) -> dict:
    """Verifies ``traces`` ((path, name of a model factory in the file ``maker``, or "") pairs)
    at epsilon 0, shuffled, on one thread, in a fresh process whose environment adds ``env``:
    another machine, emulated (torch's ISA build and MKL's branch are chosen when a process
    starts). Returns {path: (accepted, max_error, reason)}."""
    import json
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-c", _VERIFY_ELSEWHERE, maker, *(f"{t}={f}" for t, f in traces)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def in_process_group(rank: int, world: int, init: str, body, *args) -> None:
    """For ``mp.spawn``: runs ``body(rank, world, *args)`` in a Gloo process group of ``world``
    processes, then ends the group the one safe way. Every process finishes; body's objects
    (DDP's reducers among them) are collected; only then is the group destroyed, because a
    reducer that outlives its group aborts its process at exit."""
    import gc

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        body(rank, world, *args)
        dist.barrier()
        gc.collect()
    finally:
        dist.destroy_process_group()


def spawn_group(world: int, tmp_path, body, *args) -> None:
    """``body(rank, world, *args)`` on ``world`` processes in one Gloo group (its store in
    tmp_path); a process that raises fails the call."""
    import torch.multiprocessing as mp

    mp.spawn(in_process_group, args=(world, f"file://{tmp_path / 'store'}", body, *args), nprocs=world, join=True)
