"""Honest research loops: what BatchNorm in training mode and recording cost.

1. One SGD step of VGGmini with BatchNorm after every convolution (training mode), b = 100 on
   MNIST-5k: torch's step against the reproducible one (exactforge.nn: batch statistics and
   their backward as order-free sums). Correctness first: float64 gradients equal autograd's
   to 1e-10 and a permuted batch gives the same float32 bits, else nothing is timed.
2. Recording overhead: an ordinary torch loop (AdamW, warm-up then cosine schedule, gradient
   clipping, label smoothing) with and without a TraceRecorder around it, checkpoints out of
   the timed steps: the recorder's hooks and checks (inputs, the loss's gradient at the output,
   the gradients reaching the optimizer), the learning-rate bookkeeping and the record append.
   The recorded trace must then verify at epsilon = 0.

Both sides of each ratio alternate in one run, best of --repeats.

    python benchmarks/bench_loops.py [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import numpy as np
import torch
from torch import nn

import exactforge.nn as xnn
from exactforge.data import load_dataset
from exactforge.models.zoo import build_model
from exactforge.trace.record import TraceRecorder
from exactforge.verify import verify_trace

from _common import cpu_name, grads, interleaved_min, sgd_step, start


def with_batch_norm(model: nn.Module) -> nn.Module:
    """The zoo model with a BatchNorm2d after each convolution, the convolution without its
    bias (BatchNorm subtracts it again: its gradient is 0, in floats rounding noise)."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in reversed(range(len(seq))):
            c = seq[i]
            if isinstance(c, nn.Conv2d):
                seq[i] = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, bias=False)
                seq.insert(i + 1, nn.BatchNorm2d(c.out_channels))
    return model


def batch_norm_step(data, args) -> None:
    torch.manual_seed(0)
    net = with_batch_norm(build_model("vggmini", data.shape, data.num_classes, seed=0))
    rep = xnn.reproducible(copy.deepcopy(net))
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data), generator=g)[: args.batch].numpy()
    x = torch.from_numpy(data.X[idx]).reshape(args.batch, *data.shape)
    y = torch.from_numpy(data.y[idx])
    g64 = grads(xnn.reproducible(copy.deepcopy(net).double()), xnn.cross_entropy, x.double(), y)
    t64 = grads(copy.deepcopy(net).double(), nn.functional.cross_entropy, x.double(), y)
    rel64 = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g64, t64))
    perm = torch.randperm(args.batch, generator=g)
    state = copy.deepcopy(rep.state_dict())
    gr = grads(rep, xnn.cross_entropy, x, y)
    rep.load_state_dict(state)
    same = all(torch.equal(a, b) for a, b in zip(gr, grads(rep, xnn.cross_entropy, x[perm], y[perm])))
    if rel64 > 1e-10 or not same:
        raise SystemExit(f"wrong gradients (float64 rel {rel64:.2g}, permutation-invariant {same}); not timing")
    t_torch, t_rep = interleaved_min(
        [
            lambda: sgd_step(net, nn.functional.cross_entropy, x, y),
            lambda: sgd_step(rep, xnn.cross_entropy, x, y),
        ],
        args.repeats,
    )
    n = sum(p.numel() for p in net.parameters())
    print("| model | parameters | float64 rel. gradient diff vs autograd | permuted batch: same bits |", end="")
    print(" torch step | reproducible step | ratio |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| VGGmini + BatchNorm (training mode) | {n:,} | {rel64:.2g} | yes | {1e3 * t_torch:.1f} ms | "
        f"{1e3 * t_rep:.1f} ms | {t_rep / t_torch:.2f}x |\n",
        flush=True,
    )


class Loop:
    """An ordinary loop's state: model, AdamW, warm-up + cosine, its own batch stream."""

    def __init__(self, make, data, batch: int) -> None:
        self.model = make()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.05)
        S = torch.optim.lr_scheduler
        self.sched = S.SequentialLR(
            self.opt,
            [S.LinearLR(self.opt, start_factor=0.1, total_iters=5), S.CosineAnnealingLR(self.opt, T_max=1000)],
            milestones=[5],
        )
        self.loss = nn.CrossEntropyLoss(label_smoothing=0.1)
        self.X = torch.from_numpy(data.X).reshape(len(data), *data.shape)
        self.y = torch.from_numpy(data.y)
        self.rng = np.random.default_rng(0)
        self.n, self.batch = len(data), batch
        self.rec = None

    def step(self) -> None:
        idx = self.rng.choice(self.n, self.batch, replace=False)
        t = torch.from_numpy(idx)
        loss = self.loss(self.model(self.X[t]), self.y[t])
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        if self.rec is not None:
            self.rec.step(idx)


def recording_overhead(data, args) -> None:
    print("| model | plain torch step | recorded step | overhead | recorded trace verifies at epsilon = 0 |")
    print("|---|---|---|---|---|")
    for name in ("lenet", "vggmini-bn"):

        def make(name=name):
            torch.manual_seed(0)
            m = build_model(name.replace("-bn", ""), data.shape, data.num_classes, seed=0)
            return with_batch_norm(m) if name.endswith("-bn") else m

        plain, recorded = Loop(make, data, args.batch), Loop(make, data, args.batch)
        out = tempfile.mkdtemp() + "/trace"
        rec = TraceRecorder(
            out,
            recorded.model,
            recorded.opt,
            data,
            checkpoint_every=10**6,  # checkpoints are writes of the model, not per-step overhead
            batch_size=args.batch,
            loss_fn=recorded.loss,
            scheduler=recorded.sched,
            clip_grad_norm=1.0,
        )
        with rec:
            recorded.rec = rec
            t_plain, t_rec = interleaved_min([plain.step, recorded.step], args.repeats)
        verdict = verify_trace(out, model=make())
        ok = verdict.accepted and verdict.max_error == 0.0
        if not ok:
            raise SystemExit(f"{name}: the recorded trace does not verify ({verdict.reason}, {verdict.max_error})")
        print(
            f"| {name} | {1e3 * t_plain:.1f} ms | {1e3 * t_rec:.1f} ms | {100 * (t_rec / t_plain - 1):+.1f}% | "
            f"yes ({verdict.num_steps} steps) |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()
    start(args.threads)
    print(
        f"# Honest loops: BatchNorm in training mode and recording overhead; MNIST-5k, b = {args.batch}, "
        f"{args.threads} thread(s), best of {args.repeats}; {cpu_name()}, {time.strftime('%Y-%m-%d')}\n"
    )
    data = load_dataset("mnist-5k")
    batch_norm_step(data, args)
    recording_overhead(data, args)


if __name__ == "__main__":
    main()
