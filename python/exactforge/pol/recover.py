"""The generator state of an unseeded torch process, recovered from the weights it initialised.

The reference's ``train.py`` never seeds torch: a fresh process seeds its CPU generator at random,
draws theta_0 from it (``kaiming_normal_`` on every convolution and linear weight, in module
order) and then, from the same stream, the DataLoader's base seed and every example's
augmentation, which no proof logs. theta_0 is in the proof, and its normal draws pin the stream:

* ``normal_`` on a contiguous float32 tensor of n >= 16 elements takes n uniforms (the low 24
  bits of one 32-bit output each), then Box-Muller over blocks of 16 pairing position j with
  j + 8: data[j] = sqrt(-2 ln(1 - u_j)) cos(2 pi u_{j+8}) std, data[j+8] the same with sin. When
  16 does not divide n, the last 16 positions are redrawn from 16 more outputs.
* Inverting Box-Muller on a pair gives both uniforms to about +-2 units of 2^-24 (torch's float
  path rounds); the bits common to every value within +-4 are certain: about 19 of the 24 per
  output.
* mt19937 is linear over GF(2). The unknowns are the bits of the first 624 observed outputs that
  are not certain (the untempered words follow from them by the inverse tempering), and every
  certain bit of a later output is one equation over them. About 2,400 consecutive draws give a
  unique solution; the native solver (``_core.gf2_solve``) takes a few seconds.

A solution is accepted only if the stream it generates reproduces every observed draw, and then
every later normal-drawn tensor of theta_0, to within float32 rounding: a wrong solve cannot
pass, and where the proof was not made this way (seeded differently, another init, a GPU's
generator for the weights) recovery says so and the caller falls back.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..nn import mt19937 as mt

__all__ = ["StreamRecovery", "recover_stream", "reference_augmentation", "normal_draws", "kaiming_std", "AUGMENTATIONS"]

# (units of 2^-24 around each inverted uniform, consecutive outputs used): the first fits the
# vectorised float path of AVX2 and AVX-512 builds, whose inverted uniforms stay within half its
# width; the second the scalar build's, whose normals stray further, so each draw has fewer certain
# bits and more outputs are used
ATTEMPTS = ((4, 2400), (24, 2700))
_U24 = float(1 << 24)


@dataclass
class StreamRecovery:
    """Where the generator stood when theta_0 was drawn: ``words`` are the 624 untempered words
    at the first normal draw (output 0 of the window), ``end`` the number of outputs from there to
    the end of theta_0's normal draws (``tensors``, in stream order)."""

    recovered: bool
    reason: str
    words: Optional[np.ndarray] = None
    end: int = 0
    tensors: List[str] = field(default_factory=list)
    equations: int = 0
    unknowns: int = 0
    rank: int = 0
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["words"] = None if self.words is None else "".join(f"{int(v):08x}" for v in self.words)
        return d


def kaiming_std(shape: Sequence[int], sample_std: float) -> Optional[float]:
    """The float32 std torch used for a weight of ``shape``: kaiming_normal_'s gain / sqrt(fan)
    for fan_in or fan_out and the ReLU (sqrt 2) or linear (1) gain, whichever is nearest to the
    sample's (None if none is within 25%)."""
    rf = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    fans = (shape[1] * rf, shape[0] * rf)
    cands = [g / math.sqrt(f) for f in fans for g in (math.sqrt(2.0), 1.0) if f > 0]
    if not cands or not sample_std > 0:
        return None
    best = min(cands, key=lambda c: abs(math.log(sample_std / c)))
    return float(np.float32(best)) if abs(math.log(sample_std / best)) < 0.25 else None


def _layout(n: int) -> Tuple[List[Tuple[int, int, int, int]], int]:
    """normal_'s pairs for n elements: (position j, position j+8, output of u_j, output of
    u_{j+8}) relative to the tensor's first output, and the outputs it consumes."""
    pairs = []
    cut = n - 16 if n % 16 else n  # positions from here on are redrawn
    for i in range(0, n - 15, 16):
        for j in range(8):
            a, b = i + j, i + j + 8
            if b < cut:
                pairs.append((a, b, a, b))
    if n % 16:
        for j in range(8):
            pairs.append((n - 16 + j, n - 8 + j, n + j, n + j + 8))
    return pairs, _consumed(n)


def _consumed(n: int) -> int:
    """Outputs normal_ takes for n >= 16 elements: n, and 16 more when it redraws the tail."""
    return n + (16 if n % 16 else 0)


def _invert(
    w: np.ndarray, std: float, pairs: List[Tuple[int, int, int, int]], tol: int
) -> Tuple[np.ndarray, np.ndarray]:
    """(output positions, estimated 24-bit uniforms) of the usable pairs of one tensor."""
    p = np.asarray(pairs, dtype=np.int64).reshape(-1, 4)
    z1 = w[p[:, 0]].astype(np.float64) / std
    z2 = w[p[:, 1]].astype(np.float64) / std
    r2 = z1 * z1 + z2 * z2
    theta = np.arctan2(z2, z1) % (2 * math.pi)
    u1 = -np.expm1(-r2 / 2)  # 1 - exp(-r^2 / 2)
    u2 = theta / (2 * math.pi)
    U1, U2 = np.rint(u1 * _U24), np.rint(u2 * _U24)
    lim = 2 * tol
    ok = (r2 > 1e-10) & (U2 >= lim) & (U2 <= _U24 - lim) & (U1 >= lim) & (U1 <= _U24 - lim)
    pos = np.concatenate([p[ok, 2], p[ok, 3]])
    est = np.concatenate([U1[ok], U2[ok]]).astype(np.int64)
    return pos, est


def _certain(est: np.ndarray, tol: int) -> Tuple[np.ndarray, np.ndarray]:
    """(mask, value) of the bits shared by every integer within ``tol`` of each estimate."""
    lo = np.clip(est - tol, 0, (1 << 24) - 1)
    hi = np.clip(est + tol, 0, (1 << 24) - 1)
    diff = lo ^ hi
    width = np.zeros_like(diff)
    nz = diff > 0
    width[nz] = np.floor(np.log2(diff[nz])).astype(np.int64) + 1
    mask = ((1 << 24) - 1) & ~((np.int64(1) << width) - 1)
    return mask.astype(np.uint32), (lo & mask).astype(np.uint32)


def normal_draws(state: Dict[str, np.ndarray], names: Sequence[str]) -> List[Tuple[str, float]]:
    """The candidates for theta_0's normal draws: weights of two or more dimensions with 16 or
    more elements, in the order given, with the std kaiming_normal_ would have used."""
    out = []
    for k in names:
        v = state[k]
        if v.ndim < 2 or v.size < 16 or v.dtype != np.float32:
            continue
        std = kaiming_std(v.shape, float(np.std(v.astype(np.float64))))
        if std is not None:
            out.append((k, std))
    return out


def recover_stream(state: Dict[str, np.ndarray], names: Sequence[str]) -> StreamRecovery:
    """Recovers the generator from theta_0 (``state``: name -> float32 array; ``names``: the
    model's state-dict order, which is the order the reference's init draws them in)."""
    t0 = time.perf_counter()
    cands = normal_draws(state, names)
    if not cands:
        return StreamRecovery(False, "theta_0 has no weights drawn by kaiming_normal_ (no normal draws to invert)")
    rec = StreamRecovery(False, "")
    for tol, window in ATTEMPTS:
        rec = _attempt(state, cands, tol, window)
        if rec.recovered or rec.reason.startswith("the solved stream reproduces"):
            break  # solved: a wider tolerance would find the same stream
    rec.seconds = round(time.perf_counter() - t0, 3)
    return rec


def _attempt(state: Dict[str, np.ndarray], cands: List[Tuple[str, float]], tol: int, window: int) -> StreamRecovery:
    obs_pos: List[np.ndarray] = []
    obs_est: List[np.ndarray] = []
    start = 0
    for name, std in cands:
        pairs, used = _layout(state[name].size)
        pos, est = _invert(state[name].reshape(-1), std, pairs, tol)
        obs_pos.append(pos + start)
        obs_est.append(est)
        start += used
        if start >= window:
            break
    pos = np.concatenate(obs_pos)
    est = np.concatenate(obs_est)
    keep = pos < window
    pos, est = pos[keep], est[keep]
    L = int(pos.max()) + 1 if pos.size else 0
    if L < 2000:
        return StreamRecovery(False, f"theta_0's normal draws give {L} consecutive outputs; recovery needs about 2,000")
    words, info = _solve(pos, est, L, tol)
    rec = StreamRecovery(False, "", None, 0, [], info[0], info[1], info[2])
    if words is None:
        rec.reason = "the equations from theta_0 have no solution (its weights are not one unseeded torch stream's)"
    else:
        _extend(rec, words, state, cands, pos, est, tol)
    return rec


def _solve(pos: np.ndarray, est: np.ndarray, L: int, tol: int) -> Tuple[Optional[np.ndarray], Tuple[int, int, int]]:
    from .. import _core

    mask, value = _certain(est, tol)
    known = np.zeros(L, dtype=np.uint32)  # certain bits per output (0 where unobserved)
    kval = np.zeros(L, dtype=np.uint32)
    known[pos], kval[pos] = mask, value
    # unknowns: the uncertain bits of outputs 0..623, numbered in order
    first = known[: mt.N]
    unk = [(i, k) for i in range(mt.N) for k in range(32) if not (int(first[i]) >> k) & 1]
    F = len(unk)
    NW = F // 64 + 1
    y = np.zeros((mt.N, 32, NW), dtype=np.uint64)
    bits = (kval[: mt.N, None] >> np.arange(32, dtype=np.uint32)[None, :]) & np.uint32(1)
    y[:, :, F // 64] |= bits.astype(np.uint64) << np.uint64(F % 64)  # known bits: the constant column
    for v, (i, k) in enumerate(unk):
        y[i, k, v // 64] |= np.uint64(1) << np.uint64(v % 64)
    Ti, T = mt.untemper_matrix(), mt.temper_matrix()
    w = np.zeros((L, 32, NW), dtype=np.uint64)
    for b in range(32):
        for kk in np.nonzero(Ti[b])[0]:
            w[: mt.N, b] ^= y[:, kk]
    k0 = mt.N
    while k0 < L:
        e = min(k0 + mt.N - mt.M, L)
        w[k0:e] = mt.twist_rows(
            w[k0 - mt.N : e - mt.N], w[k0 - mt.N + 1 : e - mt.N + 1], w[k0 - mt.N + mt.M : e - mt.N + mt.M]
        )
        k0 = e
    later = np.arange(mt.N, L)
    later = later[known[later] != 0]
    rows = []
    for k in range(24):
        sel = later[(known[later] >> np.uint32(k)) & np.uint32(1) == 1]
        if not sel.size:
            continue
        r = np.zeros((sel.size, NW), dtype=np.uint64)
        for bb in np.nonzero(T[k])[0]:
            r ^= w[sel, bb]
        rhs = ((kval[sel] >> np.uint32(k)) & np.uint32(1)).astype(np.uint64)
        r[:, F // 64] ^= rhs << np.uint64(F % 64)
        rows.append(r)
    A = np.concatenate(rows) if rows else np.zeros((0, NW), dtype=np.uint64)
    x, rank, bad, _ = _core.gf2_solve(A, F)
    info = (int(A.shape[0]), F, int(rank))
    if bad:
        return None, info
    # the words: the known bits and the solved ones, untempered
    out = kval[: mt.N].copy()
    for v, (i, k) in enumerate(unk):
        if x[v]:
            out[i] |= np.uint32(1 << k)
    words = np.zeros(mt.N, dtype=np.uint32)
    for b in range(32):
        acc = np.zeros(mt.N, dtype=np.uint32)
        for kk in np.nonzero(Ti[b])[0]:
            acc ^= (out >> np.uint32(kk)) & np.uint32(1)
        words |= acc << np.uint32(b)
    # bits 0..30 of the first word reach no later output: take them from the twist that made
    # word 623 (free variables of the solve may only sit there; the checks below confirm it)
    nxt = mt.generate(words, mt.N + 1)
    words[0] = (words[0] & np.uint32(mt.UPPER)) | (mt.untwist_back(nxt[1 : mt.N + 1], 1)[0] & np.uint32(mt.LOWER))
    return words, info


def _extend(
    rec: StreamRecovery,
    words: np.ndarray,
    state: Dict[str, np.ndarray],
    cands: List[Tuple[str, float]],
    pos: np.ndarray,
    est: np.ndarray,
    tol: int,
) -> None:
    """Accepts the solve if it reproduces every observed draw, then follows theta_0's normal
    draws tensor by tensor while the stream reproduces them."""
    total = sum(_consumed(state[n].size) for n, _ in cands)
    u = (mt.temper(mt.generate(words, total)) & np.uint32(0xFFFFFF)).astype(np.int64)
    if np.abs(u[pos] - est).max(initial=0) > tol:
        rec.reason = "the solved stream does not reproduce theta_0's draws"
        return
    start = 0
    for name, std in cands:
        pairs, used = _layout(state[name].size)
        if start + used > total or not _reproduces(state[name].reshape(-1), std, pairs, u[start : start + used]):
            break
        rec.tensors.append(name)
        start += used
    if len(rec.tensors) < len(cands):
        # the DataLoader draws after the last normal draw: a stream that stops matching part-way
        # (a tampered theta_0, another init for some layers) cannot place the augmentation
        rec.reason = (
            f"the solved stream reproduces {len(rec.tensors)} of theta_0's {len(cands)} normal-drawn weights "
            f"(not {cands[len(rec.tensors)][0]}): theta_0 is not one unseeded stream's draws"
        )
        rec.tensors = []
        return
    rec.recovered, rec.words, rec.end = True, words, start
    rec.reason = (
        f"recovered from {len(pos)} draws of theta_0; the stream reproduces {len(rec.tensors)} normal-drawn weights"
    )


def _reproduces(w: np.ndarray, std: float, pairs: List[Tuple[int, int, int, int]], u: np.ndarray) -> bool:
    """Whether these uniforms give the tensor's values by Box-Muller (to float32 rounding)."""
    p = np.asarray(pairs, dtype=np.int64).reshape(-1, 4)
    u1 = u[p[:, 2]] / _U24
    u2 = u[p[:, 3]] / _U24
    r = np.sqrt(-2.0 * np.log1p(-u1))
    a = 2 * math.pi * u2
    want = np.concatenate([r * np.cos(a), r * np.sin(a)]) * std
    have = np.concatenate([w[p[:, 0]], w[p[:, 1]]]).astype(np.float64)
    return bool(np.all(np.abs(want - have) <= 1e-5 * std * np.maximum(1.0, np.abs(want / std))))


# The reference's training transforms per data set (utils.load_dataset): (names in Compose
# order, crop padding). CIFAR-100 adds RandomRotation(15), whose PIL resampling exactforge does
# not replay: its draws are recovered but the proof falls back to the calibrated path.
AUGMENTATIONS: Dict[str, Tuple[Tuple[str, ...], int]] = {
    "cifar10": (("hflip", "crop"), 4),
    "cifar100": (("crop", "hflip", "rotate15"), 4),
}


def reference_augmentation(
    theta0: Dict[str, np.ndarray], names: Sequence[str], *, dataset: str, batch_size: int, workers: int = 0
) -> Tuple[Optional[Dict[str, Any]], StreamRecovery, str]:
    """The manifest ``augment`` entry that replays a reference proof's augmentation (None where
    the data set has none or it cannot be replayed), the recovery, and a sentence for the
    report."""
    from ..nn.augment import STREAM_TRANSFORMS, StreamAugment

    if dataset not in AUGMENTATIONS:
        return None, StreamRecovery(False, "no augmentation"), f"none (the reference does not augment {dataset})"
    transforms, padding = AUGMENTATIONS[dataset]
    rec = recover_stream(theta0, names)
    if not rec.recovered or rec.words is None:
        return None, rec, f"NOT recovered: {rec.reason}"
    if not set(transforms) <= set(STREAM_TRANSFORMS):
        return (
            None,
            rec,
            (
                f"stream recovered, but {', '.join(t for t in transforms if t not in STREAM_TRANSFORMS)} is not "
                "replayed bit for bit"
            ),
        )
    words = mt.generate(rec.words, rec.end + mt.N)[rec.end :]  # where the DataLoader draws its base seed
    aug = StreamAugment(
        "".join(f"{int(v):08x}" for v in words),
        batch_size=batch_size,
        transforms=transforms,
        padding=padding,
        workers=workers,
    )
    return aug.to_dict(), rec, f"recovered from theta_0 ({rec.reason}; {rec.seconds:.1f} s)"
