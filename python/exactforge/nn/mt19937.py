"""torch's CPU generator (the 32-bit Mersenne Twister, mt19937) as arrays, and its linearity.

A stretch of the stream is described by 624 consecutive untempered words w[t .. t+623]: every
later word follows from w[k+624] = w[k+397] ^ twist(w[k], w[k+1]), and every output is
temper(w[k]). Both maps are linear over GF(2), which is what lets a verifier solve for the words
from bits of the outputs (:mod:`exactforge.pol.recover`).

What torch draws from it (torch 2.x, CPU): a float32 uniform keeps the low 24 bits of one output,
u = (x & 0xFFFFFF) * 2^-24; ``randint(0, n)`` with n < 2^28 is x % n; a 64-bit ``random_()`` is
(first << 32) | second.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "N",
    "M",
    "temper",
    "generate",
    "twist_rows",
    "temper_matrix",
    "untemper_matrix",
    "init_genrand",
    "untwist_back",
]

N, M = 624, 397
MATRIX_A = 0x9908B0DF
UPPER, LOWER = 0x80000000, 0x7FFFFFFF


def temper(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.uint32)
    y = y ^ (y >> np.uint32(11))
    y = y ^ ((y << np.uint32(7)) & np.uint32(0x9D2C5680))
    y = y ^ ((y << np.uint32(15)) & np.uint32(0xEFC60000))
    return y ^ (y >> np.uint32(18))


def _twist(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """w[k+624] from a = w[k], b = w[k+1], c = w[k+397]."""
    y = (a & np.uint32(UPPER)) | (b & np.uint32(LOWER))
    return c ^ (y >> np.uint32(1)) ^ ((b & np.uint32(1)) * np.uint32(MATRIX_A))


def generate(words: np.ndarray, count: int) -> np.ndarray:
    """The untempered words w[t .. t+count-1] of the stream whose first 624 are ``words``."""
    w = np.zeros(max(count, N), dtype=np.uint32)
    w[:N] = np.asarray(words, dtype=np.uint32)
    k = N
    while k < count:  # in chunks of 227 (= 624 - 397): each chunk reads only words before it
        e = min(k + (N - M), count)
        w[k:e] = _twist(w[k - N : e - N], w[k - N + 1 : e - N + 1], w[k - N + M : e - N + M])
        k = e
    return w[:count]


def init_genrand(seed: int) -> np.ndarray:
    """The 624 words ``manual_seed(seed)`` leaves (torch keeps the seed's low 32 bits); the first
    output is temper(w[624]) of their continuation."""
    mt = np.zeros(N, dtype=np.uint64)
    mt[0] = seed & 0xFFFFFFFF
    for i in range(1, N):
        prev = int(mt[i - 1])
        mt[i] = (1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF
    return mt.astype(np.uint32)


def _bit_columns(f) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The 32 x 32 GF(2) matrix of a linear map on words: column b is f(1 << b)."""
    cols = f(np.array([1 << b for b in range(32)], dtype=np.uint32))
    return ((cols[None, :] >> np.arange(32, dtype=np.uint32)[:, None]) & np.uint32(1)).astype(np.uint8)


def temper_matrix() -> np.ndarray:
    """T with out bit i = XOR_b T[i, b] * w bit b."""
    return _bit_columns(temper)


def untemper_matrix() -> np.ndarray:
    """T^-1 over GF(2)."""
    T = temper_matrix().astype(np.uint8)
    A = np.concatenate([T, np.eye(32, dtype=np.uint8)], axis=1)
    for c in range(32):
        p = c + int(np.nonzero(A[c:, c])[0][0])
        A[[c, p]] = A[[p, c]]
        for r in range(32):
            if r != c and A[r, c]:
                A[r] ^= A[c]
    return A[:, 32:].copy()


def twist_rows(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The twist on symbolic words: a, b, c are (..., 32, W) bit-packed rows (row i of a word is
    its bit i as a linear form over the unknowns); returns the rows of twist(a, b) ^ c."""
    out = c.copy()
    # (y >> 1) where y takes bit 31 from a and bits 0..30 from b
    out[..., 0:30, :] ^= b[..., 1:31, :]
    out[..., 30, :] ^= a[..., 31, :]
    for i in range(32):
        if (MATRIX_A >> i) & 1:
            out[..., i, :] ^= b[..., 0, :]
    return out


def untwist_back(w: np.ndarray, count: int) -> np.ndarray:
    """Runs the stream backwards: from words w[t .. t+623] (or more) gives w[t-count ..]. Each
    earlier word takes its bits 0..30 from the twist that made w[j+623] and its bit 31 from the
    one that made w[j+624]."""
    w = np.asarray(w, dtype=np.uint32)
    out = np.zeros(count + len(w), dtype=np.uint32)
    out[count:] = w
    k = count  # out[k:] known
    while k > 0:
        s = max(k - (N - M), 0)
        j = np.arange(s, k)
        # w[j+623] = w[j+396] ^ twist(w[j-1], w[j]) gives bits 0..30 of w[j];
        # w[j+624] = w[j+397] ^ twist(w[j], w[j+1]) gives bit 31 of w[j]
        lo = _untwist_y(out[j + N - 1] ^ out[j + M - 1]) & np.uint32(LOWER)
        hi = _untwist_y(out[j + N] ^ out[j + M]) & np.uint32(UPPER)
        out[j] = hi | lo
        k = s
    return out


def _untwist_y(t: np.ndarray) -> np.ndarray:
    """y from (y >> 1) ^ (y & 1) * MATRIX_A: bit 31 of t is set only by MATRIX_A, so it tells y's
    low bit."""
    odd = (t >> np.uint32(31)) & np.uint32(1)
    t = t ^ (odd * np.uint32(MATRIX_A))
    return (t << np.uint32(1)) | odd
