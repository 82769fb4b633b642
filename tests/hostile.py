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


def rechain(d: str, manifest_edit: Optional[Callable[[Dict[str, Any]], None]] = None,
            record_edit: Optional[Callable[[int, Dict[str, Any]], None]] = None) -> None:
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
