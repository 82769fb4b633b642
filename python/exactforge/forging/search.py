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
from ..report.progress import progress_bar

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


def _fixed_point(G: np.ndarray, b: int) -> Tuple[np.ndarray, int]:
    """One global power-of-two scale so that b summed entries stay below 2^60."""
    mx = float(np.max(np.abs(G))) if G.size else 0.0
    if mx == 0.0:
        return np.zeros(G.shape, np.int64), 0
    s = int(math.floor(60 - math.log2(b) - math.log2(mx))) - 1
    return np.rint(np.ldexp(G, s)).astype(np.int64), s


def _keys(Gi: np.ndarray, seed: int) -> np.ndarray:
    r = np.random.default_rng([seed, 0x5EA7C4]).integers(0, 2**63, Gi.shape[1], dtype=np.uint64) * np.uint64(
        2
    ) + np.uint64(1)
    with np.errstate(over="ignore"):
        return (Gi.astype(np.uint64) * r[None, :]).sum(axis=1, dtype=np.uint64)


def _check_cell(model: str, b: Any) -> None:
    if model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= 6:
        raise ValueError(f"b: expected a batch size of 1..6, got {b!r}")


# A brute-force search visits C(N, b) batches per call; above this it is refused unless the
# caller raises max_batches (about 1e11 visits is a few minutes on 2 cores).
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

    if method not in ("mitm", "brute"):
        raise ValueError(f"method: expected 'mitm' or 'brute', got {method!r}")
    _check_cell(model if gradients is None else MODELS[0], b)
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance: expected a finite number >= 0, got {tolerance!r}")
    if not (isinstance(max_memory_mib, (int, float)) and math.isfinite(max_memory_mib) and max_memory_mib > 0):
        raise ValueError(f"max_memory_mib: expected a finite positive number of MiB, got {max_memory_mib!r}")
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
    if tolerance > 0:
        found_sets, visited, mib, t_native = _tolerance_search(G, truths, b, tolerance, seed, progress)
        mode = "tolerance"
    elif eg is not None:
        from .certify import projection_keys

        keys, ktol, shift = projection_keys(eg.G, b, seed)
        found_sets, visited, mib, t_native = _native_search(
            eg.G, keys.view(np.uint64), truths, b, method, threads, max_memory_mib, progress, ktol, b, shift
        )
        mode = "certified"
    else:
        assert G is not None  # without exact gradients, the float64 ones
        Gi, _ = _fixed_point(G, b)
        found_sets, visited, mib, t_native = _native_search(
            Gi, _keys(Gi, seed), truths, b, method, threads, max_memory_mib, progress
        )
        mode = "custom-exact"
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
    _tally(res, found_sets, truths, eg, G)
    return res


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


def _tally(res: SearchResult, found_sets: Any, truths: List[List[int]], eg: Any, G: Optional[np.ndarray]) -> None:
    """Certifies each candidate against its true batch and counts it into ``res``: a forgery by
    its certificate, a trivial one (zero-influence examples swapped), or a false candidate."""
    from .certify import certify

    with_forgery, nontrivial = set(), set()
    for t, cand in found_sets:
        truth = truths[t]
        if list(cand) == truth:
            continue
        if eg is not None:
            level = certify(eg, truth, cand)
        else:  # no structure to certify with: equal multisets of per-example gradients, or not
            assert G is not None
            same = sorted(map(tuple, G[truth].tolist())) == sorted(map(tuple, G[list(cand)].tolist()))
            level = "trivial" if same else "numerical"
        if level == "differs":
            res.false_candidates += 1
            continue
        with_forgery.add(t)
        if level != "trivial":
            nontrivial.add(t)
        res.certificates[level] = res.certificates.get(level, 0) + 1
        if sum(p["level"] == level for p in res.pairs) < 10:  # up to 10 examples of each certificate
            res.pairs.append({"true": [int(i) for i in truth], "forgery": [int(i) for i in cand], "level": level})
        if level == "trivial":
            res.structural += 1
            if len(res.structural_examples) < 10:
                res.structural_examples.append([int(i) for i in cand])
        else:
            res.found += 1
            if len(res.forgeries) < 10:
                res.forgeries.append([int(i) for i in cand])
    res.batches_with_forgery = len(with_forgery)
    res.batches_with_nontrivial_forgery = len(nontrivial)


@functools.lru_cache(maxsize=4)
def _exact_gradients_cached(model: str, d: int, n: int, v: int, bias: bool, seed: int, levels: str = "grid"):
    """The 200-bit gradients of a cell's domain, shared by the cells of a row of the table (the
    same model, bias, v, levels and seed; every b <= 6 fits the fixed-point width)."""
    from .certify import exact_gradients, key_bits_for

    dom = Domain(d, n, v, levels)
    spec, params = model_for(model, dom, bias, seed)
    imgs = dom.images()
    image_of = np.repeat(np.arange(len(imgs)), n)
    labels = np.tile(np.arange(n), len(imgs))
    return exact_gradients(
        spec, params, imgs, image_of, labels, dom.denominator, key_bits=key_bits_for(spec.num_params, 6)
    )


def _native_search(Gi, keys, truths, b, method, threads, max_memory_mib, progress, key_tol=0, coord_tol=0, shift=0):
    """The native brute-force or meet-in-the-middle search over integer gradients ``Gi`` with
    64-bit keys (exact mode), or integer projection keys within ``key_tol`` (tolerance mode)."""
    targets = np.stack([Gi[t].sum(axis=0) for t in truths])
    with np.errstate(over="ignore"):
        tkeys = np.array([keys[t].sum(dtype=np.uint64) for t in truths], dtype=np.uint64)
    N = len(Gi)
    h1 = b if method == "brute" else b - b // 2
    total = int(_core.choose(N, h1))
    # progress granularity: one block per ~5M probes (a block is a Python call and a parallel region)
    nblocks = int(max(1, min(N, 200, total // 5_000_000)))
    if nblocks > 1:  # blocks of first indices with about equal work: C(N - a - 1, h1 - 1) start at a
        work = np.array([_core.choose(N - a - 1, h1 - 1) for a in range(N)], dtype=np.float64)
        cum = np.cumsum(work)
        bounds = np.unique(
            np.searchsorted(cum, np.linspace(0, cum[-1], nblocks + 1)[1:], side="left").clip(0, N - 1) + 1
        )
    else:
        bounds = np.array([N])
    bar = progress_bar(total, progress, f"{method} b={b}", "probe", unit_scale=True)
    found, visited = [], 0
    t_native = time.perf_counter()
    handle = _core.SearchHandle(
        Gi,
        keys,
        targets,
        tkeys,
        b,
        method,
        int(max_memory_mib * 2**20),
        key_tol=int(key_tol),
        coord_tol=int(coord_tol),
        shift=int(shift),
    )
    a0 = 0
    for a1 in bounds:
        a1 = int(min(a1, N))
        if a1 <= a0:
            continue
        out, vis = handle.run(a0, a1, int(threads or 0))
        found.extend(out)
        visited += vis
        if bar is not None:
            bar.update(vis)
        a0 = a1
    if a0 < N:
        out, vis = handle.run(a0, N, int(threads or 0))
        found.extend(out)
        visited += vis
    t_native = time.perf_counter() - t_native
    if bar is not None:
        bar.close()
    return found, visited, handle.table_bytes / 2**20, t_native


def _tolerance_search(G, truths, b, tau, seed, progress):
    """||sum(G[B']) - sum(G[B])|| <= tau: a random unit direction r gives |r . delta| <= tau for
    every candidate, so table keys are sorted (1-D buckets of width tau) and each probe looks at
    the keys within tau of its need; candidates are confirmed on the full vectors."""
    N = len(G)
    r = np.random.default_rng([seed, 7]).standard_normal(G.shape[1])
    r /= np.linalg.norm(r)
    key = G @ r
    h2 = b // 2
    h1 = b - h2
    subs2 = np.array(list(itertools.combinations(range(N), h2)), dtype=np.int64).reshape(-1, h2)
    k2 = key[subs2].sum(axis=1) if h2 else np.zeros(1)
    if h2 == 0:
        subs2 = np.zeros((1, 0), np.int64)
    order = np.argsort(k2, kind="stable")
    k2s, subs2 = k2[order], subs2[order]
    targets = [G[t].sum(axis=0) for t in truths]
    tk = [float(T @ r) for T in targets]
    found, visited = [], 0
    bar = progress_bar(int(_core.choose(N, h1)), progress, f"tolerance b={b}", "probe", unit_scale=True)
    for chunk in _chunks(itertools.combinations(range(N), h1), 100_000):
        P = np.array(chunk, dtype=np.int64)
        kp = key[P].sum(axis=1)
        visited += len(P)
        for t, (T, tkey) in enumerate(zip(targets, tk)):
            lo = np.searchsorted(k2s, tkey - kp - tau, side="left")
            hi = np.searchsorted(k2s, tkey - kp + tau, side="right")
            for i in np.flatnonzero(hi > lo):
                for j in range(lo[i], hi[i]):
                    s2 = subs2[j]
                    if h2 and s2[0] <= P[i, -1]:
                        continue
                    cand = np.concatenate([P[i], s2])
                    if np.linalg.norm(G[cand].sum(axis=0) - T) <= tau:
                        found.append((t, tuple(int(c) for c in cand)))
        if bar is not None:
            bar.update(len(P))
    if bar is not None:
        bar.close()
    return found, visited, (k2s.nbytes + subs2.nbytes) / 2**20, None


def _chunks(it, size):
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


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
# back for the 200-bit check (different image classes). 6.8e9 batches (v = 3, b = 5) take
# minutes; the bound is on the count, the memory is bounded by max_memory_mib.
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
    found, rows, zeros = _all_pairs(eg, b, seed, max_memory_mib, threads)
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
    _count_all(res, found, eg, rows, zeros, b)
    res.seconds = res.search_seconds = time.perf_counter() - t0
    return res


def _all_pairs(eg: Any, b: int, seed: int, max_memory_mib: float, threads: Optional[int]) -> Tuple[dict, Any, Any]:
    """Every pair of batches with equal keys, from the native enumeration (src/search/collide.cpp):
    (what it found, the examples that move the gradient in key order, the zero-influence ones)."""
    from .certify import label_residues, projection_keys

    zeros = np.flatnonzero(eg.zero)
    rows = np.flatnonzero(~eg.zero)
    keys, tol, _ = projection_keys(eg.G[rows], b, seed)
    order = np.argsort(keys, kind="stable")
    rows = rows[order]
    if _core.pack_bits(len(rows), b) < 0:
        raise ValueError(f"--all: {len(rows)} examples are too many to enumerate every batch")
    keys2, tol2, _ = projection_keys(eg.G[rows], b, seed + 1)
    lab, moduli = label_residues(eg, rows.tolist(), b)
    found = _core.all_pairs(
        keys[order],
        eg.G[rows],
        eg.image[rows].astype(np.int32),
        lab,
        moduli,
        b,
        len(zeros),
        tol,
        b,
        int(max_memory_mib * 2**20),
        1_000_000,
        int(threads or 0),
        keys2=keys2,
        key2_tol=tol2,
    )
    return found, rows, zeros


def _count_all(res: SearchResult, found: dict, eg: Any, rows: Any, zeros: Any, b: int) -> None:
    """Counts ``found`` into ``res``: batches with a forgery, trivial ones, certified pairs per
    level, and up to 10 examples of each."""
    from .certify import certify

    z = len(zeros)
    bits = found["bits"]
    mask = (1 << bits) - 1

    def batch(cid: int) -> List[int]:  # a representative batch of class (R, k): R and the first k zeros
        k = cid & 7
        return sorted([int(rows[(cid >> (3 + bits * i)) & mask]) for i in range(b - k)] + zeros[:k].tolist())

    weight = [math.comb(z, k) for k in range(b + 1)]
    # trivial: every class (R, k) with 0 < k < z holds C(z, k) >= 2 batches, pairwise trivial
    trivial_pool = sum(math.comb(len(rows), b - k) * weight[k] for k in range(1, min(b, z - 1) + 1))
    trivial_pairs = sum(math.comb(len(rows), b - k) * math.comb(weight[k], 2) for k in range(0, min(b, z) + 1))
    members = found["exact_members"]
    numerical_members: set = set()
    num_pairs = 0
    for a_, b_ in found["numerical"]:
        level = certify(eg, batch(a_), batch(b_))
        if level == "differs":
            res.false_candidates += 1
            continue
        if level != "numerical":
            raise RuntimeError(f"all_pairs: a pair of different image classes certified {level!r}")
        num_pairs += weight[a_ & 7] * weight[b_ & 7]
        numerical_members.update((int(a_), int(b_)))
        if sum(p["level"] == "numerical" for p in res.pairs) < 10:
            res.pairs.append({"true": batch(a_), "forgery": batch(b_), "level": "numerical"})
    extra = np.array(sorted(numerical_members), np.uint64)
    if len(extra):
        extra = extra[~np.isin(extra, members)]
    # classes (R, k) with a non-trivial partner, counted per k; each stands for C(z, k) batches
    per_k = np.bincount(
        np.concatenate([members & np.uint64(7), extra & np.uint64(7)]).astype(np.int64), minlength=b + 1
    )
    nontrivial_batches = sum(int(c) * weight[k] for k, c in enumerate(per_k))
    nontrivial_mid = sum(int(c) * weight[k] for k, c in enumerate(per_k) if 0 < k < z)
    res.batches_with_forgery = trivial_pool + nontrivial_batches - nontrivial_mid
    res.structural = trivial_pool - nontrivial_mid
    res.batches_with_nontrivial_forgery = nontrivial_batches
    res.found = nontrivial_batches
    if found["exact_pairs_saturated"]:
        raise RuntimeError("all_pairs: the exact pair count overflowed 64 bits")
    for level, cnt in (("trivial", trivial_pairs), ("exact", int(found["exact_pairs"])), ("numerical", num_pairs)):
        if cnt:
            res.certificates[level] = cnt
    for a_, b_ in found["exact_examples"]:
        res.pairs.append({"true": batch(a_), "forgery": batch(b_), "level": "exact"})
    for k in range(1, min(b, z - 1) + 1):  # trivial examples: R with the first k zeros, then with the next ones
        if sum(p["level"] == "trivial" for p in res.pairs) >= 10 or len(rows) < b - k:
            break
        R = sorted(int(r) for r in rows[: b - k])
        res.pairs.append(
            {
                "true": sorted(R + zeros[:k].tolist()),
                "forgery": sorted(R + zeros[1 : k + 1].tolist()),
                "level": "trivial",
            }
        )


def cell_cost(v: int, b: int, d: int, n: int, true_batches: int, all_cells: bool) -> float:
    """A rough cost of a Table 4 cell, for a progress estimate: a complete count enumerates
    every batch; meet in the middle builds a table of half-batches and probes it once per
    true batch."""
    from math import comb

    n_ex = v**d * n
    if all_cells and comb(n_ex, b) <= MAX_ALL_BATCHES:
        return float(comb(n_ex, b))
    return float(comb(n_ex, (b + 1) // 2) + true_batches * comb(n_ex, b // 2))
