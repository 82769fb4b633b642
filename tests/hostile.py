"""A hostile prover's toolkit for the tests: edit any file of a trace and rebuild every hash
(manifest, checkpoints, records), so that what is tested is the verifier's semantics, not
only the hash chain."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from contextlib import contextmanager
from typing import Any, Callable, Dict, Optional

import numpy as np

from exactforge.trace import canonical_json, record_hash


def copy(src: str, dst: str) -> str:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def load(path: str) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def dump(path: str, obj: Any) -> None:
    with open(path, "wb") as f:
        f.write(canonical_json(obj))


def _sha(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def rechain(
    d: str,
    manifest_edit: Optional[Callable[[Dict[str, Any]], None]] = None,
    record_edit: Optional[Callable[[int, Dict[str, Any]], None]] = None,
) -> None:
    """Applies the edits, then recomputes every hash the way an honest writer would: a trace
    whose hashes are all consistent, whatever its content."""
    mpath = os.path.join(d, "manifest.json")
    man = load(mpath)
    if manifest_edit:
        manifest_edit(man)
    ini = man.get("initial_checkpoint")
    if isinstance(ini, dict) and isinstance(ini.get("file"), str):
        h = _sha(os.path.join(d, ini["file"]))
        if h:
            ini["sha256"] = h
    dump(mpath, man)
    with open(mpath, "rb") as f:
        prev = hashlib.sha256(f.read()).hexdigest()
    i = 0
    while os.path.exists(os.path.join(d, "records", f"{i:08d}.json")):
        rp = os.path.join(d, "records", f"{i:08d}.json")
        rec = load(rp)
        if record_edit:
            record_edit(i, rec)
        rec["prev"] = prev
        ck = rec.get("checkpoint")
        if isinstance(ck, dict) and isinstance(ck.get("file"), str):
            h = _sha(os.path.join(d, ck["file"]))
            if h:
                ck["sha256"] = h
        rec["hash"] = record_hash(rec)
        dump(rp, rec)
        prev = rec["hash"]
        i += 1


def rewrite(path: str, edit: Callable[[bytes], bytes]) -> None:
    """Replaces a file's bytes by ``edit(bytes)``."""
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(edit(raw))


# The same record in another form, or with a key repeated: each is another file, never the same
# history (the chain binds the canonical bytes, and a repeated key is refused at any depth).
REFORMATTED: Dict[str, Callable[[bytes], bytes]] = {
    "pretty-printed": lambda raw: json.dumps(json.loads(raw), indent=2, sort_keys=True).encode(),
    "keys reordered": lambda raw: json.dumps(
        dict(reversed(list(json.loads(raw).items()))), separators=(",", ":")
    ).encode(),
    "escaped key": lambda raw: raw.replace(b'"batch"', b'"\\u0062atch"'),
    "whitespace added": lambda raw: raw + b"\n",
    "space after a comma": lambda raw: raw.replace(b",", b", ", 1),
    "duplicate batch": lambda raw: b'{"batch":[0,1,2],' + raw[1:],
    "duplicate step": lambda raw: b'{"step":4,' + raw[1:],
    "duplicate final": lambda raw: b'{"final":false,' + raw[1:],
    "duplicate checkpoint": lambda raw: b'{"checkpoint":null,' + raw[1:],
    "duplicate key inside": lambda raw: raw.replace(b'"checkpoint":{', b'"checkpoint":{"step":99,', 1),
}


def nan_checkpoint(d: str, path: str) -> None:
    """Puts a NaN into the checkpoint at ``path`` and rebuilds every hash: only the check of the
    weights' values can refuse it."""
    from exactforge.trace import Trace, encode_checkpoint
    from exactforge.trace.safeio import decode_safetensors

    with open(path, "rb") as f:
        data = bytearray(f.read())
    tensors = decode_safetensors(data, Trace.open(d).manifest.tensors, "checkpoint")
    bad = {k: np.array(v) for k, v in tensors.items()}
    bad[next(iter(bad))].flat[0] = np.nan
    with open(path, "wb") as f:
        f.write(encode_checkpoint(bad, 0))
    rechain(d)


def move_weight(d: str, step: int) -> None:
    """Moves one weight of checkpoint ``step`` by 1e-3 and rebuilds every hash: a valid trace
    whose segment ending there is farther than epsilon 0 from its recomputation."""
    from exactforge.trace import Trace, encode_checkpoint

    tensors = {k: np.array(v) for k, v in Trace.open(d).load_checkpoint(step).items()}
    first = next(k for k, v in tensors.items() if v.dtype.kind == "f")
    tensors[first].flat[0] += np.asarray(1e-3, dtype=tensors[first].dtype)
    with open(os.path.join(d, "checkpoints", f"{step:08d}.safetensors"), "wb") as f:
        f.write(encode_checkpoint(tensors, step))
    rechain(d)


@contextmanager
def deadline(seconds: int):
    """Fails (TimeoutError) instead of hanging when the block runs longer than ``seconds``."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- mutations for the fuzz suite and benchmarks/bench_hostile.py ----------------------------
import random  # noqa: E402
import struct  # noqa: E402

KINDS = ("bytes", "json", "header", "filetype", "truncate", "reorder", "keys", "whitespace")

# Manifest fields whose change need not change a verdict (provenance, not semantics).
NON_SEMANTIC = (
    "environment",
    "created",
    "data.path",
    "data.synthetic",
)


def _files(d: str):
    out = ["manifest.json"]
    for sub in ("records", "checkpoints"):
        out += sorted(f"{sub}/{n}" for n in os.listdir(os.path.join(d, sub)) if not n.startswith("."))
    return out


def _random_json(rng: random.Random, depth: int = 0):
    choices = [
        lambda: None,
        lambda: True,
        lambda: False,
        lambda: 0,
        lambda: -1,
        lambda: rng.randrange(-(10**6), 10**6),
        lambda: 10**30,
        lambda: rng.random() * 10 ** rng.randrange(-40, 40),
        lambda: rng.choice(["", "x", "digits", "sgd", "../../etc/passwd", "F32", "a" * 300]),
        lambda: [rng.randrange(2000) for _ in range(rng.randrange(1, 40))],
        lambda: [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))],
        lambda: {
            rng.choice(["step", "file", "x", "shape"]): _random_json(rng, depth + 1) for _ in range(rng.randrange(3))
        },
    ]
    return choices[rng.randrange(len(choices) if depth < 3 else len(choices) - 2)]()


def _paths(obj, prefix=""):
    """Every (path, container, key) of a JSON document."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        p = f"{prefix}.{k}" if prefix else str(k)
        yield p, obj, k
        yield from _paths(v, p)


def mutate(d: str, kind: str, rng: random.Random, outside: str) -> str:
    """Applies one mutation of ``kind`` to the trace ``d``; returns what it did."""
    files = _files(d)
    if kind == "bytes":
        f = rng.choice(files)
        p = os.path.join(d, f)
        data = bytearray(open(p, "rb").read())
        op = rng.choice(["flip", "insert", "delete", "truncate", "zero"])
        pos = rng.randrange(max(1, len(data)))
        if op == "flip" and data:
            data[pos] ^= 1 << rng.randrange(8)
        elif op == "insert":
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == "delete" and data:
            del data[pos : pos + rng.randrange(1, 9)]
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos : pos + 8] = b"\0" * len(data[pos : pos + 8])
        open(p, "wb").write(bytes(data))
        return f"bytes {op} {f}@{pos}"
    if kind == "json":
        f = rng.choice([f for f in files if f.endswith(".json")])
        p = os.path.join(d, f)
        obj = load(p)
        path, box, key = rng.choice(list(_paths(obj)))
        new = _random_json(rng)
        if rng.random() < 0.2 and isinstance(box, dict):
            box.pop(key)
            new = "<removed>"
        else:
            if box[key] == new and type(box[key]) is type(new):
                path += " (no-op)"
            box[key] = new
        dump(p, obj)
        rechain(d)
        return f"json {f}:{path} = {str(new)[:40]}"
    if kind == "header":
        f = rng.choice([f for f in files if f.endswith(".safetensors")])
        p = os.path.join(d, f)
        raw = open(p, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        head = json.loads(raw[8 : 8 + n])
        path, box, key = rng.choice(list(_paths(head)))
        old, box[key] = box[key], _random_json(rng)
        if old == box[key] and type(old) is type(box[key]):
            path += " (no-op)"
        hb = json.dumps(head).encode()
        open(p, "wb").write(struct.pack("<Q", len(hb)) + hb + raw[8 + n :])
        rechain(d)
        return f"header {f}:{path}"
    if kind == "filetype":
        f = rng.choice(files)
        p = os.path.join(d, f)
        os.unlink(p)
        op = rng.choice(["delete", "fifo", "dir", "link-zero", "link-inside", "link-outside"])
        if op == "fifo":
            os.mkfifo(p)
        elif op == "dir":
            os.mkdir(p)
        elif op == "link-zero":
            os.symlink("/dev/zero", p)
        elif op == "link-inside":
            os.symlink(os.path.join(d, rng.choice([g for g in files if g != f])), p)
        elif op == "link-outside":
            os.symlink(outside, p)
        return f"filetype {op} {f}"
    if kind == "truncate":
        recs = sorted(f for f in files if f.startswith("records/"))
        k = rng.randrange(1, len(recs) + 1)
        for f in recs[-k:]:
            os.unlink(os.path.join(d, f))
        if rng.random() < 0.5:
            cks = sorted(f for f in files if f.startswith("checkpoints/"))[1:]
            for f in cks[-rng.randrange(1, len(cks) + 1) :]:
                os.unlink(os.path.join(d, f))
        return f"truncate {k} records"
    if kind == "reorder":
        sub = rng.choice(["records/", "checkpoints/"])
        group = [f for f in files if f.startswith(sub)]
        a, b = rng.sample(group, 2)
        pa, pb = os.path.join(d, a), os.path.join(d, b)
        tmp = pa + ".swap"
        os.rename(pa, tmp)
        os.rename(pb, pa)
        os.rename(tmp, pb)
        return f"reorder {a} <-> {b}"
    if kind == "keys":  # the same content in another form: a repeated key, an escape, another order
        f = rng.choice([f for f in files if f.endswith(".json")])
        p = os.path.join(d, f)
        raw = open(p, "rb").read()
        obj = json.loads(raw)
        path, box, key = rng.choice([x for x in _paths(obj) if isinstance(x[1], dict)] or [("", {"": 0}, "")])
        op = rng.choice(["duplicate", "escape", "reorder"])
        if op == "duplicate" and isinstance(box, dict) and box:
            # the repeated key first: a first-wins reader sees another value than a last-wins one
            dup = json.dumps(key) + ":" + json.dumps(_random_json(rng)) + ","
            start = raw.find(b"{" + json.dumps(key).encode() + b":") if box is obj else raw.find(b"{")
            at = max(start, 0) + 1
            data = raw[:at] + dup.encode() + raw[at:]
        elif op == "escape" and key:
            esc = "".join(f"\\u{ord(c):04x}" if i == 0 else c for i, c in enumerate(str(key)))
            data = raw.replace(json.dumps(key).encode(), ('"' + esc + '"').encode(), 1)
        else:
            data = json.dumps(dict(reversed(list(obj.items()))), separators=(",", ":")).encode()  # not sorted
        open(p, "wb").write(data)
        return f"keys {op} {f}:{path}" + (" (no-op)" if data == raw else "")
    if kind == "whitespace":
        f = rng.choice([f for f in files if f.endswith(".json")])
        p = os.path.join(d, f)
        raw = open(p, "rb").read()
        pos = rng.choice([i + 1 for i, c in enumerate(raw) if c in b",:{["] + [0, len(raw)])
        data = raw[:pos] + rng.choice([b" ", b"\n", b"\t", b"\r\n", b"  "]) + raw[pos:]
        open(p, "wb").write(data)
        return f"whitespace {f}@{pos}"
    raise ValueError(kind)


def allowed(kind: str, what: str, outcome: str) -> bool:
    """Whether a verdict is acceptable for a mutation: nothing that changes what a trace claims
    may be accepted; byte-level damage, file types, truncation and reordering are invalid."""
    if outcome == "invalid" or "(no-op)" in what:
        return True
    if kind == "header":
        return ":__metadata__" in what  # informational strings; the tensors are what is checked
    if kind == "json":
        f, path = what.split(" ", 2)[1].split(":", 1)
        if path in ("hash", "prev") or path.endswith(".sha256"):
            return True  # rechain rewrites these: the mutation was undone
        if f == "manifest.json":
            # optional declarations may be dropped: the records still say every batch, and the
            # final record still marks the end
            dropped = path in ("batch_size", "steps") and what.split(" = ", 1)[1] in ("<removed>", "None")
            # the reduction plan changes only exact-mode steps; these fuzz traces are fixed-mode,
            # where plans 1 and 2 are the same computation, so a valid other plan replays the same
            # bits and is rightly accepted (in exact mode the plans are different computations:
            # tests/test_reduction_plan.py)
            replanned = path == "reduction_plan"
            return (
                dropped
                or replanned
                or any(path == s or path.startswith(s + ".") for s in NON_SEMANTIC)
                or outcome == "rejected"
            )
        # a record: a changed batch may be rejected (recomputed and different), never accepted
        return outcome == "rejected" and path.startswith("batch")
    return False
