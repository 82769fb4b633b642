"""The portable optimizer update (exactforge.nn.update): each operation rounded as its written
formula says, checked against exact rational arithmetic; torch's SGD reproduced bit for bit on
torch's vectorised builds; the optimizer's own loop, state and hooks left as they were."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exactforge import _core
from exactforge.nn.update import portable_step, pow_rn, reproducible_optimizer

from conftest import round_fraction


def fma(a, b, c):
    t = type(a)
    return t(round_fraction(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)), t))


def lerp(a, b, w):
    one = type(w)(1)
    return fma(w, b - a, a) if abs(w) < type(w)(0.5) else fma(w - one, b - a, b)


def sgd_ref(p, g, buf, T, lr, wd, mom, damp, nesterov, maximize, first):
    g = -g if maximize else g
    if wd:
        g = fma(p, T(wd), g)
    if mom:
        buf = g if first else fma(g, T(1 - damp), buf * T(mom))
        g = fma(buf, T(mom), g) if nesterov else buf
    return fma(g, T(-lr), p), buf


def adam_ref(p, g, m, v, vmax, T, lr, b1, b2, eps, wd, decoupled, n):
    if decoupled:
        p = p * T(1 - lr * wd)
    elif wd:
        g = fma(p, T(wd), g)
    m = lerp(m, g, T(1 - b1))
    v = fma(g * T(1 - b2), g, v * T(b2))
    second = v if vmax is None else max(vmax, v)
    d = np.sqrt(second) / T(math.sqrt(1 - pow_rn(b2, n))) + T(eps)
    return (T(-(lr / (1 - pow_rn(b1, n)))) * m) / d + p, m, v, (None if vmax is None else second)


def rms_ref(p, g, sq, ga, buf, T, lr, alpha, eps, wd, mom, centered):
    if wd:
        g = fma(p, T(wd), g)
    sq = fma(g * T(1 - alpha), g, sq * T(alpha))
    if centered:
        ga = lerp(ga, g, T(1 - alpha))
        a = np.sqrt(fma(-ga, ga, sq))
    else:
        a = np.sqrt(sq)
    a = a + T(eps)
    if mom > 0:
        buf = g / a + buf * T(mom)
        return fma(buf, T(-lr), p), sq, ga, buf
    return (T(-lr) * g) / a + p, sq, ga, buf


DTYPES = st.sampled_from([np.float32, np.float64])


def arrays(n, dtype, seed, scale=1.0, positive=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * scale
    return (np.abs(x) if positive else x).astype(dtype)


@settings(max_examples=25, deadline=None)
@given(
    T=DTYPES,
    seed=st.integers(0, 2**32 - 1),
    lr=st.floats(1e-4, 1.0),
    wd=st.sampled_from([0.0, 1e-4, 0.1]),
    mom=st.sampled_from([0.0, 0.5, 0.9]),
    damp=st.sampled_from([0.0, 0.1]),
    nesterov=st.booleans(),
    maximize=st.booleans(),
    first=st.booleans(),
)
def test_sgd_rounds_as_written(T, seed, lr, wd, mom, damp, nesterov, maximize, first):
    n = 9
    p, g, buf = arrays(n, T, seed), arrays(n, T, seed + 1, 1e-2), arrays(n, T, seed + 2, 1e-2)
    want = [sgd_ref(p[i], g[i], buf[i], T, lr, wd, mom, damp, nesterov, maximize, first) for i in range(n)]
    P, B = p.copy(), buf.copy()
    _core.sgd_update(P, g, B, -lr, wd, mom, 1 - damp, nesterov and mom != 0, maximize, first)
    assert P.tobytes() == np.array([w[0] for w in want], T).tobytes()
    if mom:
        assert B.tobytes() == np.array([w[1] for w in want], T).tobytes()


@settings(max_examples=25, deadline=None)
@given(
    T=DTYPES,
    seed=st.integers(0, 2**32 - 1),
    lr=st.floats(1e-4, 0.1),
    b1=st.sampled_from([0.0, 0.5, 0.9]),
    b2=st.sampled_from([0.9, 0.999]),
    wd=st.sampled_from([0.0, 1e-2]),
    decoupled=st.booleans(),
    amsgrad=st.booleans(),
    n=st.integers(1, 50),
)
def test_adam_rounds_as_written(T, seed, lr, b1, b2, wd, decoupled, amsgrad, n):
    k = 7
    p, g, m = arrays(k, T, seed), arrays(k, T, seed + 1, 1e-2), arrays(k, T, seed + 2, 1e-2)
    v, vmax = arrays(k, T, seed + 3, 1e-4, True), arrays(k, T, seed + 4, 1e-4, True)
    want = [
        adam_ref(p[i], g[i], m[i], v[i], vmax[i] if amsgrad else None, T, lr, b1, b2, 1e-8, wd, decoupled, n)
        for i in range(k)
    ]
    P, M, V, X = p.copy(), m.copy(), v.copy(), vmax.copy()
    bc1, bc2 = 1 - pow_rn(b1, n), 1 - pow_rn(b2, n)
    _core.adam_update(
        P,
        g,
        M,
        V,
        X if amsgrad else None,
        1 - b1,
        b2,
        1 - b2,
        math.sqrt(bc2),
        1e-8,
        -(lr / bc1),
        wd,
        1 - lr * wd,
        decoupled,
        False,
    )
    for j, got in enumerate((P, M, V)):
        assert got.tobytes() == np.array([w[j] for w in want], T).tobytes(), j


@settings(max_examples=25, deadline=None)
@given(
    T=DTYPES,
    seed=st.integers(0, 2**32 - 1),
    lr=st.floats(1e-4, 0.1),
    alpha=st.sampled_from([0.9, 0.99]),
    wd=st.sampled_from([0.0, 1e-2]),
    mom=st.sampled_from([0.0, 0.9]),
    centered=st.booleans(),
)
def test_rmsprop_rounds_as_written(T, seed, lr, alpha, wd, mom, centered):
    k = 7
    p, g, ga, buf = (
        arrays(k, T, seed),
        arrays(k, T, seed + 1, 1e-2),
        arrays(k, T, seed + 2, 1e-3),
        arrays(k, T, seed + 3),
    )
    sq = arrays(k, T, seed + 4, 1e-2, True)
    want = [rms_ref(p[i], g[i], sq[i], ga[i], buf[i], T, lr, alpha, 1e-8, wd, mom, centered) for i in range(k)]
    P, S, G, B = p.copy(), sq.copy(), ga.copy(), buf.copy()
    _core.rmsprop_update(
        P, g, S, G if centered else None, B if mom else None, -lr, alpha, 1 - alpha, 1e-8, wd, mom, centered, False
    )
    assert P.tobytes() == np.array([w[0] for w in want], T).tobytes()
    assert S.tobytes() == np.array([w[1] for w in want], T).tobytes()


@settings(max_examples=40, deadline=None)
@given(x=st.floats(0.5, 1.0, exclude_max=True), n=st.integers(0, 3000))
def test_pow_rn_is_the_nearest_double(x, n):
    assert pow_rn(x, n) == float(Fraction(x) ** n)


def test_native_update_refuses_mismatched_arrays():
    p = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="grad"):
        _core.sgd_update(p, np.zeros(3, np.float32), None, -0.1, 0.0, 0.0, 1.0, False, False, False)
    with pytest.raises(ValueError, match="buf"):
        _core.sgd_update(p, np.zeros(4, np.float32), None, -0.1, 0.0, 0.9, 1.0, False, False, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        _core.sgd_update(p.astype(np.float16), np.zeros(4, np.float16), None, -0.1, 0.0, 0.0, 1.0, False, False, False)
    with pytest.raises(ValueError, match="share memory"):
        _core.sgd_update(p, p, None, -0.1, 0.0, 0.0, 1.0, False, False, False)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        _core.sgd_update(ro, np.zeros(4, np.float32), None, -0.1, 0.0, 0.0, 1.0, False, False, False)


def _train(make, portable: bool, steps: int = 4):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(37, 13), torch.nn.Tanh(), torch.nn.Linear(13, 3))
    opt = make(model.parameters())
    if portable:
        reproducible_optimizer(opt)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = model(torch.randn(8, 37, generator=gen)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


SGDS = {
    "plain": lambda p: torch.optim.SGD(p, lr=0.1),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    "nesterov-maximize": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, maximize=True),
    "foreach": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, foreach=True),
}


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() == "DEFAULT", reason="torch's scalar build rounds SGD's update twice"
)
@pytest.mark.parametrize("name", sorted(SGDS))
def test_sgd_is_torchs_own_on_its_vectorised_builds(name):
    """SGD has no square root: on torch's AVX2 and AVX-512 builds the portable update is
    torch's own, bit for bit, so nothing changes where torch was already right."""
    a, _ = _train(SGDS[name], False)
    b, _ = _train(SGDS[name], True)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


def test_the_optimizer_stays_torchs():
    """state_dict round trip, grads still there after step(), the LR scheduler unaffected,
    remove() gives torch's update back, a closure and an unknown optimizer are refused."""
    model, opt = _train(lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True), True)
    st = opt.state_dict()
    assert set(st["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert st["state"][0]["step"].dtype == torch.float32 and float(st["state"][0]["step"]) == 4.0
    assert all(p.grad is not None for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 5e-3
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="closure"):
        opt.step(lambda: 0.0)
    handle = reproducible_optimizer(opt)
    assert reproducible_optimizer(opt) is handle
    handle.remove()
    assert not hasattr(opt, "_exactforge_portable")
    with pytest.raises(ValueError, match="Adagrad has no portable update"):
        portable_step(torch.optim.Adagrad(model.parameters()))
    with pytest.raises(ValueError, match="fused"):
        reproducible_optimizer(torch.optim.Adam(model.parameters(), fused=True))


def test_a_non_contiguous_parameter_is_updated_in_place():
    w = torch.zeros(4, 6).t()  # a transposed view: not contiguous
    w.requires_grad_(True)
    w.grad = torch.ones(6, 4).t().contiguous().t()
    opt = torch.optim.SGD([w], lr=0.5, momentum=0.9)
    portable_step(opt)
    assert torch.equal(w.detach(), torch.full((6, 4), -0.5))
    assert torch.equal(opt.state[w]["momentum_buffer"], torch.ones(6, 4))


@pytest.mark.parametrize("installed_by_the_loop", [False, True])
def test_a_recorder_keeps_the_loops_own_portable_update(tmp_path, installed_by_the_loop):
    """The recorder steps the optimizer through the portable update inside its block; a handle
    the loop installed itself stays the loop's after the block, else torch's update returns."""
    import exactforge.nn as xnn
    from exactforge.data import load_digits
    from exactforge.trace.record import TraceRecorder
    from exactforge.verify import verify_trace

    data = load_digits()
    X, y = torch.from_numpy(data.X), torch.from_numpy(data.y)

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))

    model = xnn.reproducible(net())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mine = xnn.reproducible_optimizer(opt) if installed_by_the_loop else None
    out = str(tmp_path / "t")
    rng = np.random.default_rng(0)
    with TraceRecorder(out, model, opt, data, steps=3, batch_size=16, loss_fn=xnn.cross_entropy) as rec:
        for _ in range(3):
            idx = rng.choice(len(data), 16, replace=False)
            loss = xnn.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(idx)
    assert getattr(opt, "_exactforge_portable", None) is mine
    rep = verify_trace(out, model=net(), epsilon=0.0)
    assert rep.accepted and rep.max_error == 0.0 and rep.arithmetic == "portable-1", rep.reason
