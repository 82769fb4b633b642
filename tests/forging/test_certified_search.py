"""The certified exact search: no false negatives on planted in-domain forgeries, and
agreement with an independent count: every batch of small domains, gradients summed with plain
300-bit formulas, equal pairs found by hashing."""

from __future__ import annotations

import itertools
import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpmath import MPContext

from exactforge.forging.search import Domain, model_for, run_search

MODELS = [("logreg", True), ("logreg", False), ("fcn10", True), ("fcn10", False)]


def independent_gradients(model, d, n, v, bias, seed, prec=300):
    """Per-example gradients by the textbook formulas at ``prec`` bits (no code shared with
    exactforge.forging.certify; relu'(0) = 0, decided on exact rationals as the models do)."""
    ctx = MPContext()
    ctx.prec = prec
    dom = Domain(d, n, v)
    spec, params = model_for(model, dom, bias, seed)
    P = {k: [[ctx.mpf(float(x)) for x in np.atleast_1d(row)] for row in np.atleast_2d(vv)] for k, vv in params.items()}
    out = []
    for q in dom.images():
        xr = [Fraction(int(t), v - 1) for t in q]
        x = [ctx.mpf(t.numerator) / t.denominator for t in xr]
        for y in range(n):

            def softmax(z):
                e = [ctx.exp(t) for t in z]
                s = ctx.fsum(e)
                return [t / s for t in e]

            if model == "logreg":
                z = [
                    ctx.fsum(P["W1"][j][k] * x[j] for j in range(d)) + (P["b1"][0][k] if bias else 0) for k in range(n)
                ]
                dz = softmax(z)
                dz[y] -= 1
                g = [x[j] * dz[k] for j in range(d) for k in range(n)] + (dz if bias else [])
            else:
                W1 = params["W1"]
                z1r = [
                    sum((Fraction(float(W1[j, k])) * xr[j] for j in range(d)), Fraction(0))
                    + (Fraction(float(params["b1"][k])) if bias else 0)
                    for k in range(10)
                ]
                m = [1 if t > 0 else 0 for t in z1r]
                h = [ctx.mpf(t.numerator) / t.denominator if t > 0 else ctx.mpf(0) for t in z1r]
                z2 = [
                    ctx.fsum(P["W2"][j][k] * h[j] for j in range(10)) + (P["b2"][0][k] if bias else 0) for k in range(n)
                ]
                d2 = softmax(z2)
                d2[y] -= 1
                d1 = [ctx.fsum(P["W2"][j][k] * d2[k] for k in range(n)) * m[j] for j in range(10)]
                g = (
                    [x[j] * d1[k] for j in range(d) for k in range(10)]
                    + (d1 if bias else [])
                    + [h[j] * d2[k] for j in range(10) for k in range(n)]
                    + (d2 if bias else [])
                )
            out.append(g)
    return out, ctx


def equal_pairs(grads, ctx, b, tol_bits=200):
    """Every pair of distinct b-batches whose gradient sums agree to 2^-tol_bits."""
    N = len(grads)
    buckets = {}
    for batch in itertools.combinations(range(N), b):
        s = [ctx.fsum(grads[i][j] for i in batch) for j in range(len(grads[0]))]
        key = tuple(int(ctx.nint(t * ctx.mpf(2) ** 100)) for t in s)  # coarse bucket, refined below
        buckets.setdefault(key, []).append((batch, s))
    pairs = set()
    for group in buckets.values():
        for (a, sa), (c, sc) in itertools.combinations(group, 2):
            if max(abs(x - y) for x, y in zip(sa, sc)) <= ctx.mpf(2) ** -tol_bits:
                pairs.add((a, c))
                pairs.add((c, a))
    return pairs


@pytest.mark.parametrize("model,bias", MODELS)
@pytest.mark.parametrize("method", ["mitm", "brute"])
def test_planted_label_permutations_are_found(model, bias, method):
    """Images u1 + u4 = u2 + u3 sharing an activation pattern, labels permuted so that every class
    keeps its sum of (x, 1): equal gradients for every weight value of the last layers."""
    dom = Domain(4, 3, 2)
    imgs = dom.images()
    for seed in range(40):  # a seed whose first layer gives four such images one activation pattern
        if _planted_case(model, bias, method, dom, imgs, seed):
            return
    pytest.fail("no parallelogram of images with a shared activation pattern for seeds 0..39")


def _planted_case(model, bias, method, dom, imgs, seed):
    spec, params = model_for(model, dom, bias, seed)

    def mask(q):
        if model == "logreg":
            return ()
        z = (q / 1.0) @ params["W1"] + (params["b1"] if bias else 0)
        return tuple(z > 0)

    for a, b_, c, e in itertools.combinations(range(len(imgs)), 4):
        for u1, u2, u3, u4 in ((a, b_, c, e), (a, b_, e, c), (a, c, e, b_)):
            if not np.array_equal(imgs[u1] + imgs[u4], imgs[u2] + imgs[u3]):
                continue
            if len({mask(imgs[u]) for u in (u1, u2, u3, u4)}) != 1:
                continue
            if not bias and 0 in (u1, u2, u3, u4):
                continue  # keep the zero image out: its examples have zero influence
            true = sorted([u1 * 3 + 0, u4 * 3 + 0, u2 * 3 + 1, u3 * 3 + 1])
            twin = sorted([u1 * 3 + 1, u4 * 3 + 1, u2 * 3 + 0, u3 * 3 + 0])
            r = run_search(model, 4, 3, 2, 4, bias=bias, method=method, planted=[true], seed=seed)
            got = {tuple(p["forgery"]): p["level"] for p in r.pairs}
            assert got.get(tuple(twin)) == "exact", (true, twin, r.pairs)
            return True
    return False


EXAMPLES = settings(max_examples=int(os.environ.get("EXACTFORGE_SEARCH_EXAMPLES", "12")), deadline=None)
SMALL_CELLS = given(
    st.sampled_from(MODELS),
    st.integers(2, 3),
    st.integers(2, 3),
    st.sampled_from([(2, 2), (2, 3), (3, 2)]),
    st.integers(0, 50),
)


def reference(mb, b, n, dv, seed):
    """(model, bias, d, v, N, equal pairs of the independent count) of a small random cell, or
    None for a cell too large to enumerate at 300 bits here."""
    model, bias = mb
    d, v = dv
    N = v**d * n
    if N > 27 or (b == 3 and N > 24):
        return None
    grads, ctx = independent_gradients(model, d, n, v, bias, seed)
    return model, bias, d, v, N, equal_pairs(grads, ctx, b)


@pytest.mark.slow
@EXAMPLES
@SMALL_CELLS
def test_search_agrees_with_an_independent_high_precision_count(mb, b, n, dv, seed):
    ref = reference(mb, b, n, dv, seed)
    if ref is None:
        return
    model, bias, d, v, N, want = ref
    every = [list(c) for c in itertools.combinations(range(N), b)]
    for method in ("mitm", "brute"):
        r = run_search(model, d, n, v, b, bias=bias, method=method, planted=every, seed=seed)
        # both orders of a pair are counted (each batch is a true batch)
        assert r.found + r.structural == len(want), (method, r.certificates, len(want))
        assert r.batches_with_forgery == len({a for a, _ in want})
        for p in r.pairs:
            assert (tuple(p["true"]), tuple(p["forgery"])) in want


def test_exact_certificates_hold_at_300_bits():
    grads, ctx = independent_gradients("logreg", 4, 3, 2, False, 3)
    r = run_search("logreg", 4, 3, 2, 3, bias=False, true_batches=400, seed=3)
    exact = [p for p in r.pairs if p["level"] == "exact"]
    assert exact, r.certificates
    for p in exact:
        for j in range(len(grads[0])):
            diff = ctx.fsum(grads[i][j] for i in p["true"]) - ctx.fsum(grads[i][j] for i in p["forgery"])
            assert abs(diff) < ctx.mpf(2) ** -280


@pytest.mark.slow
@EXAMPLES
@given(st.sampled_from(MODELS), st.integers(2, 3), st.integers(2, 3), st.integers(2, 3), st.integers(0, 1000))
def test_b1_analysis_agrees_with_the_b1_search(mb, d, n, v, seed):
    """Every b = 1 forgery the search finds is one that b1_analysis says exists."""
    from exactforge.forging.solvers import b1_analysis

    model, bias = mb
    dom = Domain(d, n, v)
    spec, params = model_for(model, dom, bias, seed)
    X, y = dom.examples()
    r = run_search(model, d, n, v, 1, bias=bias, planted=[[i] for i in range(dom.size)], seed=seed)
    has = {p["true"][0] for p in r.pairs}
    assert r.batches_with_forgery == len(has) or len(r.pairs) >= 10
    for i in range(dom.size):
        a = b1_analysis(spec, params, X[i], int(y[i]))
        if i in has:
            assert a.distinct_onehot_forgery_exists, (i, X[i], y[i], a.statement)
    # and the degenerate examples the analysis flags without a bias are found by the search
    if not bias:
        zero = [i for i in range(dom.size) if not np.any(X[i])]
        assert all(i in has for i in zero[:1])


def test_paper_grey_levels():
    """The papers' 8-bit levels at v = 3 are 0, 127, 255: 0 + 255 != 2 * 127, so the label
    permutations built on a midpoint (u1 + u4 = 2 u2) that exist on the q/2 grid do not."""
    assert Domain(4, 3, 3, "paper").numerators().tolist() == [0, 127, 255]
    assert Domain(4, 3, 5, "paper").numerators().tolist() == [0, 63, 127, 191, 255]
    dom = Domain(2, 2, 3, "grid")
    imgs = dom.images().tolist()
    # (0,0) + (2,2) = (1,1) + (1,1) on the grid: a forgery with a repeated image is impossible in a
    # batch of distinct examples, but (0,1) + (2,1) = (1,0) + (1,2) is one without a bias
    a, b, c, e = (imgs.index(x) for x in ([0, 1], [2, 1], [1, 0], [1, 2]))
    true = sorted([a * 2, b * 2, c * 2 + 1, e * 2 + 1])
    r = run_search("logreg", 2, 2, 3, 4, bias=True, planted=[true], levels="grid")
    assert r.found >= 1
    r = run_search("logreg", 2, 2, 3, 4, bias=True, planted=[true], levels="paper")
    assert r.found == 0  # 0 + 255 = 255 but 127 + 127 = 254


@pytest.mark.slow
@EXAMPLES
@SMALL_CELLS
def test_all_counts_agree_with_an_independent_high_precision_count(mb, b, n, dv, seed):
    """search --all: every batch a true batch; the counts equal those of the 300-bit brute force."""
    from exactforge.forging.search import run_search_all

    ref = reference(mb, b, n, dv, seed)
    if ref is None:
        return
    model, bias, d, v, N, want = ref
    r = run_search_all(model, d, n, v, b, bias=bias, seed=seed)
    assert sum(r.certificates.values()) == len(want) // 2
    assert r.batches_with_forgery == len({a for a, _ in want})
    for p in r.pairs:
        assert (tuple(p["true"]), tuple(p["forgery"])) in want


@pytest.mark.parametrize("model,bias", [("logreg", True), ("logreg", False), ("fcn10", True), ("fcn10", False)])
def test_all_counts_do_not_depend_on_windows_or_threads(model, bias):
    """1 MiB of windows (about 30 key windows and cross-bucket pairs) and 1 thread give exactly
    the counts and example pairs of one window on 2 threads."""
    from exactforge.forging.search import run_search_all

    keys = ["batches_with_forgery", "trivial", "batches_with_nontrivial_forgery", "certificates", "pairs"]
    a = run_search_all(model, 4, 3, 2, 5, bias=bias, max_memory_mib=1, threads=1).to_dict()
    b = run_search_all(model, 4, 3, 2, 5, bias=bias, threads=2).to_dict()
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    # with a bias no example has zero influence: every batch is enumerated; without one, the
    # batches that differ only in zero examples are counted, not enumerated
    assert (a["visited"] == a["batches"]) == bias


@EXAMPLES
@given(st.sampled_from(MODELS), st.integers(0, 10_000))
def test_label_residues_decide_label_sums_exactly(mb, seed):
    """Equal residues modulo the chosen primes <=> equal label-part sums as rationals, for sums of
    up to 6 examples (the bound the native all-pairs search relies on)."""
    from fractions import Fraction

    from exactforge.forging.certify import label_residues
    from exactforge.forging.search import _exact_gradients_cached

    model, bias = mb
    eg = _exact_gradients_cached(model, 4, 3, 2, bias, 0, "grid")
    rows = list(range(len(eg.label)))
    lab, primes = label_residues(eg, rows, 6)
    P = len(eg.label[0])
    rng = np.random.default_rng(seed)
    a = rng.choice(len(rows), 6, replace=False)
    b = a.copy() if seed % 2 else rng.choice(len(rows), 6, replace=False)
    rng.shuffle(b)
    exact = all(
        sum((eg.label[i][j] for i in a), Fraction(0)) == sum((eg.label[i][j] for i in b), Fraction(0)) for j in range(P)
    )
    by_residue = all(
        int(lab[a, q * P + j].astype(object).sum()) % int(p) == int(lab[b, q * P + j].astype(object).sum()) % int(p)
        for q, p in enumerate(primes)
        for j in range(P)
    )
    assert exact == by_residue
