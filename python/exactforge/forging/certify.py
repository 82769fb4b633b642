"""Per-example gradients of the search models (logistic regression and the ReLU FCN) computed
far beyond float64, and certificates of gradient equality between two batches.

Why: rounding per-example float64 gradients to fixed point and asking for *equal* integer sums
misses real forgeries. softmax(.) - y is rounded differently per example, so batches whose
gradients are equal in real arithmetic differ by a few units. Here every example's gradient
``g`` is evaluated with 200-bit arithmetic. Activation signs and every rational part come from
exact rationals, and the weights are the exact binary64 values. Then it is rounded once to
fixed point: ``G = round(g * 2^scale)``, with ``|G - g 2^scale| <= 1/2 + 2^-100``. Two batches
with equal real gradients therefore differ by at most ``|B symmetric-difference B'| / 2 <= b``
per coordinate, which is the search's tolerance (stage 1: no false negatives).

Stage 2 certifies every candidate pair (B, B'):

* ``trivial``: B and B' differ only in zero-influence examples, whose gradient is exactly 0: an
  all-zero image without bias (logistic regression), or an example that leaves every ReLU dead
  in an FCN without an output bias.
* ``exact``: after removing zero-influence examples, B and B' hold the same multiset of image
  classes (images whose image parts are provably equal: the image itself, or, in an FCN, any
  image that leaves every ReLU dead), and their label parts sum to the same exact rational.
  An example's gradient is an *image part* (a function of the image alone: its softmax and
  activations) plus a *label part*, which is rational: -x~ e_y^T for logistic regression, and
  -(x (W2[:, y] * m)), -h e_y^T, ... for the FCN. So the image parts cancel term by term, and
  equality is an identity of rationals: a proof, not a measurement.
* ``numerical``: equal to 200 bits, with no structural explanation (none has been seen).
* ``differs``: the 200-bit difference exceeds its error bound by far; a false candidate,
  discarded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..models import native as M

__all__ = [
    "PREC",
    "KEY_BITS",
    "ExactGradients",
    "exact_gradients",
    "certify",
    "LEVELS",
    "key_bits_for",
    "projection_keys",
    "label_residues",
]

PREC = 200  # bits of the high-precision evaluation
KEY_BITS = 44  # default |G| <= 2^44; ``key_bits`` lowers it for long gradients (see projection_keys)
LEVELS = ("trivial", "exact", "numerical", "differs")
_DIFF_BOUND = 2.0**-120  # far above the 200-bit evaluation error, far below any real difference seen


@dataclass
class ExactGradients:
    """N x P fixed-point gradients and what certification needs."""

    G: np.ndarray  # int64, round(g * 2^scale)
    scale: int
    zero: np.ndarray  # bool: the example's gradient is exactly 0
    image: np.ndarray  # int64: the example's image class (equal class: equal image part)
    label: List[Tuple[Fraction, ...]]  # exact label part of each example (length P)
    hp: List[list]  # the 200-bit gradient of each example (mpmath numbers)
    ctx: object = None  # the mpmath context of hp


def _mp():
    """A private mpmath context at PREC bits (the global one is left as it is)."""
    from mpmath import MPContext

    ctx = MPContext()
    ctx.prec = PREC
    return ctx


def exact_gradients(
    spec: M.ModelSpec,
    params: M.Params,
    images: np.ndarray,
    image_of: np.ndarray,
    labels: np.ndarray,
    denom: int,
    key_bits: int = KEY_BITS,
) -> ExactGradients:
    """Gradients of the loss of every example (image ``images[image_of[i]]`` with pixel values
    ``q / denom``, label ``labels[i]``), in the spec's parameter order."""
    mp = _mp()
    W = [
        [[Fraction(float(v)) for v in row] for row in np.asarray(params[f"W{i}"], np.float64)]
        for i in range(1, spec.num_layers + 1)
    ]
    Bs = [
        [Fraction(float(v)) for v in np.asarray(params[f"b{i}"], np.float64)] if spec.bias else None
        for i in range(1, spec.num_layers + 1)
    ]
    n = spec.num_classes
    per_image = []
    for q in np.asarray(images):
        x = [Fraction(int(v), denom) for v in q]
        per_image.append(_image_terms(spec, W, Bs, x, n, mp))
    N = len(labels)
    P = spec.num_params
    hp, label, zero = [], [], np.zeros(N, bool)
    for i in range(N):
        terms = per_image[int(image_of[i])]
        img, lab, is_zero = _example(spec, W, terms, int(labels[i]), n, mp)
        hp.append([img[j] + mp.mpf(lab[j].numerator) / lab[j].denominator for j in range(P)])
        label.append(tuple(lab))
        zero[i] = is_zero
    # Image classes: images with provably equal image parts share one. In an FCN, an image that
    # leaves every ReLU dead has h = 0 and a zero first-layer error, so its image part is
    # (0, 0, 0, softmax(b2)) whatever the image: all such images are one class.
    image_class = np.asarray(image_of, np.int64).copy()
    if spec.kind != "logreg":
        dead = np.array([not any(t["m"]) for t in per_image], dtype=bool)  # type: ignore[type-var,arg-type]
        if dead.any():
            image_class[dead[image_class]] = int(np.flatnonzero(dead)[0])
    mx = max((abs(v) for row in hp for v in row), default=mp.mpf(0))
    scale = key_bits - (int(mp.floor(mp.log(mx, 2))) + 1) if mx > 0 else 0
    two = mp.mpf(2) ** scale
    G = np.array([[int(mp.nint(v * two)) for v in row] for row in hp], dtype=np.int64).reshape(N, P)
    return ExactGradients(G, scale, zero, image_class, label, hp, mp)


def _image_terms(spec, W, Bs, x, n, mp) -> Dict[str, object]:
    """Everything of an example that depends on its image only."""
    if spec.kind == "logreg":
        z = [
            sum((W[0][j][k] * x[j] for j in range(len(x))), Fraction(0)) + (Bs[0][k] if spec.bias else 0)
            for k in range(n)
        ]
        return {"x": x, "p": _softmax(z, mp)}
    Hd = len(W[0][0])
    z1 = [
        sum((W[0][j][k] * x[j] for j in range(len(x))), Fraction(0)) + (Bs[0][k] if spec.bias else 0) for k in range(Hd)
    ]
    m = [1 if v > 0 else 0 for v in z1]  # exact signs: relu'(0) = 0, as in the models
    h = [v if v > 0 else Fraction(0) for v in z1]
    z2 = [sum((W[1][j][k] * h[j] for j in range(Hd)), Fraction(0)) + (Bs[1][k] if spec.bias else 0) for k in range(n)]
    return {"x": x, "m": m, "h": h, "p": _softmax(z2, mp)}


def _softmax(z: Sequence[Fraction], mp) -> list:
    zs = [mp.mpf(v.numerator) / v.denominator for v in z]
    top = max(zs)
    e = [mp.exp(v - top) for v in zs]
    s = mp.fsum(e)
    return [v / s for v in e]


def _example(spec, W, t, y: int, n: int, mp) -> Tuple[list, List[Fraction], bool]:
    """(image part as mp numbers, label part as exact rationals, zero influence) in spec order."""
    x, p = t["x"], t["p"]
    img: list = []
    lab: List[Fraction] = []
    zero_f = Fraction(0)
    if spec.kind == "logreg":
        for j in range(len(x)):
            for k in range(n):
                img.append(x[j] * p[k] if x[j] else mp.mpf(0))
                lab.append(-x[j] if k == y else zero_f)
        if spec.bias:
            img.extend(p)
            lab.extend(Fraction(-1) if k == y else zero_f for k in range(n))
        return img, lab, (not spec.bias and not any(x))
    m, h = t["m"], t["h"]
    W2 = W[1]
    Hd = len(m)
    u = [
        mp.fsum(mp.mpf(W2[j][k].numerator) / W2[j][k].denominator * p[k] for k in range(n)) * m[j] for j in range(Hd)
    ]  # image part of d1 = (W2 p) * m
    c = [-W2[j][y] * m[j] for j in range(Hd)]  # label part of d1 = -(W2 e_y) * m
    for j in range(len(x)):  # W1: x d1^T
        for k in range(Hd):
            img.append(x[j] * u[k] if x[j] else mp.mpf(0))
            lab.append(x[j] * c[k])
    if spec.bias:  # b1: d1
        img.extend(u)
        lab.extend(c)
    for j in range(Hd):  # W2: h d2^T
        for k in range(n):
            img.append(h[j] * p[k] if h[j] else mp.mpf(0))
            lab.append(-h[j] if k == y else zero_f)
    if spec.bias:  # b2: d2
        img.extend(p)
        lab.extend(Fraction(-1) if k == y else zero_f for k in range(n))
    return img, lab, (not spec.bias and not any(m))


def certify(eg: ExactGradients, a: Sequence[int], b: Sequence[int]) -> str:
    """The certificate level of 'batch a and batch b have equal gradients' (see the module doc)."""
    a = [int(i) for i in a if not eg.zero[int(i)]]
    b = [int(i) for i in b if not eg.zero[int(i)]]
    if sorted(a) == sorted(b):
        return "trivial"
    if sorted(eg.image[a].tolist()) == sorted(eg.image[b].tolist()):
        P = len(eg.label[0]) if eg.label else 0
        la = [sum((eg.label[i][j] for i in a), Fraction(0)) for j in range(P)]
        lb = [sum((eg.label[i][j] for i in b), Fraction(0)) for j in range(P)]
        return "exact" if la == lb else "differs"
    mp: Any = eg.ctx or _mp()
    P = len(eg.hp[0]) if eg.hp else 0
    diff = max(
        (abs(mp.fsum(eg.hp[i][j] for i in a) - mp.fsum(eg.hp[i][j] for i in b)) for j in range(P)), default=mp.mpf(0)
    )
    return "numerical" if diff <= _DIFF_BOUND else "differs"


def key_bits_for(P: int, b: int) -> int:
    """The fixed-point width that keeps every batch key r.G (|r_j| < 256) below 2^62."""
    return min(KEY_BITS, 62 - math.ceil(math.log2(255 * P * b + 1)))


def projection_keys(G: np.ndarray, b: int, seed: int) -> Tuple[np.ndarray, int, int]:
    """Integer keys r.G_i (exact in int64), the key tolerance |r|_1 * b and the bucket shift with
    2^shift > 2 * tolerance, for the tolerance search of ``exactforge._core.SearchHandle``."""
    # As large as |sum of b keys| < 2^62 allows (at least 256): small random integers vanish on
    # small integer vectors, such as label-part differences, far more often than large ones.
    P = max(1, G.shape[1])
    gmax = int(np.max(np.abs(G))) if G.size else 0
    r_max = max(256, min(2**20, 2**62 // (6 * P * max(1, gmax))))
    r = np.random.default_rng([seed, 0x7E1]).integers(1, r_max, G.shape[1], dtype=np.int64)
    keys = G @ r  # |sum of b <= 6 keys| <= 6 P r_max max|G| < 2^62
    tol = int(r.sum()) * b
    # buckets 64 times wider than the window: a window straddles two buckets about 1 time in 32
    shift = max(1, math.ceil(math.log2(2 * tol + 1)) + 6)
    return keys, tol, shift


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (these twelve bases suffice)."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in bases:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _primes_below_2_61(k: int) -> List[int]:
    out: List[int] = []
    c = 2**61 - 1
    while len(out) < k:
        if _is_prime(c):
            out.append(c)
        c -= 2
    return out


def label_residues(eg: ExactGradients, rows: Sequence[int], b: int) -> Tuple[np.ndarray, np.ndarray]:
    """The label parts of examples ``rows`` as integers modulo primes below 2^61, enough primes
    that equal residues of two sums of at most b label parts mean equal sums: the parts are
    scaled by their common denominator D to integers of magnitude at most M, two sums differ by
    at most 2 b M, and the product of the primes exceeds 2 (2 b M) + 1 (Chinese remainders).
    Returns (len(rows) x (P * q) residues, prime-major, and the q primes)."""
    rows = [int(r) for r in rows]
    P = len(eg.label[0]) if eg.label else 0
    D = 1
    for r in rows:
        for v in eg.label[r]:
            D = D * v.denominator // math.gcd(D, v.denominator)
    ints = [[int(v * D) for v in eg.label[r]] for r in rows]
    M = max((abs(v) for row in ints for v in row), default=0)
    bound = 2 * (2 * b * M) + 1
    q = 1
    while (2**61 - 2**20) ** q <= bound:  # every prime used lies above 2^61 - 2^20
        q += 1
    primes = _primes_below_2_61(q)
    out = np.zeros((len(rows), P * q), np.uint64)
    for i, row in enumerate(ints):
        out[i] = [v % pr for pr in primes for v in row]
    return out, np.array(primes, np.uint64)
