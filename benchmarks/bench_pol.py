"""Proof-of-Learning reference proofs: ResNet-20's reproducible step, importing a proof, and
the two verdicts side by side.

1. One SGD step of ResNet-20 (b = 128, 3 x 32 x 32 images on CIFAR-10's pixel grid): torch's
   against exactforge.nn's reproducible one. Checked first: float64 gradients equal autograd's
   to 1e-10 and a permuted batch gives the same float32 bits.
2. Importing a 1,000-step proof with 11 checkpoints (LeNet on MNIST-5k, written as the
   reference's train.py writes them): the time to read its files alone, and the whole import.
3. The verdicts on the imported trace and on copies with one checkpoint moved by a small
   amount: exactforge's at epsilon = 0 and the reference's (its thresholds, every segment).
4. Data-forging attacks (greedy, nearest neighbour) on a proof made as the reference's MNIST
   loop makes them (plain SGD, a checkpoint every step, inputs normalised by 0.5, 0.5): each
   forged batch written into a copy of the imported trace (hashes rebuilt), and how many of
   those traces each verifier accepts.
5. The same training recorded by exactforge (LeNet through exactforge.nn): epsilon = 0 with
   every batch shuffled and one thread.
6. Unlogged augmentation: ResNet-20 proofs on CIFAR-10's format, without augmentation and with
   the reference CIFAR loop's random crops and flips (logged nowhere, so replays can only
   approximate them): the tolerance an honest replay needs.
7. With --ray: the imported trace verified on local Ray workers gives the serial report's
   errors and reference distances, bit for bit.

    python benchmarks/bench_pol.py [--repeats 10] [--ray]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import exactforge
import exactforge.nn as xnn
from exactforge.data import Dataset, load_dataset
from exactforge.models.zoo import build_model
from exactforge.nn.augment import normalize
from exactforge.pol import (
    TrainingArgs,
    checkpoint_steps,
    import_proof,
    read_checkpoint,
    read_proof,
    write_reference_proof,
)
from exactforge.verify import verify_trace

from _common import (
    across_processes,
    cpu_name,
    grads,
    in_processes,
    interleaved,
    sgd_step,
    start,
    weight_grad_floor,
    weight_grad_macs,
)


def resnet_measure(args) -> dict:
    """One process's ResNet-20 measurement: the correctness checks, then every alternating call."""
    rng = np.random.default_rng(0)
    X = (rng.integers(0, 256, (args.batch, 3, 32, 32)) / 255.0).astype(np.float32)
    x, y = torch.from_numpy(X), torch.from_numpy(rng.integers(0, 10, args.batch))
    net = build_model("resnet20", (3, 32, 32), 10, seed=0)
    rep = xnn.reproducible(copy.deepcopy(net))

    g64 = grads(xnn.reproducible(copy.deepcopy(net).double()), xnn.cross_entropy, x.double(), y)
    t64 = grads(copy.deepcopy(net).double(), torch.nn.functional.cross_entropy, x.double(), y)
    rel64 = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g64, t64))
    state = copy.deepcopy(rep.state_dict())
    g = grads(rep, xnn.cross_entropy, x, y)
    perm = torch.randperm(args.batch, generator=torch.Generator().manual_seed(1))
    rep.load_state_dict(state)
    same = all(torch.equal(a, b) for a, b in zip(g, grads(rep, xnn.cross_entropy, x[perm], y[perm])))
    if rel64 > 1e-10 or not same:
        raise SystemExit(f"resnet20: wrong gradients (float64 rel {rel64:.2g}, permutation-invariant {same})")
    times = interleaved(
        [lambda: sgd_step(net, F.cross_entropy, x, y, 0.1), lambda: sgd_step(rep, xnn.cross_entropy, x, y, 0.1)],
        args.repeats,
    )
    return {"rel64": rel64, "torch": times[0], "reproducible": times[1], "weight_grad_macs": weight_grad_macs(net, x)}


def resnet_step(args) -> None:
    # in fresh processes: a process measures in one of two modes on a 2-vCPU machine (bench_nn.py)
    runs = in_processes(
        args.processes,
        [
            __file__,
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
            "--batch",
            str(args.batch),
            "--child-resnet",
        ],
    )
    t = across_processes(runs)
    print(
        "| model | batch | float64 rel. gradient diff | permuted batch: same bits | torch step | reproducible | "
        "ratio, median of processes (their range) | ratio pair by pair, p25-p75 | "
        "exact weight gradients at the float64 peak, x torch's step |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    floor = weight_grad_floor(args.threads, runs[0]["weight_grad_macs"], t["torch"])
    print(
        f"| ResNet-20 (269,722 parameters) | {args.batch} | {runs[0]['rel64']:.2g} | yes | "
        f"{1e3 * t['torch']:.0f} ms | {1e3 * t['reproducible']:.0f} ms | {t['ratio']} | {t['spread']} | {floor} |  "
        f"\n({args.processes} fresh processes, best of {args.repeats} in each)\n",
        flush=True,
    )


def import_timing(folder: str, data: Dataset) -> str:
    proof = os.path.join(folder, "proof")
    t0 = time.perf_counter()
    write_reference_proof(
        proof, build_model("lenet", data.shape, 10), data, steps=1000, batch_size=32, save_freq=100,
        lr=0.05, momentum=0.9, milestones=[500], normalize=[[0.5], [0.5]],
    )  # fmt: skip
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = read_proof(proof)
    for s in checkpoint_steps(p.steps, 100):
        read_checkpoint(proof, s)
    t_read = time.perf_counter() - t0
    out = os.path.join(folder, "trace")
    args = TrainingArgs(lr=0.05, momentum=0.9, save_freq=100, milestones=[500], normalize=[[0.5], [0.5]])
    t0 = time.perf_counter()
    rep = import_proof(proof, out, model="lenet", data=data, args=args)
    t_import = time.perf_counter() - t0
    print(
        "| proof | checkpoints | written by the plain loop | reading its files | whole import | import less reading |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| LeNet, {data.name}, {rep.steps} steps of {rep.batch_size} | {rep.checkpoints} | {t_train:.1f} s | "
        f"{t_read:.2f} s | {t_import:.2f} s | {t_import - t_read:.2f} s |\n",
        flush=True,
    )
    return out


def verdicts(folder: str, trace: str) -> None:
    from exactforge.trace import Trace

    print(
        "| trace | exactforge (epsilon = 0) | max l2 error | the reference (every segment) | its max l2 | agreement |"
    )
    print("|---|---|---|---|---|---|")
    last = Trace.open(trace).checkpoint_steps[len(Trace.open(trace).checkpoint_steps) // 2]
    for delta in (0.0, 1e-7, 1e-5, 1e-3):
        d = trace
        if delta:
            d = os.path.join(folder, f"moved-{delta:g}")
            shutil.copytree(trace, d)
            _move(d, last, delta)
        v = verify_trace(d)
        ref = v.reference
        name = "imported as it is" if not delta else f"checkpoint {last} moved by {delta:g} per weight"
        print(
            f"| {name} | {'ACCEPTED' if v.accepted else 'REJECTED' if v.valid else 'INVALID'} | {v.max_error:.3g} | "
            f"{'ACCEPTS' if ref['accepted'] else 'REJECTS'} | {ref['max_distance']['l2']:.3g} | {ref['agreement']} |",
            flush=True,
        )
    print()


def _move(d: str, step: int, delta: float) -> None:
    """Adds delta to every float weight of one checkpoint and rebuilds every hash, as a prover
    who moved it would: the trace is intact, its arithmetic is not."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from safetensors.numpy import load_file, save_file

    from hostile import rechain  # the tests' honest rewriter of hashes

    path = os.path.join(d, "checkpoints", f"{step:08d}.safetensors")
    t = load_file(path)
    t = {k: (v + np.asarray(delta, v.dtype)) if v.dtype.kind == "f" and not k.startswith("optimizer.") else v
         for k, v in t.items()}  # fmt: skip
    save_file(t, path, metadata={"exactforge_step": str(step)})
    rechain(d)


def attacks_side_by_side(folder: str, data: Dataset, forged_steps: int) -> None:
    from exactforge.forging.attacks import StepContext, run_attack

    proof = os.path.join(folder, "mnist-style")
    make = lambda: build_model("lenet", data.shape, 10, seed=0)  # noqa: E731
    write_reference_proof(proof, make(), data, steps=forged_steps, batch_size=32, save_freq=1, lr=0.05,
                          normalize=[[0.5], [0.5]])  # fmt: skip
    trace = os.path.join(folder, "mnist-style-trace")
    import_proof(
        proof, trace, model="lenet", data=data, args=TrainingArgs(lr=0.05, save_freq=1, normalize=[[0.5], [0.5]])
    )
    from exactforge.trace import Trace

    tr = Trace.open(trace)
    model = make()
    names = [n for n, _ in model.named_parameters()]
    X = normalize(torch.from_numpy(data.X).reshape(len(data), *data.shape), [0.5], [0.5]).numpy()  # as fed
    seen = Dataset(
        data.name + "-normalised", np.ascontiguousarray(X.reshape(len(data), -1)), data.y, 10, None, data.shape
    )
    print("| attack | forged traces (a quarter of one batch replaced) | approximation error (l2) | "
          "exactforge accepts (epsilon = 0) | the reference accepts |")  # fmt: skip
    print("|---|---|---|---|---|")
    for method in ("greedy", "nearest"):
        errs, ours, theirs = [], 0, 0
        for t in range(forged_steps):
            a, b = tr.load_checkpoint(t), tr.load_checkpoint(t + 1)
            flat = lambda c: np.concatenate([np.asarray(c[n], np.float32).ravel() for n in names])  # noqa: E731
            batch = tr.record(t).batch
            ctx = StepContext(model, seen, flat(a), flat(b), batch, 0.05)
            res = run_attack(method, ctx, batch[:8], pool=300, candidates=100, seed=t)
            errs.append(res.approx_error)
            d = os.path.join(folder, f"forged-{method}-{t}")
            shutil.copytree(trace, d)
            _forge(d, t, res.forged_indices)
            v = verify_trace(d)
            ours += int(v.accepted)
            theirs += int(v.reference["accepted"])
        print(f"| {method} | {forged_steps} | {min(errs):.3g} to {max(errs):.3g} | {ours} | {theirs} |", flush=True)
    print()


def _forge(d: str, step: int, batch: list) -> None:
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from hostile import rechain

    def edit(i, rec):
        if i == step:
            rec["batch"] = [int(v) for v in batch]

    rechain(d, record_edit=edit)


def cifar_format(n: int = 512) -> Dataset:
    """CIFAR-10's format and pixel grid (no CIFAR-10 files on this machine: random pixels)."""
    rng = np.random.default_rng(0)
    X = (rng.integers(0, 256, (n, 3 * 32 * 32)) / 255.0).astype(np.float32)
    return Dataset("cifar10-format", X, rng.integers(0, 10, n).astype(np.int64), 10, 255, (3, 32, 32))


CIFAR_NORM = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]  # the reference's CIFAR-10 normalisation


def unlogged_augmentation(folder: str, data: Dataset) -> None:
    from exactforge.verify.reference import augmentation_tolerance

    print("| proof | exactforge at epsilon = 0 | the reference | honest replays under fresh draws: l2 | "
          "epsilon needed | the reference's thresholds |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for crops in (False, True):
        proof = os.path.join(folder, f"cifar-style-{crops}")
        torch.manual_seed(0)
        write_reference_proof(proof, build_model("resnet20", data.shape, 10, seed=0), data, steps=20,
                              batch_size=32, save_freq=5, lr=0.1, momentum=0.9, weight_decay=1e-4,
                              milestones=[10], normalize=CIFAR_NORM, random_crop_flip=crops)  # fmt: skip
        trace = os.path.join(folder, f"cifar-style-trace-{crops}")
        args = TrainingArgs(lr=0.1, momentum=0.9, weight_decay=1e-4, save_freq=5, milestones=[10], normalize=CIFAR_NORM)
        import_proof(proof, trace, model="resnet20", data=data, args=args)
        _augmented_row(trace, data, crops, augmentation_tolerance)
    print()


def _augmented_row(trace: str, data: Dataset, crops: bool, tolerance) -> None:
    v = verify_trace(trace, dataset=data)
    name = "ResNet-20, CIFAR-format, " + ("random crop and flip not logged" if crops else "no augmentation")
    if not crops:
        print(
            f"| {name} | {'ACCEPTED' if v.accepted else 'REJECTED'} (max l2 {v.max_error:.3g}) | "
            f"{'ACCEPTS' if v.reference['accepted'] else 'REJECTS'} | - | 0 | - |",
            flush=True,
        )
        return
    tol = tolerance(trace, dataset=data, draws=4, segments=4)
    print(
        f"| {name} | {'ACCEPTED' if v.accepted else 'REJECTED'} "
        f"(max l2 {v.max_error:.3g}) | {'ACCEPTS' if v.reference['accepted'] else 'REJECTS'} | "
        f"{tol.l2['min']:.3g} to {tol.l2['max']:.3g} | {tol.epsilon_needed:.3g} | "
        f"{'accept' if tol.reference_accepts else 'reject'} them |",
        flush=True,
    )


def native(folder: str, data: Dataset, steps: int) -> None:
    """The same training recorded by exactforge on the reproducible path: epsilon = 0 under a
    shuffled batch order and one thread."""
    from exactforge.trace.record import record_zoo

    out = os.path.join(folder, "native")
    record_zoo(out, "lenet", data, lr=0.05, steps=steps, batch_size=32, checkpoint_every=10, mode="exact")
    v = verify_trace(out, permute_batches=1, threads=1)
    print(
        f"The same model and data recorded by exactforge (LeNet through exactforge.nn, {steps} steps): "
        f"{'ACCEPTED' if v.accepted else 'REJECTED'} at epsilon = 0 with every batch shuffled and one thread "
        f"(max l2 error {v.max_error:.3g}).\n",
        flush=True,
    )


def on_ray(trace: str) -> None:
    from exactforge.verify.ray import RayExecutor

    serial = verify_trace(trace)
    ray = verify_trace(trace, executor=RayExecutor(address="local", num_cpus=2))
    same = [a.error == b.error and a.reference == b.reference for a, b in zip(serial.steps, ray.steps)]
    print(f"Ray (local, 2 CPUs): {len(ray.steps)} segments, the serial report's errors and reference distances "
          f"in every one: {'yes' if all(same) and len(same) == len(serial.steps) else 'NO'}\n")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ray", action="store_true")
    ap.add_argument("--forged-steps", type=int, default=8, help="steps attacked per attack")
    ap.add_argument("--processes", type=int, default=3, help="fresh processes for the ResNet-20 step")
    ap.add_argument("--child-resnet", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_resnet:
        torch.set_num_threads(args.threads)
        exactforge.set_num_threads(args.threads)
        print(json.dumps(resnet_measure(args)))
        return
    start(args.threads)
    print(
        f"# Proof-of-Learning proofs; {args.threads} thread(s), best of {args.repeats}; {cpu_name()}, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    resnet_step(args)
    data = load_dataset("mnist-5k")
    with tempfile.TemporaryDirectory() as folder:
        trace = import_timing(folder, data)
        verdicts(folder, trace)
        attacks_side_by_side(folder, data, args.forged_steps)
        native(folder, data, 50)
        unlogged_augmentation(folder, cifar_format())
        if args.ray:
            on_ray(trace)


if __name__ == "__main__":
    main()
