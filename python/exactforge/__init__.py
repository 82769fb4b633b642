"""exactforge: bitwise-reproducible gradient reductions, execution traces and data-forging
analysis for Proof-of-Learning.

The native core reduces per-example contributions so that the bits of the result do not depend
on batch order, thread count or device (``exactforge.reduce``)."""

# No `from __future__ import annotations` and no typing names here: whatever this module binds
# is part of the package's namespace (dir(exactforge)), so it binds only its API.
from . import mathfn, reduce
from ._backend.native import _core, _cuda, _cuda_import_error

__version__: str = getattr(_core, "__version__", "0.0.0")

#: The most CPU threads any native kernel runs: larger requests are refused (OpenMP would end
#: the process when it cannot start them).
MAX_THREADS: int = int(_core.MAX_THREADS)

__all__ = [
    "__version__",
    "reduce",
    "mathfn",
    "compile_options",
    "set_num_threads",
    "get_num_threads",
    "MAX_THREADS",
    "cuda_is_available",
]


def set_num_threads(n: int) -> None:
    """Default number of CPU threads of the native kernels (process-wide, like
    ``torch.set_num_threads``). Results are bitwise the same for every value."""
    _core.set_num_threads(int(reduce.check_threads(n, "n", allow_none=False)))  # type: ignore[arg-type]


def get_num_threads() -> int:
    """Default number of CPU threads (the machine's hardware threads until set)."""
    return int(_core.get_num_threads())


def cuda_is_available() -> bool:
    """True when ``exactforge._cuda`` was built and a CUDA device is visible now."""
    if _cuda is None:
        return False
    return int(_cuda.device_info()["device_count"]) > 0


def compile_options() -> dict:
    """What this installation was built with: CUDA or not, OpenMP or not, the compiler and the
    flags that matter for floating point (contraction, fast-math), as a JSON-ready dict."""
    info = dict(_core.build_info())
    opts: dict = {
        "version": __version__,
        "compiler": info.get("compiler", ""),
        "cxx_flags": info.get("cxx_flags", ""),
        "openmp": bool(info.get("openmp")),
        "openmp_version": info.get("openmp") or None,
        "fp_contract": "off",
        "fast_math": info.get("fast_math") == "1",
        # the ISA the tile kernels dispatch to on this CPU (they are compiled for AVX2+FMA and
        # AVX-512 apart from the baseline flags and chosen at run time; EXACTFORGE_ISA=generic
        # or avx2 caps the level), the CPU's features, and what the rest of the core was
        # compiled for. Every level gives the same bits.
        "isa": {
            "kernels": info.get("kernels", "generic"),
            "avx2": "avx2" in info.get("kernels", ""),
            "fma": "fma" in info.get("kernels", ""),
            "avx512": "avx512" in info.get("kernels", ""),
            "cpu": {k: info.get(f"cpu_{k}") == "1" for k in ("avx2", "fma", "avx512f", "amx_int8", "avx512_vnni")},
            "baseline": {"avx2": info.get("isa_avx2") == "1", "fma": info.get("isa_fma") == "1"},
        },
        "cuda": _cuda is not None,
        "default_threads": get_num_threads(),
        # the float32 exact matmul's kernel: "int8-amx" (int8 digits on AMX tiles) or
        # "f64-slices"; both compute the same integers, so the same bits
        "exact_kernel": info.get("exact_kernel", "f64-slices"),
        "amx_built": info.get("amx_built") == "1",
        "vnni_built": info.get("vnni_built") == "1",
        "exact_sum": {"slices": int(_core.SUM_SLICES), "bits_per_slice": int(_core.SUM_WIDTH)},
    }
    if _cuda is not None:
        dev = dict(_cuda.device_info())
        opts.update(
            {
                "cuda_architectures": getattr(_cuda, "architectures", ""),
                "cuda_fmad": False,
                "cuda_runtime_version": dev["runtime_version"],
                "cuda_devices": dev["device_count"],
            }
        )
    else:
        opts["cuda_missing_reason"] = _cuda_import_error
    return opts
