"""Hostile traces against `exactforge verify`: every named case and a number of
fuzz mutations (tests/hostile.py), each verified in a fresh process with a time limit, its exit
code, stderr, wall time and peak resident memory recorded (os.wait4).

    python benchmarks/bench_hostile.py [--fuzz 300] [--json benchmarks/out/hostile.json]

Extra memory is the case's peak RSS minus the honest trace's, in units of the model's checkpoint
size (the model is an FCN 64-1024-1024-10, 4.5 MB a checkpoint, so that the bound is visible above
the interpreter's own noise). Outcomes: exit 2 (invalid, with a message), exit 1 (recomputed and
rejected), exit 0 (accepted); a traceback, a signal or a time-out is a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import numpy as np  # noqa: E402

from exactforge.data import load_digits  # noqa: E402
from exactforge.models import native as M  # noqa: E402
from exactforge.report import jsonio  # noqa: E402
from exactforge.trace import Trace, encode_checkpoint, record_hash  # noqa: E402
from exactforge.trace.record import record_native  # noqa: E402

from _common import cpu_name  # noqa: E402
from hostile import KINDS, REFORMATTED, allowed, copy, dump, load, mutate, nan_checkpoint, rechain, rewrite  # noqa: E402

TIMEOUT = 60
SPEC = M.ModelSpec("fcn", 64, 10, (1024, 1024))


# The CLI runs in a fresh interpreter that reports its own high-water mark (VmHWM, reset by
# exec, unlike ru_maxrss, which a forked child inherits from this process) when it exits.
_LAUNCH = (
    "import atexit, sys\n"
    "def _hwm():\n"
    "    with open('/proc/self/status') as f:\n"
    "        kb = [l.split()[1] for l in f if l.startswith('VmHWM')][0]\n"
    "    with open(sys.argv[1], 'w') as f:\n"
    "        f.write(kb)\n"
    "atexit.register(_hwm)\n"
    "from exactforge.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def run_measured(d: str, *extra: str) -> dict:
    """`exactforge verify d` in a fresh process: exit code, seconds, peak RSS (bytes), stderr."""
    import subprocess

    hwm = tempfile.mktemp()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, hwm, "verify", d, "--quiet", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        rc = "timeout"
    secs = time.perf_counter() - t0
    try:
        with open(hwm) as f:
            peak = int(f.read()) * 1024
        os.unlink(hwm)
    except (OSError, ValueError):
        peak = 0  # killed before exiting normally
    return {"rc": rc, "seconds": secs, "peak_rss": peak, "stderr": err.decode(errors="replace")}


# -- the named cases: each edits a copy of the honest trace ----------------------
def _replace(d, rel, make):
    p = os.path.join(d, rel)
    os.unlink(p)
    make(p)


def _foreign_theta0(d, work):
    other = os.path.join(work, "other")
    if not os.path.exists(other):
        record_native(other, SPEC, load_digits(), steps=1, batch_size=64, seed=7)
    with open(os.path.join(d, "checkpoints", "00000000.safetensors"), "wb") as f:
        f.write(encode_checkpoint(Trace.open(other).load_checkpoint(1), 0))
    rechain(d)


def _appended(d):
    recs = sorted(os.listdir(os.path.join(d, "records")))
    last = load(os.path.join(d, "records", recs[-1]))
    extra = dict(last, step=last["step"] + 1, prev=last["hash"], checkpoint=None)
    extra.pop("final", None)
    extra["hash"] = record_hash(extra)
    dump(os.path.join(d, "records", f"{extra['step']:08d}.json"), extra)


def _raw_manifest(d, old, new):
    p = os.path.join(d, "manifest.json")
    raw = open(p, "rb").read()
    open(p, "wb").write(raw.replace(old, new, 1))


def _scaled_last(d):
    tr = Trace.open(d)
    s = tr.checkpoint_steps[-1]
    ck = tr.load_checkpoint(s)
    with open(os.path.join(d, "checkpoints", f"{s:08d}.safetensors"), "wb") as f:
        f.write(encode_checkpoint({k: (1.5 * v).astype(v.dtype) for k, v in ck.items()}, s))
    rechain(d)


def _shape(d):
    tr = Trace.open(d)
    ck = dict(tr.load_checkpoint(2))
    ck["W1"] = np.zeros((64, 1025), np.float32)
    with open(os.path.join(d, "checkpoints", "00000002.safetensors"), "wb") as f:
        f.write(encode_checkpoint(ck, 2))
    rechain(d)


def _extra_tensor(d):
    tr = Trace.open(d)
    ck = dict(tr.load_checkpoint(2))
    ck["extra"] = np.zeros(10**6, np.float32)
    with open(os.path.join(d, "checkpoints", "00000002.safetensors"), "wb") as f:
        f.write(encode_checkpoint(ck, 2))
    rechain(d)


def _unsampled(d):
    """A checkpoint that --policy random --fraction 0.125 (seed 0) does not recompute."""
    from exactforge.verify import select_segments

    tr = Trace.open(d)
    read = {0} | {s for seg in select_segments(tr, "random", fraction=0.125, seed=0) for s in seg}
    return f"checkpoints/{[s for s in tr.checkpoint_steps if s not in read][-1]:08d}.safetensors"


def _hard_link_secret(d, work):
    secret = os.path.join(work, "secret.json")
    with open(secret, "w") as f:
        json.dump({"schema": "TOPSECRET-canary"}, f)
    os.unlink(os.path.join(d, "manifest.json"))
    os.link(secret, os.path.join(d, "manifest.json"))


def _sparse_model(d):
    """A manifest declaring a 257 MiB model (FCN 64-1024-65536-10, hashes rebuilt) whose theta_0
    is a sparse file of that size: 16 KiB on disk, zeros when read."""

    def edit(m):
        m["model"]["hidden"] = [1024, 65536]
        m["tensors"] = [[n, "F32", s] for n, s in M.ModelSpec("fcn", 64, 10, (1024, 65536)).shapes().items()]

    p = os.path.join(d, "checkpoints", "00000000.safetensors")
    with open(p, "wb") as f:
        f.truncate(257 << 20)
    rechain(d, manifest_edit=edit)


def named_cases(work):
    lr = b'"lr":0.01'
    return {
        "FIFO in place of a record": (lambda d: _replace(d, "records/00000003.json", os.mkfifo), []),
        "checkpoint symlinked to /dev/zero": (
            lambda d: _replace(d, "checkpoints/00000004.safetensors", lambda p: os.symlink("/dev/zero", p)),
            [],
        ),
        "records/ symlinked elsewhere": (
            lambda d: (
                shutil.move(os.path.join(d, "records"), d + "-rec"),
                os.symlink(d + "-rec", os.path.join(d, "records")),
            ),
            [],
        ),
        "33 MB record of batch indices": (
            lambda d: rechain(d, record_edit=lambda i, r: r.update(batch=list(range(1797)) * 2000) if i == 2 else None),
            [],
        ),
        "checkpoint padded with 64 MB": (
            lambda d: (
                open(os.path.join(d, "checkpoints", "00000002.safetensors"), "ab").write(b"\0" * (64 << 20)),
                rechain(d),
            ),
            [],
        ),
        "declared model of 4 TB": (
            lambda d: rechain(d, manifest_edit=lambda m: m["tensors"][0].__setitem__(2, [1 << 20, 1 << 20])),
            [],
        ),
        "sparse theta_0 declaring a 257 MiB model": (_sparse_model, []),
        "sparse theta_0 declaring a 257 MiB model, --max-model-mb 64": (_sparse_model, ["--max-model-mb", "64"]),
        "manifest data.path = /etc/passwd (mnist)": (
            lambda d: rechain(d, manifest_edit=lambda m: m["data"].update(name="mnist", path="/etc/passwd")),
            [],
        ),
        "initial_checkpoint.file = ../../etc/passwd": (
            lambda d: rechain(d, manifest_edit=lambda m: m["initial_checkpoint"].update(file="../../etc/passwd")),
            [],
        ),
        "last records and checkpoints deleted": (
            lambda d: [
                os.unlink(os.path.join(d, "records", n)) for n in sorted(os.listdir(os.path.join(d, "records")))[-3:]
            ],
            [],
        ),
        "records/ deleted": (lambda d: shutil.rmtree(os.path.join(d, "records")), []),
        "a step appended after the final one": (_appended, []),
        "theta_0 from another run (claimed seeded)": (lambda d: _foreign_theta0(d, work), []),
        "--threads 100000": (lambda d: None, ["--threads", "100000"]),
        "Infinity in the manifest": (lambda d: _raw_manifest(d, lr, b'"lr":Infinity'), []),
        "1e400 in the manifest": (lambda d: _raw_manifest(d, lr, b'"lr":1e400'), []),
        "100k-deep JSON record": (
            lambda d: open(os.path.join(d, "records", "00000001.json"), "wb").write(b"[" * 100_000 + b"]" * 100_000),
            [],
        ),
        "2k-deep JSON record (within the size limit)": (
            lambda d: open(os.path.join(d, "records", "00000001.json"), "wb").write(b"[" * 2000 + b"]" * 2000),
            [],
        ),
        "manifest field missing": (lambda d: rechain(d, manifest_edit=lambda m: m.pop("checkpoint_every")), []),
        "manifest field of the wrong type": (lambda d: rechain(d, manifest_edit=lambda m: m.update(steps="20")), []),
        "checkpoint tensor of the wrong shape": (_shape, []),
        "extra tensor in a checkpoint": (_extra_tensor, []),
        "NaN in a record": (
            lambda d: open(os.path.join(d, "records", "00000001.json"), "wb").write(
                open(os.path.join(d, "records", "00000001.json"), "rb")
                .read()
                .replace(b'"batch":[', b'"batch":[NaN,', 1)
            ),
            [],
        ),
        **{
            name: (lambda d, k=key: rewrite(os.path.join(d, "records", "00000003.json"), REFORMATTED[k]), [])
            for name, key in (
                ("record pretty-printed", "pretty-printed"),
                ("record keys reordered", "keys reordered"),
                ("record key escaped (\\u0062atch)", "escaped key"),
                ("record with whitespace added", "whitespace added"),
                ("duplicate key: another batch first", "duplicate batch"),
                ("duplicate key: step", "duplicate step"),
                ("duplicate key: final", "duplicate final"),
                ("duplicate key: checkpoint", "duplicate checkpoint"),
            )
        },
        "duplicate manifest key": (
            lambda d: rewrite(os.path.join(d, "manifest.json"), lambda r: b'{"seed":1,' + r[1:]),
            [],
        ),
        "--policy random: unsampled checkpoint a FIFO": (
            lambda d: _replace(d, _unsampled(d), os.mkfifo),
            ["--policy", "random", "--fraction", "0.125"],
        ),
        "--policy random: unsampled checkpoint -> /dev/zero": (
            lambda d: _replace(d, _unsampled(d), lambda p: os.symlink("/dev/zero", p)),
            ["--policy", "random", "--fraction", "0.125"],
        ),
        "--policy random: unsampled checkpoint emptied": (
            lambda d: open(os.path.join(d, _unsampled(d)), "wb").close(),
            ["--policy", "random", "--fraction", "0.125"],
        ),
        "--policy random: unsampled checkpoint NaN, hashes rebuilt": (
            lambda d: nan_checkpoint(d, os.path.join(d, _unsampled(d))),
            ["--policy", "random", "--fraction", "0.125"],
        ),
        "manifest hard-linked to a secret": (lambda d: _hard_link_secret(d, work), []),
        "dtype declared float64": (lambda d: rechain(d, manifest_edit=lambda m: m.update(dtype="float64")), []),
        "data.dim declared 65": (lambda d: rechain(d, manifest_edit=lambda m: m["data"].update(dim=65)), []),
        "data.num_classes declared 3": (
            lambda d: rechain(d, manifest_edit=lambda m: m["data"].update(num_classes=3)),
            [],
        ),
        "optimizer.lr other than lr": (
            lambda d: rechain(d, manifest_edit=lambda m: m["optimizer"].update(lr=0.5)),
            [],
        ),
        "lr = 1e308": (lambda d: rechain(d, manifest_edit=lambda m: m.update(lr=1e308)), []),
        "batch_size 2^20 on 1,797 examples": (
            lambda d: rechain(d, manifest_edit=lambda m: m.update(batch_size=1 << 20)),
            [],
        ),
        "unknown manifest field (hashes rebuilt)": (
            lambda d: rechain(d, manifest_edit=lambda m: m.update(note="audited")),
            [],
        ),
        "unknown data field (hashes rebuilt)": (
            lambda d: rechain(d, manifest_edit=lambda m: m["data"].update(url="https://example.org")),
            [],
        ),
        "theta_0 from seed 7, called given with seed 0": (
            lambda d: (_foreign_theta0(d, work), rechain(d, manifest_edit=lambda m: m.update(initial="given"))),
            [],
        ),
        "--ray 127.0.0.1:1 (no cluster)": (lambda d: None, ["--ray", "127.0.0.1:1", "--ray-timeout", "5"]),
        "cosine, last checkpoint scaled by 1.5": (_scaled_last, ["--distance", "cosine", "--epsilon", "1e-3"]),
        "honest, --distance cosine at epsilon 0": (lambda d: None, ["--distance", "cosine"]),
    }


def classify(r: dict) -> str:
    if r["rc"] == "timeout":
        return "TIMEOUT"
    if "Traceback" in r["stderr"]:
        return "TRACEBACK"
    if r["rc"] not in (0, 1, 2):
        return f"CRASH ({r['rc']})"
    return {0: "accepted", 1: "rejected", 2: "invalid"}[r["rc"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fuzz", type=int, default=300, help="fuzz mutations, each in its own process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=os.path.join(HERE, "out", "hostile.json"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="exactforge-hostile-")
    honest = os.path.join(work, "honest")
    record_native(honest, SPEC, load_digits(), steps=20, batch_size=64, checkpoint_every=2)
    ck_bytes = os.path.getsize(os.path.join(honest, "checkpoints", "00000000.safetensors"))
    base = run_measured(honest)
    assert base["rc"] == 0, base["stderr"]
    print(f"# hostile traces vs `exactforge verify` ({cpu_name()}, {time.strftime('%Y-%m-%d')})\n")
    print(
        f"honest trace: FCN 64-1024-1024-10, 20 steps, 11 checkpoints of {ck_bytes / 2**20:.1f} MiB; "
        f"verify: exit 0, {base['seconds']:.2f} s, peak RSS {base['peak_rss'] / 2**20:.0f} MiB\n"
    )
    results = {"named": [], "fuzz": []}
    print("| case | outcome | seconds | extra memory (checkpoints) | message |\n|---|---|---|---|---|")
    for i, (name, (edit, extra)) in enumerate(named_cases(work).items()):
        d = copy(honest, os.path.join(work, f"n{i}"))
        edit(d)
        r = run_measured(d, *extra)
        out = classify(r)
        extra_mem = (r["peak_rss"] - base["peak_rss"]) / ck_bytes
        msg = r["stderr"].strip().splitlines()[-1][:110] if r["stderr"].strip() else ""
        print(f"| {name} | {out} (exit {r['rc']}) | {r['seconds']:.2f} | {extra_mem:+.1f} | {msg} |")
        results["named"].append(
            {
                "case": name,
                "outcome": out,
                "rc": r["rc"],
                "seconds": r["seconds"],
                "peak_rss": r["peak_rss"],
                "extra_checkpoints": extra_mem,
                "message": msg,
            }
        )
        shutil.rmtree(d, ignore_errors=True)
    rng = random.Random(args.seed)
    counts: dict = {}
    worst_t, worst_m, bad = (0.0, ""), (-1e9, ""), []
    for i in range(args.fuzz):
        kind = KINDS[i % len(KINDS)]
        d = copy(honest, os.path.join(work, f"f{i}"))
        what = mutate(d, kind, random.Random(rng.getrandbits(32)), os.path.join(work, "honest", "manifest.json"))
        r = run_measured(d)
        out = classify(r)
        ok = out in ("accepted", "rejected", "invalid") and allowed(kind, what, out)
        counts[(kind, out)] = counts.get((kind, out), 0) + 1
        extra_mem = (r["peak_rss"] - base["peak_rss"]) / ck_bytes
        worst_t = max(worst_t, (r["seconds"], what))
        worst_m = max(worst_m, (extra_mem, what))
        if not ok:
            bad.append((what, out, r["stderr"][-300:]))
        results["fuzz"].append(
            {"mutation": what, "outcome": out, "ok": ok, "seconds": r["seconds"], "extra_checkpoints": extra_mem}
        )
        shutil.rmtree(d, ignore_errors=True)
    print(f"\nfuzz: {args.fuzz} mutations (each in a fresh process)\n")
    print("| mutation | invalid (exit 2) | rejected (exit 1) | accepted (exit 0) | failures |\n|---|---|---|---|---|")
    for kind in KINDS:
        c = {o: counts.get((kind, o), 0) for o in ("invalid", "rejected", "accepted")}
        fails = sum(v for (k, o), v in counts.items() if k == kind and o not in c)
        print(f"| {kind} | {c['invalid']} | {c['rejected']} | {c['accepted']} | {fails} |")
    print(
        f"\nworst time {worst_t[0]:.2f} s ({worst_t[1]}); worst extra memory {worst_m[0]:+.1f} checkpoints "
        f"({worst_m[1]}); verdicts not allowed: {len(bad)}"
    )
    for b in bad[:10]:
        print("  NOT ALLOWED:", b)
    results.update(
        {
            "checkpoint_bytes": ck_bytes,
            "honest": base,
            "bad": bad,
            "machine": platform.platform(),
            "date": time.strftime("%Y-%m-%d"),
        }
    )
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    jsonio.write(args.json, results)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
