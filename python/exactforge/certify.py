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
* ``exact``: after removing zero-influence examples, B and B' hold the same multiset of images,
  and their label parts sum to the same exact rational. An example's gradient is an *image
  part* (a function of the image alone: its softmax and activations) plus a *label part*, which
  is rational: -x~ e_y^T for logistic regression, and -(x (W2[:, y] * m)), -h e_y^T, ... for
  the FCN. So the image parts cancel term by term, and equality is an identity of rationals: a
  proof, not a measurement.
* ``numerical``: equal to 200 bits, with no structural explanation (none has been seen).
* ``differs``: the 200-bit difference exceeds its error bound by far; a false candidate,
  discarded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, List, Sequence, Tuple

import numpy as np

from . import models as M

__all__ = ["PREC", "KEY_BITS", "ExactGradients", "exact_gradients", "certify", "LEVELS", "key_bits_for",
           "projection_keys"]

PREC = 200           # bits of the high-precision evaluation
KEY_BITS = 44        # default |G| <= 2^44; ``key_bits`` lowers it for long gradients (see projection_keys)
LEVELS = ("trivial", "exact", "numerical", "differs")
_DIFF_BOUND = 2.0 ** -120  # far above the 200-bit evaluation error, far below any real difference seen


@dataclass
class ExactGradients:
    """N x P fixed-point gradients and what certification needs."""

    G: np.ndarray                  # int64, round(g * 2^scale)
    scale: int
    zero: np.ndarray               # bool: the example's gradient is exactly 0
    image: np.ndarray              # int64: index of the example's image (equal images, equal index)
    label: List[Tuple[Fraction, ...]]  # exact label part of each example (length P)
    hp: List[list]                 # the 200-bit gradient of each example (mpmath numbers)
    ctx: object = None             # the mpmath context of hp


def _mp():
    """A private mpmath context at PREC bits (the global one is left as it is)."""
    from mpmath import MPContext

    ctx = MPContext()
    ctx.prec = PREC
    return ctx


def exact_gradients(spec: M.ModelSpec, params: M.Params, images: np.ndarray, image_of: np.ndarray,
                    labels: np.ndarray, denom: int, key_bits: int = KEY_BITS) -> ExactGradients:
    """Gradients of the loss of every example (image ``images[image_of[i]]`` with pixel values
    ``q / denom``, label ``labels[i]``), in the spec's parameter order."""
    mp = _mp()
    W = [[[Fraction(float(v)) for v in row] for row in np.asarray(params[f"W{i}"], np.float64)]
         for i in range(1, spec.num_layers + 1)]
    Bs = [[Fraction(float(v)) for v in np.asarray(params[f"b{i}"], np.float64)] if spec.bias else None
          for i in range(1, spec.num_layers + 1)]
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
    mx = max((abs(v) for row in hp for v in row), default=mp.mpf(0))
    scale = key_bits - (int(mp.floor(mp.log(mx, 2))) + 1) if mx > 0 else 0
    two = mp.mpf(2) ** scale
    G = np.array([[int(mp.nint(v * two)) for v in row] for row in hp], dtype=np.int64).reshape(N, P)
    return ExactGradients(G, scale, zero, np.asarray(image_of, np.int64), label, hp, mp)


def _image_terms(spec, W, Bs, x, n, mp) -> Dict[str, object]:
    """Everything of an example that depends on its image only."""
    if spec.kind == "logreg":
        z = [sum((W[0][j][k] * x[j] for j in range(len(x))), Fraction(0)) + (Bs[0][k] if spec.bias else 0)
             for k in range(n)]
        return {"x": x, "p": _softmax(z, mp)}
    Hd = len(W[0][0])
    z1 = [sum((W[0][j][k] * x[j] for j in range(len(x))), Fraction(0)) + (Bs[0][k] if spec.bias else 0)
          for k in range(Hd)]
    m = [1 if v > 0 else 0 for v in z1]        # exact signs: relu'(0) = 0, as in the models
    h = [v if v > 0 else Fraction(0) for v in z1]
    z2 = [sum((W[1][j][k] * h[j] for j in range(Hd)), Fraction(0)) + (Bs[1][k] if spec.bias else 0)
          for k in range(n)]
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
    u = [mp.fsum(mp.mpf(W2[j][k].numerator) / W2[j][k].denominator * p[k] for k in range(n)) * m[j]
         for j in range(Hd)]                   # image part of d1 = (W2 p) * m
    c = [-W2[j][y] * m[j] for j in range(Hd)]  # label part of d1 = -(W2 e_y) * m
    for j in range(len(x)):                    # W1: x d1^T
        for k in range(Hd):
            img.append(x[j] * u[k] if x[j] else mp.mpf(0))
            lab.append(x[j] * c[k])
    if spec.bias:                              # b1: d1
        img.extend(u)
        lab.extend(c)
    for j in range(Hd):                        # W2: h d2^T
        for k in range(n):
            img.append(h[j] * p[k] if h[j] else mp.mpf(0))
            lab.append(-h[j] if k == y else zero_f)
    if spec.bias:                              # b2: d2
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
    mp = eg.ctx or _mp()
    P = len(eg.hp[0]) if eg.hp else 0
    diff = max((abs(mp.fsum(eg.hp[i][j] for i in a) - mp.fsum(eg.hp[i][j] for i in b)) for j in range(P)),
               default=mp.mpf(0))
    return "numerical" if diff <= _DIFF_BOUND else "differs"


def key_bits_for(P: int, b: int) -> int:
    """The fixed-point width that keeps every batch key r.G (|r_j| < 256) below 2^62."""
    return min(KEY_BITS, 62 - math.ceil(math.log2(255 * P * b + 1)))


def projection_keys(G: np.ndarray, b: int, seed: int) -> Tuple[np.ndarray, int, int]:
    """Integer keys r.G_i (exact in int64), the key tolerance |r|_1 * b and the bucket shift with
    2^shift > 2 * tolerance, for the tolerance search of ``exactforge._core.SearchHandle``."""
    r = np.random.default_rng([seed, 0x7E1]).integers(1, 256, G.shape[1], dtype=np.int64)
    keys = G @ r  # |G| <= 2^key_bits_for(P, b): |sum of b keys| < 2^62
    tol = int(r.sum()) * b
    # buckets 64 times wider than the window: a window straddles two buckets about 1 time in 32
    shift = max(1, math.ceil(math.log2(2 * tol + 1)) + 6)
    return keys, tol, shift
