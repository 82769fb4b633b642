"""Bits across machines: how often torch's square root is not the nearest value on this CPU,
whether a reproducible CNN recorded on an emulated other machine verifies here at epsilon = 0
with torch's arithmetic and with the portable one, and what the portable optimizer update
costs against torch's step.

    python benchmarks/publish.py portability -- python benchmarks/bench_portability.py

Each recording runs in a fresh process under the emulating environment variables; each
verification runs here, natively. The CNN: Conv, BatchNorm, ReLU, MaxPool, Dropout, Linear on
digits, 4 steps of 16, StepLR and clipping by norm (tests/fixtures/golden/make.py's loop)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ROOT, cpu_name, median_time  # noqa: E402

EMULATIONS = {
    "ATen default + exactforge generic": {"ATEN_CPU_CAPABILITY": "default", "EXACTFORGE_ISA": "generic"},
    "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
    "MKL_ENABLE_INSTRUCTIONS=AVX2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
OPTIMIZERS = {
    "sgd": "torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)",
    "adam": "torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3)",
    "adamw": "torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05, amsgrad=True)",
}
RECORD = """
import sys, numpy as np, torch, importlib.util
import exactforge.nn as xnn
from exactforge.data import load_dataset
from exactforge.trace.record import TraceRecorder
spec = importlib.util.spec_from_file_location("golden", sys.argv[1]); mk = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mk)
out, arithmetic, make = sys.argv[2], sys.argv[3], sys.argv[4]
data = load_dataset("digits")
X, y = torch.from_numpy(data.X).reshape(-1, 1, 8, 8), torch.from_numpy(data.y)
model = xnn.reproducible(mk.cnn(), arithmetic=arithmetic)
p = model.parameters()
opt = eval(make)
sched = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
with TraceRecorder(out, model, opt, data, steps=4, batch_size=16, loss_fn=xnn.cross_entropy, scheduler=sched,
                   clip_grad_norm=0.5, input_shape=(1, 8, 8)) as rec:
    for idx in np.random.default_rng(0).choice(len(data), (4, 16)):
        rec.begin(idx)
        loss = xnn.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad(); loss.backward(); xnn.clip_grad_norm_(model.parameters(), 0.5); opt.step(); sched.step()
        rec.step(idx)
"""
MAKE = os.path.join(ROOT, "tests", "fixtures", "golden", "make.py")


def sqrt_off() -> str:
    rng = np.random.default_rng(0)
    rows = []
    for what, v in (
        ("uniform in [1, 5)", rng.random(10**6) * 4 + 1),
        ("Adam's second moments (|N(0, 1e-2)|^2)", (rng.standard_normal(10**6) * 1e-2) ** 2),
    ):
        x = v.astype(np.float32)
        off = float(np.mean(torch.from_numpy(x).sqrt().numpy() != np.sqrt(x)))
        rows.append(f"| {what} | {100 * off:.1f}% |")
    return "\n".join(["| float32 inputs (10^6) | torch.sqrt not the nearest value |", "|---|---|", *rows])


def cross() -> str:
    import importlib.util

    from exactforge.verify import verify_trace

    spec = importlib.util.spec_from_file_location("golden", MAKE)
    mk = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mk)
    rows = ["| recorded under | optimizer | torch's arithmetic | portable-1 |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for emu, env in EMULATIONS.items():
            for name, make in OPTIMIZERS.items():
                cells = []
                for arithmetic in ("torch", "portable-1"):
                    out = os.path.join(tmp, f"{len(os.listdir(tmp))}")
                    subprocess.run(
                        [sys.executable, "-c", RECORD, MAKE, out, arithmetic, make],
                        env={**os.environ, **env},
                        check=True,
                        capture_output=True,
                    )
                    rep = verify_trace(out, model=mk.cnn(), epsilon=0.0)
                    verdict = "accepted" if rep.accepted else "REJECTED"
                    cells.append(f"{verdict}, error {rep.max_error:.3g}")
                rows.append(f"| {emu} | {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def update_cost() -> str:
    from exactforge.models.zoo import build_model
    from exactforge.nn.update import portable_step

    rows = ["| optimizer (ResNet-20, 269,722 parameters) | torch's step | portable step | ratio |", "|---|---|---|---|"]
    for name, make in OPTIMIZERS.items():
        model = build_model("resnet20", (3, 32, 32), 10, seed=0)
        for q in model.parameters():
            q.grad = torch.randn_like(q) * 1e-3
        opt = eval(make, {"torch": torch, "p": model.parameters()})
        t_torch = median_time(opt.step, 21)
        t_port = median_time(lambda: portable_step(opt), 21)
        rows.append(f"| {name} | {1e3 * t_torch:.2f} ms | {1e3 * t_port:.2f} ms | {t_port / t_torch:.2f}x |")
    return "\n".join(rows)


def main() -> None:
    torch.set_num_threads(1)  # the portable update is one pass on one thread: compare like with like
    print(f"{cpu_name()}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), {dt.date.today()}")
    print()
    print(sqrt_off())
    print()
    print(cross())
    print()
    print(update_cost())


if __name__ == "__main__":
    main()
