"""Exhaustive exact-forging search on tiny domains (the main paper's Appendix C, Table 4).

Domain: d pixels with v grey levels (values q/(v-1)) and n classes with one-hot labels:
N = v^d n examples and C(N, b) batches of b distinct examples. For a seeded model and
sampled true batches, the search decides whether another batch has the same gradient.

* Equality is **exact** by default: per-example gradients (float64) become fixed-point
  integers with one global scale, so a batch gradient is an integer vector sum, exact and
  order-free (the idea of the order-independent reduction). A tolerance mode instead asks
  for ||sum' - sum|| <= tau ("equal within reproduction error").
* Methods: ``brute`` (every batch) and ``mitm`` (meet in the middle: all floor(b/2)-subsets
  in a hash table of 64-bit linear keys, probed by the ceil(b/2)-subsets; key matches are
  confirmed on the full vectors), both native and multi-threaded.
* A collision is **structural** when the two batches have the same multiset of per-example
  gradients (e.g. the all-zero image under another label, when the model has no bias): a
  relabelling of indistinguishable examples, reported apart from forgeries.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._backend.native import _core
from ..models import native as M
from .certify import exact_gradients, key_bits_for, projection_keys
from .search_count import count_every_batch, tally_sampled
from .search_native import every_pair, fixed_point, linear_keys, native_search, tolerance_search

__all__ = [
    "Domain",
    "SearchResult",
    "memory_needed",
    "MAX_BRUTE_BATCHES",
    "run_search_all",
    "MAX_ALL_BATCHES",
    "model_for",
    "per_example_gradients",
    "run_search",
    "run_table",
    "format_table",
    "TABLE_V",
    "TABLE_B",
]

TABLE_V = (2, 3, 4, 5, 6)
TABLE_B = (1, 2, 3, 4, 5)
MODELS = ("logreg", "fcn10")


LEVELS = ("grid", "paper")


@dataclass(frozen=True)
class Domain:
    """d pixels with v grey levels and n classes. ``levels="grid"``: pixel values q/(v-1);
    ``"paper"``: the papers' 8-bit levels floor(255 q/(v-1))/255 (0, 127, 255 at v = 3)."""

    d: int = 4
    n: int = 3
    v: int = 3
    levels: str = "grid"

    def __post_init__(self) -> None:
        for name, val, lo in (("d", self.d, 1), ("n", self.n, 2), ("v", self.v, 2)):
            if not isinstance(val, (int, np.integer)) or val < lo:
                raise ValueError(f"{name}: expected an integer >= {lo}, got {val!r}")
        if self.levels not in LEVELS:
            raise ValueError(f"levels: expected one of {LEVELS}, got {self.levels!r}")
        if self.levels == "paper" and self.v > 256:
            raise ValueError("levels: the papers' 8-bit levels allow v <= 256")
        if self.size > 2**31 - 1:
            raise ValueError("domain: more than 2^31 examples; choose smaller d, v or n")

    @property
    def denominator(self) -> int:
        return self.v - 1 if self.levels == "grid" else 255

    def numerators(self) -> np.ndarray:
        """The integer numerators of the grey levels (value = numerator / denominator)."""
        q = np.arange(self.v, dtype=np.int64)
        return q if self.levels == "grid" else (255 * q) // (self.v - 1)

    @property
    def size(self) -> int:
        return self.v**self.d * self.n

    def images(self) -> np.ndarray:
        """Every image as integer numerators (pixel value numerator / denominator), in product order."""
        q = np.array(list(itertools.product(range(self.v), repeat=self.d)), dtype=np.int64).reshape(-1, self.d)
        return self.numerators()[q]

    def examples(self) -> Tuple[np.ndarray, np.ndarray]:
        """All examples: images (every pixel combination) x labels, image-major."""
        imgs = self.images() / self.denominator
        X = np.repeat(imgs, self.n, axis=0)
        y = np.tile(np.arange(self.n), len(imgs))
        return X, y


def model_for(kind: str, domain: Domain, bias: bool, seed: int) -> Tuple[M.ModelSpec, M.Params]:
    if kind not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {kind!r}")
    spec = (
        M.ModelSpec("logreg", domain.d, domain.n, (), bias, "float64")
        if kind == "logreg"
        else M.ModelSpec("fcn", domain.d, domain.n, (10,), bias, "float64")
    )
    rng = np.random.default_rng(seed)
    params = M.check_params(spec, {k: rng.standard_normal(s) for k, s in spec.shapes().items()})
    return spec, params


def per_example_gradients(spec: M.ModelSpec, params: M.Params, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """N x P per-example gradients of the loss, in the spec's parameter order (float64)."""
    pe = M.per_example(spec, params, X, y)
    cols = []
    for i in range(spec.num_layers):
        a, dlt = pe.activations[i], pe.errors[i]
        cols.append((a[:, :, None] * dlt[:, None, :]).reshape(len(X), -1))
        if spec.bias:
            cols.append(dlt)
    return np.concatenate(cols, axis=1)


@dataclass
class SearchResult:
    model: str
    bias: bool
    d: int
    n: int
    v: int
    b: int
    method: str
    seed: int
    batches: int  # C(N, b): every batch of b distinct examples, searched for each true batch
    true_batches: int
    found: int  # distinct batches with an equal gradient, certified exact or numerical
    structural: int  # trivial ones: they differ only in zero-influence examples
    seconds: float  # everything after the per-example gradients: fixed point, keys, search
    visited: int = 0  # enumerated (half-)batches
    tolerance: float = 0.0
    table_mib: float = 0.0
    search_seconds: float = 0.0  # the native search alone (table build and enumeration)
    forgeries: List[List[int]] = field(default_factory=list)  # up to 10, as example indices
    structural_examples: List[List[int]] = field(default_factory=list)
    # certified mode (the default): the certificate of each distinct equal-gradient batch found
    certificates: Dict[str, int] = field(default_factory=dict)  # trivial / exact / numerical
    false_candidates: int = 0  # within the stage-1 tolerance, certified different
    batches_with_forgery: int = 0  # true batches with at least one distinct equal-gradient batch
    batches_with_nontrivial_forgery: int = 0  # ... one that is not explained by zero-influence examples
    pairs: List[Dict[str, Any]] = field(default_factory=list)  # up to 10 per level: true batch, forgery, level
    gradient_seconds: float = 0.0  # the 200-bit per-example gradients
    mode: str = "certified"  # certified | tolerance | custom-exact
    levels: str = "grid"  # grey levels: grid q/(v-1) or paper floor(255 q/(v-1))/255

    @property
    def trivial(self) -> int:
        return self.structural

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["trivial"] = self.structural
        return d


def _check_cell(model: str, b: Any) -> None:
    if model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= 6:
        raise ValueError(f"b: expected a batch size of 1..6, got {b!r}")


# A brute-force search visits C(N, b) batches per call; above this it is refused unless the
# caller raises max_batches, so an unattended call cannot run for hours by mistake.
MAX_BRUTE_BATCHES = 10**11


def memory_needed(
    model: str, domain: Domain, b: int, method: str, tolerance: float = 0.0, true_batches: int = 1
) -> int:
    """Bytes a search allocates at its peak, every allocation counted: the examples, the
    per-example gradients (float64, their outer-product temporaries, the fixed-point copy and the
    native copy), the keys, and the meet-in-the-middle table or the tolerance mode's sorted
    half-batches (Python tuples while they are built)."""
    N, d, n = domain.size, domain.d, domain.n
    P = d * n + n if model == "logreg" else d * 10 + 10 + 10 * n + n
    per_example = 8 * d * 2 + 8 * P * 5 + 8 * (d + 10 + n) * 4 + 32
    need = N * per_example
    need += true_batches * (16 * P + 64 * 8 * 256)  # targets, their copies, per-thread probe buffers
    if tolerance > 0:
        need += int(_core.choose(N, b // 2)) * (120 + 16 * (b // 2))
    elif method == "mitm":
        need += int(_core.mitm_table_bytes(N, b))
    return int(need)


def run_search(
    model: str = "logreg",
    d: int = 4,
    n: int = 3,
    v: int = 3,
    b: int = 3,
    *,
    seed: int = 0,
    bias: bool = True,
    method: str = "mitm",
    true_batches: int = 3,
    tolerance: float = 0.0,
    threads: Optional[int] = None,
    max_memory_mib: float = 4096,
    progress: bool = False,
    planted: Optional[Sequence[Sequence[int]]] = None,
    gradients: Optional[np.ndarray] = None,
    max_batches: int = MAX_BRUTE_BATCHES,
    levels: str = "grid",
) -> SearchResult:
    """Searches every batch of b distinct examples of the domain for one whose gradient equals a
    sampled true batch's. ``planted`` gives the true batches instead of sampling them;
    ``gradients`` (N x P) replaces the model's (tests plant equal-gradient pairs this way).

    Bounds, checked before anything is allocated: ``max_memory_mib`` covers every allocation
    (``memory_needed``), and ``brute`` refuses more than ``max_batches`` batches per true batch."""
    from ..reduce import check_threads

    _check_search_args(model if gradients is None else MODELS[0], b, method, tolerance, max_memory_mib)
    if planted is None and (
        isinstance(true_batches, bool) or not isinstance(true_batches, (int, np.integer)) or true_batches < 1
    ):
        raise ValueError(f"true_batches: expected a positive number of true batches, got {true_batches!r}")
    threads = check_threads(threads)
    dom = Domain(d, n, v, levels)
    n_true = len(planted) if planted is not None else int(true_batches)
    _check_bounds(
        model if gradients is None else "fcn10", dom, b, method, tolerance, n_true, max_memory_mib, max_batches
    )
    t_grad = time.perf_counter()
    eg, G = _search_gradients(model, dom, bias, seed, tolerance, gradients)
    t_grad = time.perf_counter() - t_grad
    truths = _true_batches(dom, b, v, seed, true_batches, planted)
    t0 = time.perf_counter()
    found_sets, visited, mib, t_native, mode = _dispatch(
        eg, G, truths, b, method, tolerance, seed, threads, max_memory_mib, progress
    )
    secs = time.perf_counter() - t0
    res = SearchResult(
        model if gradients is None else "custom",
        bias,
        d,
        n,
        v,
        b,
        method,
        seed,
        int(_core.choose(dom.size, b)),
        len(truths),
        0,
        0,
        secs,
        int(visited),
        tolerance,
        mib,
        search_seconds=t_native if t_native is not None else secs,
        gradient_seconds=t_grad,
        mode=mode,
        levels=levels,
    )
    tally_sampled(res, found_sets, truths, eg, G)
    return res


def _check_search_args(model: str, b: Any, method: str, tolerance: Any, max_memory_mib: Any) -> None:
    """Refuses a method, cell, tolerance or memory bound a search cannot take, naming it."""
    if method not in ("mitm", "brute"):
        raise ValueError(f"method: expected 'mitm' or 'brute', got {method!r}")
    _check_cell(model, b)
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance: expected a finite number >= 0, got {tolerance!r}")
    if not (isinstance(max_memory_mib, (int, float)) and math.isfinite(max_memory_mib) and max_memory_mib > 0):
        raise ValueError(f"max_memory_mib: expected a finite positive number of MiB, got {max_memory_mib!r}")


def _dispatch(
    eg: Any,
    G: Optional[np.ndarray],
    truths: List[List[int]],
    b: int,
    method: str,
    tolerance: float,
    seed: int,
    threads: Optional[int],
    max_memory_mib: float,
    progress: bool,
) -> Tuple[Any, int, float, Optional[float], str]:
    """The search a call asks for: (candidates, visited, table MiB, native seconds, mode). Within
    a tolerance, over the float64 gradients; otherwise exactly, over the 200-bit gradients'
    projection keys (certified) or a custom gradient matrix in fixed point."""
    if tolerance > 0:
        return (*tolerance_search(G, truths, b, tolerance, seed, progress), "tolerance")
    if eg is not None:
        keys, ktol, shift = projection_keys(eg.G, b, seed)
        found = native_search(
            eg.G, keys.view(np.uint64), truths, b, method, threads, max_memory_mib, progress, ktol, b, shift
        )
        return (*found, "certified")
    assert G is not None  # without exact gradients, the float64 ones
    Gi, _ = fixed_point(G, b)
    found = native_search(Gi, linear_keys(Gi, seed), truths, b, method, threads, max_memory_mib, progress)
    return (*found, "custom-exact")


def _check_bounds(
    model: str, dom: Domain, b: int, method: str, tolerance: float, n_true: int, max_memory_mib: float, max_batches: int
) -> None:
    """Refuses, before anything is allocated, a search above the memory bound, or a brute force
    over more batches than ``max_batches`` per true batch."""
    if b > dom.size:
        raise ValueError(f"b: the domain has only {dom.size} examples")
    need = memory_needed(model, dom, b, method, tolerance, n_true)
    if need > max_memory_mib * 2**20:
        raise ValueError(
            f"memory: this search (N = {dom.size} examples, b = {b}, {method}) needs about "
            f"{need / 2**20:.0f} MiB, above the bound of {max_memory_mib:.0f} MiB; raise --max-memory or "
            "choose a smaller cell"
        )
    total = int(_core.choose(dom.size, b))
    if method == "brute" and tolerance == 0 and total > max_batches:
        raise ValueError(
            f"max_batches: brute force would visit {total:.3g} batches per true batch, above the bound "
            f"of {max_batches:.3g}; use --method mitm, or raise --max-batches to run it anyway"
        )


def _search_gradients(
    model: str, dom: Domain, bias: bool, seed: int, tolerance: float, gradients: Optional[np.ndarray]
) -> Tuple[Any, Optional[np.ndarray]]:
    """(exact gradients for the certified search, or None; float64 gradients, or None)."""
    if gradients is None and tolerance == 0:
        # the certified search needs no float64 gradients
        return _exact_gradients_cached(model, dom.d, dom.n, dom.v, bias, seed, dom.levels), None
    if gradients is None:
        spec, params = model_for(model, dom, bias, seed)
        X, y = dom.examples()
        return None, per_example_gradients(spec, params, X, y)
    G = np.asarray(gradients, np.float64)
    if G.shape[0] != dom.size:
        raise ValueError(f"gradients: expected {dom.size} rows, got {G.shape[0]}")
    return None, G


def _true_batches(
    dom: Domain, b: int, v: int, seed: int, true_batches: int, planted: Optional[Sequence[Sequence[int]]]
) -> List[List[int]]:
    """The planted true batches, or ``true_batches`` sampled with the seed of (seed, b, v)."""
    if planted is not None:
        truths = [sorted(int(i) for i in t) for t in planted]
        if any(len(t) != b or len(set(t)) != b for t in truths):
            raise ValueError(f"planted: each true batch needs {b} distinct example indices")
        return truths
    rng = np.random.default_rng([seed, b, v])
    return [sorted(rng.choice(dom.size, b, replace=False).tolist()) for _ in range(true_batches)]


@functools.lru_cache(maxsize=4)
def _exact_gradients_cached(model: str, d: int, n: int, v: int, bias: bool, seed: int, levels: str = "grid"):
    """The 200-bit gradients of a cell's domain, shared by the cells of a row of the table (the
    same model, bias, v, levels and seed; every b <= 6 fits the fixed-point width)."""
    dom = Domain(d, n, v, levels)
    spec, params = model_for(model, dom, bias, seed)
    imgs = dom.images()
    image_of = np.repeat(np.arange(len(imgs)), n)
    labels = np.tile(np.arange(n), len(imgs))
    return exact_gradients(
        spec, params, imgs, image_of, labels, dom.denominator, key_bits=key_bits_for(spec.num_params, 6)
    )


def run_table(
    models: Sequence[str] = MODELS,
    biases: Sequence[bool] = (True, False),
    vs: Sequence[int] = TABLE_V,
    bs: Sequence[int] = TABLE_B,
    *,
    d: int = 4,
    n: int = 3,
    seed: int = 0,
    true_batches: int = 3,
    method: str = "mitm",
    threads: Optional[int] = None,
    max_memory_mib: float = 4096,
    progress: bool = False,
    max_batches: int = MAX_BRUTE_BATCHES,
    levels: str = "grid",
    all_cells: bool = False,
    on_cell: Optional[Callable[[SearchResult, int, int], None]] = None,
) -> List[SearchResult]:
    """Every cell of the grid; with ``all_cells``, cells of at most MAX_ALL_BATCHES batches take
    every batch as a true batch (complete counts) and larger ones are sampled. ``on_cell(result,
    done, total)`` is called as each cell finishes (the whole grid takes about an hour)."""
    out: List[SearchResult] = []
    total = len(models) * len(biases) * len(vs) * len(bs)
    for model in models:
        for bias in biases:
            for v in vs:
                for b in bs:
                    if all_cells and _core.choose(Domain(d, n, v).size, b) <= MAX_ALL_BATCHES:
                        out.append(
                            run_search_all(
                                model,
                                d,
                                n,
                                v,
                                b,
                                seed=seed,
                                bias=bias,
                                levels=levels,
                                threads=threads,
                                max_memory_mib=max_memory_mib,
                            )
                        )
                    else:
                        out.append(
                            run_search(
                                model,
                                d,
                                n,
                                v,
                                b,
                                seed=seed,
                                bias=bias,
                                method=method,
                                true_batches=true_batches,
                                threads=threads,
                                max_memory_mib=max_memory_mib,
                                progress=progress,
                                max_batches=max_batches,
                                levels=levels,
                            )
                        )
                    if on_cell is not None:
                        on_cell(out[-1], len(out), total)
    return out


def format_table(results: Sequence[SearchResult]) -> str:
    """Markdown: one table per (model, bias), v down, b across. A cell reads 'batches searched per
    true batch / true batches with a forgery / forgeries by certificate (x exact, y numerical, z
    trivial) / seconds'."""
    lines = []
    groups: Dict[Tuple[str, bool], List[SearchResult]] = {}
    for r in results:
        groups.setdefault((r.model, r.bias), []).append(r)
    for (model, bias), rs in groups.items():
        bs = sorted({r.b for r in rs})
        vs = sorted({r.v for r in rs})
        cell = {(r.v, r.b): r for r in rs}
        sampled = sorted({r.true_batches for r in rs if r.method != "all"})
        how = (f"{sampled[0]} sampled true batches per cell" if sampled else "") + (
            "; cells marked * take every batch as a true batch" if any(r.method == "all" for r in rs) else ""
        )
        lines.append(
            f"\n{model}, {'with' if bias else 'without'} bias ({how.lstrip('; ')}; cell: batches per true batch / true "
            "batches with a forgery / forgeries found: exact, numerical, trivial / seconds)\n"
        )
        lines.append("| v \\ b | " + " | ".join(str(b) for b in bs) + " |")
        lines.append("|---|" + "---|" * len(bs))
        for v in vs:
            row = []
            for b in bs:
                r = cell.get((v, b))  # type: ignore[assignment]
                if r is None:
                    row.append("")
                    continue
                c = r.certificates
                star = "*" if r.method == "all" else ""
                row.append(
                    f"{r.batches:.3g}{star} / {r.batches_with_forgery} / {c.get('exact', 0)}e "
                    f"{c.get('numerical', 0)}n {c.get('trivial', 0)}t / {r.seconds:.2f}s"
                )
            lines.append(f"| {v} | " + " | ".join(row) + " |")
    return "\n".join(lines)


# Every batch of a cell as a true batch (exactforge._core.all_pairs, src/collide.cpp): all pairs
# of batches whose keys lie within the tolerance are found in windows of the key axis, and each
# is decided exactly in C++ (same image classes: label-part sums compared as integers) or handed
# back for the 200-bit check (different image classes). The bound is on the count (it keeps
# the enumeration to minutes); the memory is bounded by max_memory_mib.
MAX_ALL_BATCHES = 10**10


def run_search_all(
    model: str = "logreg",
    d: int = 4,
    n: int = 3,
    v: int = 2,
    b: int = 3,
    *,
    seed: int = 0,
    bias: bool = True,
    levels: str = "grid",
    max_batches: int = MAX_ALL_BATCHES,
    threads: Optional[int] = None,
    max_memory_mib: float = 4096,
) -> SearchResult:
    """``--all``: every batch of b distinct examples is a true batch. Counts the batches that have
    at least one distinct batch with an equal gradient (``batches_with_forgery``; trivial ones
    included), those whose forgeries are all trivial (``structural``/``trivial``), and the
    certified pairs per level (``certificates``, each unordered pair of batches once).

    Zero-influence examples are counted, not enumerated: a batch is a set R of the other
    examples plus k of the z zero ones, and the C(z, k) batches sharing R are trivial forgeries
    of each other (0 < k < z)."""
    from ..reduce import check_threads

    _check_cell(model, b)
    threads = check_threads(threads)
    if not (isinstance(max_memory_mib, (int, float)) and math.isfinite(max_memory_mib) and max_memory_mib >= 1):
        raise ValueError(f"max_memory_mib: expected at least 1 MiB, got {max_memory_mib!r}")
    dom = Domain(d, n, v, levels)
    total = int(_core.choose(dom.size, b))
    if total > max_batches:
        raise ValueError(
            f"--all: the cell has {total:.3g} batches, above the bound of {max_batches:.3g} for "
            "enumerating every batch; sample true batches (--true-batches) instead"
        )
    t_grad = time.perf_counter()
    eg = _exact_gradients_cached(model, d, n, v, bias, seed, levels)
    t_grad = time.perf_counter() - t_grad
    t0 = time.perf_counter()
    found, rows, zeros = every_pair(eg, b, seed, max_memory_mib, threads)
    res = SearchResult(
        model,
        bias,
        d,
        n,
        v,
        b,
        "all",
        seed,
        total,
        total,
        0,
        0,
        0.0,
        visited=int(found["records"]),
        gradient_seconds=t_grad,
        mode="certified-all",
        levels=levels,
    )
    res.false_candidates = int(found["false_candidates"])
    count_every_batch(res, found, eg, rows, zeros, b)
    res.seconds = res.search_seconds = time.perf_counter() - t0
    return res


def cell_cost(v: int, b: int, d: int, n: int, true_batches: int, all_cells: bool) -> float:
    """A rough cost of a Table 4 cell, for a progress estimate: a complete count enumerates
    every batch; meet in the middle builds a table of half-batches and probes it once per
    true batch."""
    from math import comb

    n_ex = v**d * n
    if all_cells and comb(n_ex, b) <= MAX_ALL_BATCHES:
        return float(comb(n_ex, b))
    return float(comb(n_ex, (b + 1) // 2) + true_batches * comb(n_ex, b // 2))
