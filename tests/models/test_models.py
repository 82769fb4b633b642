"""Native models: bitwise reproducibility of the SGD step and conformance with torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from exactforge.data import load_digits
from exactforge.models import native as M
from exactforge.models.torch_fcn import TorchFCN, from_torch, to_torch

DIGITS = load_digits()
SPECS = [
    M.ModelSpec("logreg", 64, 10),
    M.ModelSpec("logreg", 64, 10, bias=False),
    M.ModelSpec("fcn", 64, 10, (32,)),
    M.ModelSpec("fcn", 64, 10, (16, 8), dtype="float64"),
]


def _bits(params):
    return b"".join(np.ascontiguousarray(v).tobytes() for v in params.values())


@given(
    seed=st.integers(0, 10_000),
    b=st.integers(2, 300),
    spec_i=st.integers(0, len(SPECS) - 1),
    mode=st.sampled_from(["fixed", "exact"]),
    threads=st.integers(1, 3),
)
def test_permuting_the_batch_gives_bitwise_identical_next_checkpoint(seed, b, spec_i, mode, threads):
    spec = SPECS[spec_i]
    rng = np.random.default_rng(seed)
    params = M.init_params(spec, seed)
    X = DIGITS.X.astype(spec.dtype)
    idx = rng.choice(len(X), b, replace=False)
    p = rng.permutation(b)
    ref = M.sgd_step(spec, params, X[idx], DIGITS.y[idx], idx, 0.05, mode=mode, threads=1)
    got = M.sgd_step(spec, params, X[idx[p]], DIGITS.y[idx[p]], idx[p], 0.05, mode=mode, threads=threads)
    assert _bits(ref) == _bits(got)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}{s.hidden}-{s.dtype}-bias{s.bias}")
def test_native_gradient_matches_torch_autograd(spec):
    params = M.init_params(spec, 3)
    idx = np.arange(0, 1000, 3)
    X = DIGITS.X.astype(spec.dtype)
    loss, g = M.loss_and_grad(spec, params, X[idx], DIGITS.y[idx], idx)
    model = to_torch(spec, params)
    out = torch.nn.functional.cross_entropy(model(torch.from_numpy(X[idx])), torch.from_numpy(DIGITS.y[idx]))
    out.backward()
    tol = 1e-6 if spec.dtype == "float32" else 1e-12
    assert abs(loss - out.item()) <= tol * 10
    for i, layer in enumerate(model.layers, start=1):
        assert np.allclose(g[f"W{i}"], layer.weight.grad.numpy().T, atol=tol, rtol=1e-4)
        if spec.bias:
            assert np.allclose(g[f"b{i}"], layer.bias.grad.numpy(), atol=tol, rtol=1e-4)


@pytest.mark.parametrize("spec", SPECS[:3])
def test_torch_conversion_round_trips_exactly(spec):
    params = M.init_params(spec, 5)
    back = from_torch(spec, to_torch(spec, params))
    assert _bits(back) == _bits(params)
    assert isinstance(to_torch(spec, params), TorchFCN)


def test_per_example_quantities():
    spec = SPECS[2]
    params = M.init_params(spec, 1)
    idx = np.arange(50)
    pe = M.per_example(spec, params, DIGITS.X[idx], DIGITS.y[idx])
    assert pe.losses.shape == (50,) and pe.grad_norms.shape == (50, 2)
    assert [d.shape for d in pe.errors] == [(50, 32), (50, 10)]
    assert np.allclose(pe.errors[-1].sum(axis=1), 0, atol=1e-6)  # Lemma 1: output error rows sum to 0
    # the mean of per-example gradients A_i^T D_i / b is the batch gradient
    _, g = M.loss_and_grad(spec, params, DIGITS.X[idx], DIGITS.y[idx], idx)
    assert np.allclose(pe.activations[1].T @ pe.errors[1] / 50, g["W2"], atol=1e-6)
    # per-example weight-gradient norm of layer 1 = ||x|| * ||d1||
    k = 7
    per = np.outer(pe.activations[0][k], pe.errors[0][k])
    assert np.isclose(np.linalg.norm(per), pe.grad_norms[k, 0], rtol=1e-5)


def test_model_spec_validation():
    with pytest.raises(ValueError, match="hidden"):
        M.ModelSpec("fcn", 64, 10)
    with pytest.raises(ValueError, match="kind"):
        M.ModelSpec("cnn", 64, 10)
    with pytest.raises(ValueError, match="dtype"):
        M.ModelSpec("logreg", 64, 10, dtype="float16")
    spec = M.ModelSpec("fcn", 64, 10, (4, 3))
    assert M.ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="shape"):
        M.check_params(spec, {**M.init_params(spec), "W1": np.zeros((3, 3), np.float32)})


def test_native_exp_log_special_values_and_accuracy():
    from exactforge._backend.native import _core

    x = np.array([-1000.0, -745.0, 0.0, 1.0, 709.0, 710.0, np.inf, -np.inf, np.nan])
    e = _core.exp(x)
    assert e[0] == 0.0 and e[2] == 1.0 and np.isinf(e[5]) and np.isinf(e[6]) and e[7] == 0.0 and np.isnan(e[8])
    assert np.allclose(e[1:5], np.exp(x[1:5]), rtol=1e-15)
    lx = np.array([0.0, -1.0, 1.0, 5e-324, 1e300, np.inf, np.nan])
    lg = _core.log(lx)
    assert lg[0] == -np.inf and np.isnan(lg[1]) and lg[2] == 0.0 and lg[5] == np.inf and np.isnan(lg[6])
    assert np.allclose(lg[3:5], np.log(lx[3:5]), rtol=1e-15)
    r = np.random.default_rng(0).uniform(-50, 50, 10_000)
    assert np.max(np.abs(_core.exp(r) / np.exp(r) - 1)) < 5e-16


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_over_an_array_has_the_elementwise_bits(dtype):
    """exp over an array runs on vectors and threads; each element has the bits of exp of that
    element alone (arrays shorter than a vector take the scalar loop): values across the range,
    near the overflow and underflow thresholds, and random bit patterns (NaN, infinities,
    subnormals)."""
    from exactforge._backend.native import _core

    rng = np.random.default_rng(5)
    u = np.uint32 if dtype == np.float32 else np.uint64
    bits = rng.integers(0, np.iinfo(u).max, 3000, dtype=np.uint64, endpoint=True).astype(u).view(dtype)
    edges = [709.782712893384, 709.79, -745.2, -745.1, -103.9, 88.72, -0.0]
    x = np.concatenate([np.concatenate([rng.uniform(-760, 720, 3000), edges]).astype(dtype), bits])
    whole = _core.exp(x)
    alone = np.concatenate([_core.exp(x[i : i + 1].copy()) for i in range(len(x))])
    assert np.array_equal(whole.view(u), alone.view(u))
    big = np.repeat(x, 20)  # long enough for the threads
    assert np.array_equal(_core.exp(big).view(u), np.repeat(alone, 20).view(u))


def test_batches_drawn_with_replacement_are_still_order_free():
    spec = SPECS[2]
    params = M.init_params(spec, 0)
    rng = np.random.default_rng(4)
    idx = rng.integers(0, 40, 120)  # many repeated examples
    p = rng.permutation(120)
    a = M.sgd_step(spec, params, DIGITS.X[idx], DIGITS.y[idx], idx, 0.1)
    b = M.sgd_step(spec, params, DIGITS.X[idx[p]], DIGITS.y[idx[p]], idx[p], 0.1, threads=1)
    assert _bits(a) == _bits(b)
    with pytest.raises(ValueError, match="keys"):
        M.loss_and_grad(spec, params, DIGITS.X[idx], DIGITS.y[idx], idx[:5])


def test_mathfn_accepts_torch_and_matches_numpy_bits():
    from exactforge import mathfn

    x = np.linspace(-20, 20, 1001, dtype=np.float32)
    t = mathfn.exp(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor) and t.numpy().tobytes() == mathfn.exp(x).tobytes()
    assert mathfn.log(torch.from_numpy(x[x > 0])).numpy().tobytes() == mathfn.log(x[x > 0]).tobytes()
    with pytest.raises(TypeError, match="x:"):
        mathfn.exp([1.0, 2.0])


def test_a_schedule_follows_to_the_last_places_of_a_c_librarys_cos():
    """A scheduler's rate computed with another machine's cos or pow may differ in its last
    place: still the declared schedule; a rate changed beyond that is not."""
    import math

    from exactforge.models.schedule import first_difference

    rates = [(0.1, 0.2), (0.05, math.cos(0.3))]
    assert first_difference(rates, [(0.1, 0.2), (0.05, math.nextafter(math.cos(0.3), 1.0))]) is None
    assert first_difference(rates, [(0.1, 0.2), (0.05, math.cos(0.3) * (1 + 1e-9))]) == 1
    assert first_difference(rates, [(0.1,), (0.05, math.cos(0.3))]) == 0
