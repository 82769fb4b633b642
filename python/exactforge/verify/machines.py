"""Why a plain-torch trace can be rejected on another machine, said in the rejection.

torch's own kernels give different bits on different CPUs: ATen dispatches to the ISA it
finds (``torch.backends.cpu.get_cpu_capability()``, or ``ATEN_CPU_CAPABILITY``), MKL chooses
its code path by CPU vendor (unless ``MKL_CBWR`` / ``MKL_ENABLE_INSTRUCTIONS`` pin it), and
exactforge's own kernels run the ISA they picked (``EXACTFORGE_ISA``). An honest trace of
torch's arithmetic recorded on one machine is then farther than epsilon 0 from its
recomputation on another, and a bare "rejected" would read as a forgery. So where a trace is
bound to its machine's arithmetic and rejected, the verifier compares the environment the
trace declares (``manifest["environment"]``, written by exactforge.trace.writer.environment;
the prover's word, so only described, never trusted) with its own, and the reason names what
differs and what to do. A trace of a reproducible model whose arithmetic is ``portable-1``
gives the same bits on every CPU: its rejection owes nothing to the machine, and nothing is
appended.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

__all__ = ["ADVICE", "FACTS", "trace_arithmetic", "machine_bound", "compare_machines", "machine_note"]

ADVICE = (
    "record with a reproducible model (exactforge.nn.reproducible), whose portable arithmetic gives the same "
    "bits on every CPU, or verify with an epsilon above the reproduction error between two such machines "
    "(measure it by replaying, on this machine, a trace recorded on one like the prover's; --epsilon auto "
    "measures only this machine's own batch-order and thread errors)"
)

# The machine facts a torch-arithmetic trace's bits depend on, as environment() records them:
# (name in the report, path in the environment dict)
FACTS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("cpu vendor", ("cpu", "vendor")),
    ("cpu model", ("cpu", "model")),
    ("torch_cpu_capability", ("torch_cpu_capability",)),
    ("blas", ("blas",)),
    ("mkl branch", ("mkl_branch",)),
    ("emulation", ("emulation",)),
    ("exactforge isa kernels", ("exactforge", "isa", "kernels")),
)

_MISSING = object()


def trace_arithmetic(manifest: Mapping[str, Any]) -> Optional[str]:
    """How a torch trace's steps round: ``"portable-1"`` (exactforge's, the same bits on every
    CPU) or ``"torch"`` (torch's own kernels: a plain torch model, or a reproducible one recorded
    so or before the name existed); None for the native engine."""
    if manifest.get("engine") != "torch":
        return None
    return "torch" if manifest.get("reduction") is None else str(manifest.get("arithmetic", "torch"))


def machine_bound(manifest: Mapping[str, Any]) -> bool:
    """Whether the trace's bits depend on the machine: computed by torch's own kernels."""
    return trace_arithmetic(manifest) == "torch"


def _get(env: Any, path: Tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(env, Mapping) or key not in env:
            return _MISSING
        env = env[key]
    return env


def _show(value: Any) -> str:
    """A declared value, short (the trace's are the prover's: any JSON, of any length)."""
    if value is None:
        return "unknown"
    if isinstance(value, Mapping) and set(value) <= {"name", "version", "lapack"}:  # blas
        text = " ".join(str(value[k]) for k in ("name", "version") if value.get(k) is not None) or "unknown"
        if value.get("lapack") is not None and value.get("lapack") != value.get("name"):
            text += f" (LAPACK {value['lapack']})"
    else:
        text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def compare_machines(trace_env: Any, here: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The machine facts of a trace's declared environment beside this machine's
    (``here``: exactforge.trace.environment() by default). Only facts both record are
    compared; the ones the trace lacks (older traces) are listed as ``unrecorded``. The
    emulation variables are compared one by one (unset on one side counts as a difference).
    Never raises."""
    if here is None:
        from ..trace.writer import environment

        here = environment()
    differences: List[Dict[str, str]] = []
    unrecorded: List[str] = []
    for name, path in FACTS:
        theirs, ours = _get(trace_env, path), _get(here, path)
        if theirs is _MISSING:
            unrecorded.append(name)
            continue
        if ours is _MISSING:
            continue
        if name == "emulation" and isinstance(theirs, Mapping) and isinstance(ours, Mapping):
            for var in sorted(set(theirs) | set(ours), key=str)[:8]:
                a, b = theirs.get(var), ours.get(var)
                if a != b:
                    differences.append(
                        {
                            "fact": f"{_show(var)} (emulation)",
                            "trace": "unset" if a is None else _show(a),
                            "here": "unset" if b is None else _show(b),
                        }
                    )
        elif theirs != ours:
            differences.append({"fact": name, "trace": _show(theirs), "here": _show(ours)})
    return {"differences": differences, "unrecorded": unrecorded}


def machine_note(manifest: Mapping[str, Any], comparison: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """What a rejection of this trace should add about the machines, or None: for a
    machine-bound trace (machine_bound), the facts in which the recording machine (as the
    trace declares it) differs from this one, naming both values, the facts the trace does
    not record, and what to do instead (ADVICE). None for a trace whose arithmetic is
    portable, or when the machines agree on every fact."""
    if not machine_bound(manifest):
        return None
    if comparison is None:
        comparison = compare_machines(manifest.get("environment"))
    diffs, missing = comparison["differences"], comparison["unrecorded"]
    if not diffs and not missing:
        return None
    parts = []
    if diffs:
        said = "; ".join(f"{d['fact']}: {d['trace']} in the trace, {d['here']} here" for d in diffs)
        parts.append(
            f"this trace computes with torch's kernels, whose bits depend on the machine, and its machine differs from this one ({said})"
        )
    if missing:
        lead = (
            "the trace does not record"
            if diffs
            else ("this trace computes with torch's kernels, whose bits depend on the machine, and does not record")
        )
        parts.append(
            f"{lead} {', '.join(missing)}" + ("" if diffs else ", so whether its machine differs cannot be told")
        )
    return "; ".join(parts) + f". To verify across machines, {ADVICE}{_mkl_rerun(diffs, missing)}"


def _mkl_rerun(diffs: List[Dict[str, str]], missing: List[str]) -> str:
    """MKL gives every non-Intel CPU its COMPATIBLE branch, the same bits on any x86 CPU: an
    Intel verifier replays an AMD prover's MKL results exactly once it runs that branch too
    (the variable must be set before the process first calls MKL)."""
    said = any(d["fact"] == "mkl branch" and d["trace"] == "COMPATIBLE" for d in diffs)
    if not said and "mkl branch" in missing:
        from ..trace.writer import mkl_branch

        said = mkl_branch() not in (None, "COMPATIBLE")
    if not said:
        return ""
    return (
        "; or replay with the MKL branch every AMD CPU runs: start the verifier with MKL_CBWR=COMPATIBLE set "
        "(where the trace was recorded on an AMD CPU, its torch arithmetic replays exactly)"
    )
