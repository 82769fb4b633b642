"""A search's candidates certified and counted into its result: the candidates of sampled
true batches one by one, and the pairs of the every-batch enumeration by class, where the
batches that differ only in zero-influence examples are counted, not listed."""

from __future__ import annotations

import math
from typing import Any, List, Optional

import numpy as np

from .certify import certify


def tally_sampled(res: Any, found_sets: Any, truths: List[List[int]], eg: Any, G: Optional[np.ndarray]) -> None:
    """Certifies each candidate against its true batch and counts it into ``res``: a forgery by
    its certificate, a trivial one (zero-influence examples swapped), or a false candidate."""
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


def count_every_batch(res: Any, found: dict, eg: Any, rows: Any, zeros: Any, b: int) -> None:
    """Counts ``found`` into ``res``: batches with a forgery, trivial ones, certified pairs per
    level, and up to 10 examples of each."""
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
