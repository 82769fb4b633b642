"""Exact arithmetic for batch size 1: the certificates of the twins (see ``twins``).

A native model's weights and an input are read as the exact rationals they are, so logits and
the gradient's factors are rational; two examples' gradients are compared in the reals by
Lindemann-Weierstrass (an identity of rationals per distinct exponent); exp is bounded
rigorously (Taylor sums with their remainder, rounded outward) to bracket the transcendental
root of a scaling."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..models import native as M

_BITS = 128  # working precision of the exp bounds (bits); raised where a sign needs more
_MAX_DELTA = 2**16  # logit gaps beyond this put the root below exp(-65536): not searched


def _round(q: Fraction, bits: int, up: bool) -> Fraction:
    """q > 0 to ``bits`` significant bits, rounded up or down: keeps the bounds' sizes bounded."""
    e = q.numerator.bit_length() - q.denominator.bit_length()
    shift = bits - e
    num, den = (q.numerator << shift, q.denominator) if shift >= 0 else (q.numerator, q.denominator << -shift)
    n, r = divmod(num, den)
    if up and r:
        n += 1
    return Fraction(n, 1 << shift) if shift >= 0 else Fraction(n << -shift)


def _exp_bounds(q: Fraction, bits: int = _BITS) -> Tuple[Fraction, Fraction]:
    """Rationals lo <= exp(q) <= hi, relative width about 2^-bits. q is halved m times to at
    most 1/2, where the Taylor sum's remainder after a term is at most that term; the result is
    squared back m times. Integers at a fixed scale, each step rounded outward (floor for lo,
    ceiling for hi): Fraction's gcds would cost a hundred times more."""
    if q == 0:
        return Fraction(1), Fraction(1)
    if q < 0:
        lo, hi = _exp_bounds(-q, bits)
        return _round(1 / hi, bits + 8, False), _round(1 / lo, bits + 8, True)
    m = max(0, q.numerator.bit_length() - q.denominator.bit_length() + 2)
    work = bits + m + 16
    num = q.numerator << (work - m)
    out = []
    for up in (False, True):
        R = -(-num // q.denominator) if up else num // q.denominator  # r 2^work, r = q / 2^m <= 1/2
        term = total = 1 << work
        i = 0
        while term > 0 if not up else term > 1:
            i += 1
            t = term * R
            term = -(-t // (i << work)) if up else t // (i << work)
            total += term
        if up:
            total += term + 1  # the tail beyond: at most the last term (r <= 1/2)
        v, e = total, -work
        for _ in range(m):
            v, e = v * v, 2 * e
            extra = v.bit_length() - (work + 2)
            if extra > 0:
                v = -(-v >> extra) if up else v >> extra
                e += extra
        out.append(Fraction(v << e) if e >= 0 else Fraction(v, 1 << -e))
    return out[0], out[1]


def _dyadic(vals: Any) -> Tuple[List[int], int]:
    """Floats as integers over one power of two: (ints, s) with value = int / 2^s, exactly."""
    fr = [float(v).as_integer_ratio() for v in np.asarray(vals, np.float64).ravel()]
    s = max((d.bit_length() - 1 for _, d in fr), default=0)
    return [num << (s - (d.bit_length() - 1)) for num, d in fr], s


class ExactModel:
    """The model's weights as exact rationals (float32 and float64 values are dyadic), held as
    integers over a power of two per layer: Python integers, no gcds."""

    def __init__(self, spec: M.ModelSpec, params: M.Params) -> None:
        self.spec = spec
        self.W: List[List[List[int]]] = []
        self.b: List[List[int]] = []
        self.s: List[int] = []
        for i in range(1, spec.num_layers + 1):
            W = np.asarray(params[f"W{i}"], np.float64)
            b = np.asarray(params[f"b{i}"], np.float64) if spec.bias else np.zeros(W.shape[1])
            ints, sc = _dyadic(np.concatenate([W.ravel(), b]))
            d1 = W.shape[1]
            self.W.append([ints[r * d1 : (r + 1) * d1] for r in range(W.shape[0])])
            self.b.append(ints[W.size :])
            self.s.append(sc)
        self._r = [int(v) for v in np.random.default_rng(0).integers(1, 2**62, spec.num_params)]

    def example(self, x: np.ndarray) -> "ExactExample":
        L, n = self.spec.num_layers, self.spec.num_classes
        a, sa = _dyadic(x)
        acts, masks = [(a, sa)], []
        z: List[int] = []
        for i in range(L):
            W, b, sz = self.W[i], self.b[i], sa + self.s[i]
            z = [sum((a[j] * W[j][k] for j in range(len(a)) if a[j]), b[k] << sa) for k in range(len(b))]
            if i < L - 1:
                masks.append([v > 0 for v in z])
                a, sa = [v if v > 0 else 0 for v in z], sz
                acts.append((a, sa))
        logits = [Fraction(v, 1 << sz) for v in z]
        sd = [0] * L  # d_i's scale: the same for every unit output error
        for i in range(L - 2, -1, -1):
            sd[i] = sd[i + 1] + self.s[i + 1]
        sM = max(max(acts[i][1] + sd[i], sd[i]) for i in range(L))
        Ms, D1 = [], []
        for j in range(n):
            d = [int(k == j) for k in range(n)]
            per_layer = [d]
            for i in range(L - 1, 0, -1):  # d_i = (W_{i+1} d_{i+1}) * m_i, relu'(0) = 0 as in the models
                W = self.W[i]
                d = [
                    sum((W[r][k] * d[k] for k in range(len(d)) if d[k]), 0) if masks[i - 1][r] else 0
                    for r in range(len(W))
                ]
                per_layer.insert(0, d)
            g: List[int] = []
            for i in range(L):
                ai, si = acts[i]
                up = sM - si - sd[i]
                g.extend((u * v) << up for u in ai for v in per_layer[i])
                if self.spec.bias:
                    g.extend(v << (sM - sd[i]) for v in per_layer[i])
            Ms.append(g)
            D1.append(per_layer[0])
        proj = [sum(r * v for r, v in zip(self._r, g) if v) for g in Ms]
        return ExactExample(logits, Ms, sM, proj, D1, masks)


@dataclass
class ExactExample:
    """One input's exact quantities: logits; M[j], the gradient when the output error is e_j,
    as integers over 2^sM; proj[j], M[j] on a fixed random integer vector (a cheap refusal:
    unequal projections prove unequal vectors); D1[j], the first layer's error for e_j (its
    scale does not matter: only its zeros are used); each hidden layer's ReLU mask."""

    z: List[Fraction]
    M: List[List[int]]
    sM: int
    proj: List[int]
    D1: List[List[int]]
    masks: List[List[bool]]


def _groups(z: Sequence[Fraction], vecs: Sequence[Sequence[int]]) -> Dict[Fraction, Tuple[int, List[int]]]:
    """Classes with the same logit, as (count, summed vector): their exponentials are one term."""
    out: Dict[Fraction, Tuple[int, List[int]]] = {}
    for zj, v in zip(z, vecs):
        c, s = out.get(zj, (0, [0] * len(v)))
        out[zj] = (c + 1, [p + q for p, q in zip(s, v)])
    return out


def _lw_zero(
    a: ExactExample, y: int, b: ExactExample, y2: int, va: Sequence[Sequence[int]], vb: Sequence[Sequence[int]]
) -> bool:
    """sum_{j,k} exp(z_j + z'_k) (va_j - vb_k + vb_y2 - va_y) = 0, each vector over the same
    power of two: every distinct exponent's coefficients sum to 0 (Lindemann-Weierstrass)."""
    off = [v2 - v1 for v1, v2 in zip(va[y], vb[y2])]
    coeff: Dict[Fraction, List[int]] = {}
    for u, (cu, su) in _groups(a.z, va).items():
        for w, (cw, sw) in _groups(b.z, vb).items():
            term = [cw * s1 - cu * s2 + cu * cw * o for s1, s2, o in zip(su, sw, off)]
            acc = coeff.get(u + w)
            coeff[u + w] = term if acc is None else [p + q for p, q in zip(acc, term)]
    return all(not any(v) for v in coeff.values())


def equal_in_reals(a: ExactExample, y: int, b: ExactExample, y2: int) -> bool:
    """Whether (x_a, y) and (x_b, y2) have the same gradient in real arithmetic (module doc):
    first on the projections (a refusal there is a proof too), then on the whole vectors."""
    S = max(a.sM, b.sM)
    fa, fb = 1 << (S - a.sM), 1 << (S - b.sM)
    if not _lw_zero(a, y, b, y2, [[v * fa] for v in a.proj], [[v * fb] for v in b.proj]):
        return False
    return _lw_zero(a, y, b, y2, [[v * fa for v in m] for m in a.M], [[v * fb for v in m] for m in b.M])


def d1_is_zero(ex: ExactExample, y: int) -> bool:
    """d1 = sum_j p_j D1_j - D1_y = 0 in real arithmetic: by Lindemann-Weierstrass, when the
    D1_j - D1_y of each group of equal logits sum to 0."""
    shifted = [[p - q for p, q in zip(d, ex.D1[y])] for d in ex.D1]
    return all(not any(s) for _, s in _groups(ex.z, shifted).values())


# -- the scaling twins ----------------------------------------------------------------------


def second_root(delta: Fraction, k: int) -> Optional[Tuple[Fraction, Fraction]]:
    """A rational bracket of the root s != 1, s > 0, of g(s) = (e^delta + k) s - k - e^(s delta),
    or None when there is none.

    With the other k classes' logits tied at z_y - delta, s softmax(s z)_j = softmax(z)_j is
    s / (e^(s delta) + k) = 1 / (e^delta + k), i.e. g(s) = 0. g is concave with g(1) = 0, so it
    has at most one other root. For delta <= 0 there is none (g'(1) > 0 and g grows without
    bound, or g is linear). For delta > 0 it lies below 1 when g'(1) = (1 - delta) e^delta + k
    is negative and above 1 when positive; g'(1) is never 0, since e^delta is irrational."""
    if delta <= 0 or delta > _MAX_DELTA:
        return None
    from mpmath import mp

    bits = _BITS
    E = _exp_bounds(delta, bits)
    while True:
        d_lo, d_hi = (1 - delta) * E[1] + k, (1 - delta) * E[0] + k
        if d_lo > 0 or d_hi < 0:
            break
        if bits > 8 * _BITS:
            return None
        bits *= 2
        E = _exp_bounds(delta, bits)
    below = d_hi < 0

    def sign(s: Fraction) -> int:
        F = _exp_bounds(s * delta, bits)
        lo = (E[0] + k) * s - k - F[1]
        hi = (E[1] + k) * s - k - F[0]
        return 1 if lo > 0 else -1 if hi < 0 else 0

    with mp.workprec(bits + 64):  # g's maximum, where g > 0: a guess, checked by sign()
        dm = mp.mpf(delta.numerator) / delta.denominator
        top = mp.log((mp.exp(dm) + k) / dm) / dm
        man, ex = mp.frexp(top)
        peak = Fraction(int(mp.ldexp(man, bits + 16))) * Fraction(2) ** (int(ex) - bits - 16)
    if sign(peak) != 1:
        return None
    # below 1 the root can be as small as about exp(-delta): step the exponent by powers of 2;
    # above 1, s delta stays near log(s), so plain doubling reaches it without a huge exp
    steps = [peak / 2 ** (2**i) for i in range(18)] if below else (peak * 2**i for i in range(1, 256))
    outer = next((s for s in steps if sign(s) == -1), None)
    if outer is None:
        return None
    a, b = (outer, peak) if below else (peak, outer)
    sa = sign(a)
    while True:
        ea = a.numerator.bit_length() - a.denominator.bit_length()
        eb = b.numerator.bit_length() - b.denominator.bit_length()
        if eb - ea >= 3:
            mid = Fraction(2) ** ((ea + eb) // 2)
        elif (b - a) > a / 2**64:
            mid = (a + b) / 2
        else:
            break
        sm = sign(mid)
        if sm == 0:  # the root is within the bounds' width of mid: the bracket is as tight as they allow
            break
        if sm == sa:
            a = mid
        else:
            b = mid
    return a, b
