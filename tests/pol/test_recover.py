"""The unlogged randomness of an unseeded torch process, recovered from theta_0: the GF(2)
solver, the generator model against torch's own draws, and the reference's augmentation stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from exactforge import _core
from exactforge.models.zoo import build_model
from exactforge.nn import StreamAugment, augment_from_dict
from exactforge.nn import mt19937 as mt
from exactforge.pol import recover
from exactforge.pol.recover import recover_stream


def _pack(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    R, n = A.shape
    bits = np.concatenate([A, b[:, None]], axis=1).astype(np.uint64)
    W = n // 64 + 1
    rows = np.zeros((R, W), dtype=np.uint64)
    for c in range(n + 1):
        rows[:, c // 64] |= bits[:, c] << np.uint64(c % 64)
    return rows


@given(st.integers(1, 130), st.integers(0, 2**32 - 1), st.floats(0.5, 2.0))
def test_gf2_solution_satisfies_every_equation(n: int, seed: int, ratio: float) -> None:
    rng = np.random.default_rng(seed)
    R = max(1, int(n * ratio))
    A = rng.integers(0, 2, (R, n), dtype=np.uint8)
    planted = rng.integers(0, 2, n, dtype=np.uint8)
    b = (A.astype(np.int64) @ planted % 2).astype(np.uint8)
    rows = _pack(A, b)
    before = rows.copy()
    x, rank, bad, pivots = _core.gf2_solve(rows, n)
    assert np.array_equal(rows, before)  # the caller's equations are kept
    assert bad == 0 and rank == len(pivots) <= min(R, n)
    assert np.array_equal(A.astype(np.int64) @ x % 2, b)
    # free variables are 0
    free = np.setdiff1d(np.arange(n), pivots)
    assert not x[free].any()


def test_gf2_counts_contradictions() -> None:
    A = np.array([[1, 1], [1, 1]], dtype=np.uint8)
    x, rank, bad, _ = _core.gf2_solve(_pack(A, np.array([0, 1], dtype=np.uint8)), 2)
    assert (rank, bad) == (1, 1)
    with pytest.raises(ValueError, match="ncols"):
        _core.gf2_solve(np.zeros((2, 1), dtype=np.uint64), 64)
    with pytest.raises(TypeError, match="uint64"):
        _core.gf2_solve(np.zeros((2, 1), dtype=np.int32), 3)


@given(st.integers(0, 2**32 - 1))
def test_generator_model_matches_torch(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    out = mt.temper(mt.generate(mt.init_genrand(seed), mt.N + 700)[mt.N :])
    base = torch.empty((), dtype=torch.int64).random_(generator=g).item()
    assert base == ((int(out[0]) << 32) | int(out[1])) % (1 << 63)
    u = torch.rand(600, generator=g).numpy()
    assert np.array_equal(u, ((out[2:602] & 0xFFFFFF) / 2.0**24).astype(np.float32))
    words = mt.generate(mt.init_genrand(seed), mt.N + 700)
    back = mt.untwist_back(words[mt.N + 50 : 2 * mt.N + 50], 40)
    assert np.array_equal(back[1:], words[mt.N + 11 : 2 * mt.N + 50])


def _torch_draws(g: torch.Generator, count: int) -> np.ndarray:
    """The reference's CIFAR-10 transforms drawing as torchvision does: RandomHorizontalFlip
    (rand(1) < 0.5), then RandomCrop(32, padding=4)'s row and column (randint(0, 9) each)."""
    out = []
    for _ in range(count):
        flip = bool(torch.rand(1, generator=g) < 0.5)
        i = int(torch.randint(0, 9, size=(1,), generator=g).item())
        j = int(torch.randint(0, 9, size=(1,), generator=g).item())
        out.append((flip, i, j))
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_augment_draws_as_torchvision(workers: int) -> None:
    seed, B = 1234, 5
    words = mt.generate(mt.init_genrand(seed), 2 * mt.N)[mt.N :]
    aug = StreamAugment("".join(f"{int(v):08x}" for v in words), batch_size=B, workers=workers)
    g = torch.Generator().manual_seed(seed)
    base = torch.empty((), dtype=torch.int64).random_(generator=g).item()
    assert aug.base_seed() == base
    if workers == 0:
        want = _torch_draws(g, 4 * B)
        got = np.concatenate([aug.draws(t, B) for t in range(4)])
    else:  # worker w seeds its own generator with base + w and serves batches w, w + 2, ...
        per = {w: _torch_draws(torch.Generator().manual_seed(base + w), 2 * B) for w in range(2)}
        want = np.concatenate([per[t % 2][(t // 2) * B : (t // 2 + 1) * B] for t in range(4)])
        got = np.concatenate([aug.draws(t, B) for t in range(4)])
    assert np.array_equal(got, want)
    assert augment_from_dict(aug.to_dict()).to_dict() == aug.to_dict()


def test_stream_augment_follows_a_permuted_batch() -> None:
    words = mt.generate(mt.init_genrand(5), 2 * mt.N)[mt.N :]
    logged = np.array([[3, 1, 2, 1]])
    aug = StreamAugment("".join(f"{int(v):08x}" for v in words), batch_size=4, batches=lambda t: logged[t])
    x = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).reshape(4, 3, 8, 8)
    y = aug(x, step=0, examples=logged[0])
    perm = [2, 0, 3, 1]
    z = aug(x[perm], step=0, examples=logged[0][perm])
    assert torch.equal(z[[1, 3, 0, 2]][[0, 2]], y[[0, 2]])  # examples 3 and 2 keep their draws
    with pytest.raises(ValueError, match="logged batch"):
        aug(x, step=0, examples=[9, 9, 9, 9])


@pytest.mark.parametrize(
    "change, match",
    [
        ({"words": "zz"}, "words"),
        ({"words": "g" * 8 * mt.N}, "hex"),
        ({"padding": 65}, "padding"),
        ({"padding": 4.0}, "padding"),
        ({"transforms": ["rot90"]}, "transforms"),
        ({"transforms": ["crop", "crop"]}, "transforms"),
        ({"workers": -1}, "workers"),
        ({"extra": 1}, "fields"),
        ({"kind": "other"}, "kind"),
    ],
)
def test_stream_augment_refuses_bad_entries(change: dict, match: str) -> None:
    entry = StreamAugment("0" * 8 * mt.N, batch_size=2).to_dict()
    entry.update(change)
    with pytest.raises(ValueError, match=match):
        augment_from_dict(entry)


def test_recovery_places_the_dataloader_seed() -> None:
    """An unseeded process as the reference runs it: theta_0 from kaiming_normal_, then the
    DataLoader's base seed. Recovery from theta_0 alone must predict that seed."""
    torch.manual_seed(987654321)
    net = build_model("resnet20", (3, 32, 32), 10)
    base = torch.empty((), dtype=torch.int64).random_().item()
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    rec = recover_stream(state, list(state))
    assert rec.recovered, rec.reason
    assert rec.end == sum(v.numel() + (16 if v.numel() % 16 else 0) for k, v in net.state_dict().items() if v.dim() > 1)
    words = mt.generate(rec.words, rec.end + mt.N)[rec.end :]
    aug = StreamAugment("".join(f"{int(v):08x}" for v in words), batch_size=1)
    assert aug.base_seed() == base


def test_recovery_says_why_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    small = torch.nn.Conv2d(3, 16, 3)  # 432 normal draws: too few to pin the stream
    torch.nn.init.kaiming_normal_(small.weight)
    state = {"w": small.weight.detach().numpy()}
    rec = recover_stream(state, list(state))
    assert not rec.recovered and "2,000" in rec.reason
    monkeypatch.setattr(recover, "ATTEMPTS", recover.ATTEMPTS[:1])
    torch.manual_seed(4)
    res = build_model("resnet20", (3, 32, 32), 10)
    state = {k: v.detach().numpy().copy() for k, v in res.state_dict().items()}
    state["conv1.weight"] *= np.float32(1.001)  # not the draws of any stream
    rec = recover_stream(state, list(state))
    assert not rec.recovered and "no solution" in rec.reason
