"""Recovering a reference proof's unlogged augmentation from theta_0.

1. The generator's state from theta_0 of ResNet-20 (kaiming_normal_ draws, as the reference's
   train.py initialises it): for the fixture proof written by the reference's own train.py and
   for fresh unseeded processes, the equations, unknowns, rank, and the time of the whole
   recovery (Box-Muller inversion, the GF(2) solve, the checks); best of the repeats. Checked
   first: the recovered stream predicts the DataLoader's base seed the process then draws.
2. The fixture proof end to end: import-pol (recovery included) and verify, each timed once, and
   both verdicts, on the honest proof and with one weight moved by 0.001.

    python benchmarks/bench_pol_recovery.py [--repeats 3] [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exactforge.data import load_dataset  # noqa: E402
from exactforge.models.zoo import ResNet20  # noqa: E402
from exactforge.nn import StreamAugment  # noqa: E402
from exactforge.nn import mt19937 as mt  # noqa: E402
from exactforge.pol import import_proof, write_cifar10_folder  # noqa: E402
from exactforge.pol.recover import recover_stream  # noqa: E402
from exactforge.verify import verify_trace  # noqa: E402

from _common import ROOT, cpu_name  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "pol", "cifar10_resnet20")


def recovery_rows(repeats: int, seeds: int) -> None:
    print("| theta_0 | recovered | equations | unknowns | rank | predicts the base seed | seconds (best) |")
    print("|---|---|---|---|---|---|---|")
    ck = torch.load(os.path.join(FIXTURE, "proof", "model_step_0"), weights_only=True)
    cases = [("fixture: the reference's train.py", {k: v.numpy() for k, v in ck["net"].items()}, None)]
    for s in range(seeds):
        torch.seed()  # an unseeded process: a random 64-bit seed (build_model would seed it)
        net = ResNet20((3, 32, 32), 10)
        base = torch.empty((), dtype=torch.int64).random_().item()
        cases.append((f"fresh process {s + 1}", {k: v.detach().numpy() for k, v in net.state_dict().items()}, base))
    for name, state, base in cases:
        best, rec = float("inf"), None
        for _ in range(repeats):
            t0 = time.perf_counter()
            rec = recover_stream(state, list(state))
            best = min(best, time.perf_counter() - t0)
        assert rec is not None and rec.recovered, rec.reason if rec else ""
        words = mt.generate(rec.words, rec.end + mt.N)[rec.end :]
        got = StreamAugment("".join(f"{int(v):08x}" for v in words), batch_size=1).base_seed()
        predicts = "-" if base is None else ("yes" if got == base else "NO")
        print(f"| {name} | {rec.recovered} | {rec.equations} | {rec.unknowns} | {rec.rank} | {predicts} | {best:.2f} |")
    print()


def end_to_end(folder: str) -> None:
    print("| proof | import-pol s | verify s | exactforge at epsilon = 0 | max l2 | the reference (cos <= 0.01) |")
    print("|---|---|---|---|---|---|")
    write_cifar10_folder(os.path.join(folder, "data"), n=80, seed=7)
    data = load_dataset("cifar10", os.path.join(folder, "data"))
    honest = os.path.join(FIXTURE, "proof")
    moved = os.path.join(folder, "moved")
    shutil.copytree(honest, moved)
    ck = torch.load(os.path.join(moved, "model_step_2"), weights_only=True)
    ck["net"]["conv1.weight"][0, 0, 0, 0] += 1e-3
    torch.save(ck, os.path.join(moved, "model_step_2"))
    for name, proof in (("honest (the reference's train.py)", honest), ("one weight moved by 0.001", moved)):
        out = os.path.join(folder, os.path.basename(proof) + "-trace")
        t0 = time.perf_counter()
        import_proof(proof, out, model="resnet20", data=data)
        t1 = time.perf_counter()
        v = verify_trace(out, dataset=data, progress=False)
        t2 = time.perf_counter()
        print(
            f"| {name} | {t1 - t0:.1f} | {t2 - t1:.1f} | {'ACCEPTED' if v.accepted else 'REJECTED'} | "
            f"{v.max_error:.3g} | {'ACCEPTS' if v.reference['accepted'] else 'REJECTS'} |"
        )
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads\n")
    recovery_rows(a.repeats, a.seeds)
    with tempfile.TemporaryDirectory() as folder:
        end_to_end(folder)


if __name__ == "__main__":
    main()
