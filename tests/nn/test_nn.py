"""exactforge.nn: reproducible torch layers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import exactforge
import exactforge.nn as xnn

EXAMPLES = settings(max_examples=int(os.environ.get("EXACTFORGE_NN_EXAMPLES", "15")), deadline=None)


def lenet():
    """LeNet-5 as in the papers (28x28 input): 61,706 parameters."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.Tanh(),
        nn.Linear(120, 84),
        nn.Sigmoid(),
        nn.Linear(84, 10),
    )


def grads(model, x, y, loss):
    model.zero_grad()
    loss(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def twins(make, seed=0):
    torch.manual_seed(seed)
    m = make()
    ref = make()
    ref.load_state_dict(m.state_dict())
    return xnn.reproducible(m), ref


def close(g, gr, rtol=1e-4):
    for a, b in zip(g, gr):
        scale = float(b.abs().max()) or 1.0
        assert float((a - b).abs().max()) <= rtol * scale


def test_lenet_has_the_papers_parameter_count_and_keeps_its_state_dict():
    m = lenet()
    keys = {k: v.clone() for k, v in m.state_dict().items()}
    assert sum(p.numel() for p in m.parameters()) == 61706
    assert xnn.reproducible(m) is m
    assert list(m.state_dict()) == list(keys) and all(torch.equal(m.state_dict()[k], v) for k, v in keys.items())


@pytest.mark.parametrize(
    "loss,ref_loss,target",
    [
        (xnn.cross_entropy, nn.functional.cross_entropy, "index"),
        (
            lambda z, t: xnn.cross_entropy(z, t, label_smoothing=0.1),
            lambda z, t: nn.functional.cross_entropy(z, t, label_smoothing=0.1),
            "index",
        ),
        (xnn.cross_entropy, nn.functional.cross_entropy, "soft"),
        (xnn.mse_loss, nn.functional.mse_loss, "onehot"),
    ],
)
def test_lenet_gradients_match_autograd_and_ignore_batch_order_and_threads(loss, ref_loss, target):
    m, ref = twins(lenet)
    g0 = torch.Generator().manual_seed(1)
    x = torch.rand(24, 1, 28, 28, generator=g0)
    y = torch.randint(0, 10, (24,), generator=g0)
    if target == "soft":
        y = torch.softmax(torch.randn(24, 10, generator=g0), 1)
    elif target == "onehot":
        y = nn.functional.one_hot(y, 10).float()
    g = grads(m, x, y, loss)
    close(g, grads(ref, x, y, ref_loss))
    perm = torch.randperm(24, generator=g0)
    assert all(torch.equal(a, b) for a, b in zip(g, grads(m, x[perm], y[perm], loss)))
    before = exactforge.get_num_threads(), torch.get_num_threads()
    try:
        exactforge.set_num_threads(1)
        torch.set_num_threads(1)
        assert all(torch.equal(a, b) for a, b in zip(g, grads(m, x, y, loss)))
    finally:
        exactforge.set_num_threads(before[0])
        torch.set_num_threads(before[1])


@EXAMPLES
@given(
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(5, 9),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(0, 2),
    st.integers(1, 2),
    st.booleans(),
    st.integers(2, 6),
    st.integers(0, 10_000),
)
def test_conv2d_per_shape(cin, cout, size, k, stride, padding, dilation, bias, batch, seed):
    """Gradients of every input equal autograd's within float32 rounding; any batch order gives
    the same bits."""
    if (k - 1) * dilation + 1 > size + 2 * padding:
        return
    make = lambda: nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=bias)
    m, ref = twins(make, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, size, size, generator=gen)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn_like(ref(x), memory_format=torch.contiguous_format)
    (m(x1) * w).sum().backward()
    (ref(x2) * w).sum().backward()
    close([x1.grad] + [p.grad for p in m.parameters()], [x2.grad] + [p.grad for p in ref.parameters()])
    perm = torch.randperm(batch, generator=gen)
    gw = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    (m(x[perm]) * w[perm]).sum().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(gw, m.parameters()))


@EXAMPLES
@given(st.integers(1, 7), st.integers(1, 7), st.booleans(), st.integers(1, 9), st.booleans(), st.integers(0, 10_000))
def test_linear_and_batch_norm_eval_per_shape(din, dout, bias, batch, three_d, seed):
    def make():
        return nn.Sequential(nn.Linear(din, dout, bias=bias), nn.BatchNorm1d(dout), nn.Tanh())

    m, ref = twins(make, seed)
    for net in (m, ref):
        net[1].running_mean.uniform_(-1, 1, generator=torch.Generator().manual_seed(seed))
        net[1].running_var.uniform_(0.5, 2, generator=torch.Generator().manual_seed(seed + 1))
        net.eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, din, generator=gen)
    w = torch.randn(batch, dout, generator=gen)
    g = grads(m, x, w, lambda out, w_: (out * w_).sum())
    close(g, grads(ref, x, w, lambda out, w_: (out * w_).sum()))
    perm = torch.randperm(batch, generator=gen)
    assert all(torch.equal(a, b) for a, b in zip(g, grads(m, x[perm], w[perm], lambda out, w_: (out * w_).sum())))


@EXAMPLES
@given(
    st.sampled_from(["1d", "1d-positions", "2d"]),
    st.integers(2, 9),
    st.integers(1, 5),
    st.booleans(),
    st.sampled_from([0.1, None]),
    st.booleans(),
    st.integers(0, 10_000),
)
def test_batch_norm_in_training_mode_per_shape(kind, batch, channels, affine, momentum, track, seed):
    """Batch statistics, running statistics and gradients: within float32 rounding of torch's,
    and bitwise the same under any batch order and one thread."""

    def make():
        bn = nn.BatchNorm2d if kind == "2d" else nn.BatchNorm1d
        return nn.Sequential(bn(channels, momentum=momentum, affine=affine, track_running_stats=track), nn.Tanh())

    m, ref = twins(make, seed)
    if affine:
        for net in (m, ref):
            with torch.no_grad():
                net[0].weight.uniform_(0.5, 2, generator=torch.Generator().manual_seed(seed))
                net[0].bias.uniform_(-1, 1, generator=torch.Generator().manual_seed(seed + 1))
    gen = torch.Generator().manual_seed(seed)
    shape = {"1d": (batch, channels), "1d-positions": (batch, channels, 3), "2d": (batch, channels, 3, 2)}[kind]
    x = (torch.randn(shape, generator=gen) * 3 + 1).requires_grad_()
    w = torch.randn(shape, generator=gen)
    xr = x.detach().clone().requires_grad_()
    (m(x) * w).sum().backward()
    (ref(xr) * w).sum().backward()
    assert float((x.grad - xr.grad).abs().max()) <= 1e-4 * float(xr.grad.abs().max()) + 1e-5
    close([p.grad for p in m.parameters()], [p.grad for p in ref.parameters()])
    for a, b in zip(m.state_dict().values(), ref.state_dict().values()):
        assert a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6)
    for net in (m, ref):  # two more steps: the running statistics keep agreeing
        net(x.detach())
    for a, b in zip(m.state_dict().values(), ref.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6)
    state = {k: v.clone() for k, v in m.state_dict().items()}

    def run(perm):
        m.load_state_dict(state)
        m.zero_grad()
        xp = x.detach()[perm].requires_grad_()
        (m(xp) * w[perm]).sum().backward()
        grads = [xp.grad[torch.argsort(perm)]] + [p.grad.clone() for p in m.parameters()]
        return grads + [v.clone() for v in m.state_dict().values()]

    same = run(torch.arange(batch))
    assert all(torch.equal(a, b) for a, b in zip(same, run(torch.randperm(batch, generator=gen))))
    before = exactforge.get_num_threads(), torch.get_num_threads()
    try:
        exactforge.set_num_threads(1)
        torch.set_num_threads(1)
        assert all(torch.equal(a, b) for a, b in zip(same, run(torch.arange(batch))))
    finally:
        exactforge.set_num_threads(before[0])
        torch.set_num_threads(before[1])


def test_unsupported_layers_are_refused_by_name():
    with pytest.raises(xnn.UnsupportedLayerError, match=r"1 \(LSTM\)"):
        xnn.reproducible(nn.Sequential(nn.Linear(3, 3), nn.LSTM(3, 3)))
    with pytest.raises(xnn.UnsupportedLayerError, match="groups=2"):
        xnn.reproducible(nn.Conv2d(2, 2, 3, groups=2))
    with pytest.raises(xnn.UnsupportedLayerError, match="zero padding"):
        xnn.reproducible(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="mode"):
        xnn.reproducible(nn.Linear(2, 2), mode="fast")
    bn = xnn.reproducible(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn(torch.randn(1, 2))
    dr = xnn.reproducible(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
    with pytest.raises(RuntimeError, match="Dropout"):
        dr(torch.randn(4, 2))
    dr.eval()
    assert dr(torch.randn(4, 2)).shape == (4, 2)


def test_custom_modules_are_walked_into():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 3)

        def forward(self, x):
            return self.body(x).relu()

    net = xnn.reproducible(Net())
    assert net(torch.randn(2, 4)).shape == (2, 3)


def test_losses_refuse_bad_targets():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="target"):
        xnn.cross_entropy(z, torch.tensor([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="label_smoothing"):
        xnn.cross_entropy(z, torch.tensor([0, 1, 2]), label_smoothing=2.0)
    with pytest.raises(ValueError, match="target"):
        xnn.mse_loss(z, torch.randn(3, 5))
    assert float(xnn.cross_entropy(z, torch.tensor([0, 1, 2]))) == pytest.approx(
        float(nn.functional.cross_entropy(z, torch.tensor([0, 1, 2]))), rel=1e-6
    )


def moved_examples_keep_their_bits(make, batch, width, seed):
    """(x, y) of the reproducible activation ``make()`` on random inputs, after checking that a
    permuted batch gives each example the same output and input gradient, bit for bit."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, width, generator=g) * 4).requires_grad_()
    m = xnn.reproducible(nn.Sequential(make()))
    y = m(x)
    (y * torch.arange(width)).sum().backward()
    perm = torch.randperm(batch, generator=g)
    xp = x.detach()[perm].requires_grad_()
    yp = m(xp)
    (yp * torch.arange(width)).sum().backward()
    assert torch.equal(y[perm], yp) and torch.equal(x.grad[perm], xp.grad)
    return x, y


@EXAMPLES
@given(st.sampled_from([nn.Sigmoid, nn.Tanh]), st.integers(2, 9), st.integers(1, 120), st.integers(0, 10_000))
def test_activations_ignore_where_an_example_sits(act, batch, width, seed):
    """torch's sigmoid gives other bits in its scalar tail than in its vector body, so an example
    that moves into the tail changes; the reproducible activations do not."""
    x, y = moved_examples_keep_their_bits(act, batch, width, seed)
    ref = act()(x.detach())
    assert float((y.detach() - ref).abs().max()) <= 1.2e-7


@EXAMPLES
@given(st.sampled_from(["gelu", "gelu-tanh", "silu"]), st.integers(2, 9), st.integers(1, 120), st.integers(0, 10_000))
def test_gelu_and_silu_ignore_where_an_example_sits_and_match_torch(kind, batch, width, seed):
    make = {"gelu": nn.GELU, "gelu-tanh": lambda: nn.GELU("tanh"), "silu": nn.SiLU}[kind]
    x, y = moved_examples_keep_their_bits(make, batch, width, seed)
    x64 = x.detach().double().requires_grad_()
    ref = make()(x64)
    (ref * torch.arange(width)).sum().backward()
    ulp = torch.from_numpy(np.spacing(ref.detach().float().abs().numpy())).double()
    err = (y.detach().double() - ref.detach()).abs()
    # torch's float64, rounded; in the far negative tail (|value| < 1e-6) torch's own float64 GELU
    # loses its relative accuracy (1 + erf cancels), so there only the absolute error is bounded
    assert float(torch.cat([(err / ulp)[ref.detach().abs() > 1e-6], torch.zeros(1)]).max()) <= 1.0
    assert float(torch.cat([err[ref.detach().abs() <= 1e-6], torch.zeros(1)]).max()) <= 1e-12
    assert torch.allclose(x.grad.double(), x64.grad, rtol=1e-6, atol=1e-6 * width)


def test_an_encoder_layer_with_gelu_and_attention_dropout_is_keyed_and_invariant():
    torch.manual_seed(0)
    make = lambda: nn.TransformerEncoderLayer(
        8, 2, dim_feedforward=16, dropout=0.2, activation="gelu", batch_first=True
    )
    m, ref = twins(make)
    x = torch.randn(5, 4, 8, generator=torch.Generator().manual_seed(1))
    w = torch.randn(5, 4, 8, generator=torch.Generator().manual_seed(2))
    with pytest.raises(RuntimeError, match="dropout_keys"):
        m(x)
    ex = np.arange(100, 105)

    def run(perm):
        m.zero_grad()
        xnn.dropout_keys(m, seed=7, step=3, examples=ex[perm])
        (m(x[perm]) * w[perm]).sum().backward()
        return [p.grad.clone() for p in m.parameters()]

    g = run(np.arange(5))
    assert all(torch.equal(a, b) for a, b in zip(g, run(np.array([3, 0, 4, 1, 2]))))
    assert len(xnn.keyed_layers(m)) == 4  # the attention weights and the three Dropouts
    m.eval(), ref.eval()
    close(grads(m, x, w, lambda o, w_: (o * w_).sum()), grads(ref, x, w, lambda o, w_: (o * w_).sum()), rtol=2e-4)


def test_tanh_is_accurate_near_zero():
    t = torch.tensor([1e-30, -1e-10, 1e-5, 0.0039, 0.004, -0.5, 30.0, -1e4], dtype=torch.float32)
    assert torch.allclose(xnn.tanh(t), torch.tanh(t), rtol=1.2e-7, atol=0)
    assert torch.equal(xnn.sigmoid(torch.tensor([-1e4, 0.0, 1e4])), torch.tensor([0.0, 0.5, 1.0]))


def invariant(m, inputs, weight, seed):
    """Gradients of the parameters for (out * weight).sum(), and the same under a batch
    permutation and one thread: bitwise equal."""

    def run(xs, w):
        m.zero_grad()
        out = m(*xs)
        out = out[0] if isinstance(out, tuple) else out
        (out * w).sum().backward()
        return [p.grad.clone() for p in m.parameters()]

    g = run(inputs, weight)
    perm = torch.randperm(len(weight), generator=torch.Generator().manual_seed(seed))
    assert all(torch.equal(a, b) for a, b in zip(g, run([x[perm] for x in inputs], weight[perm])))
    before = exactforge.get_num_threads(), torch.get_num_threads()
    try:
        exactforge.set_num_threads(1)
        torch.set_num_threads(1)
        assert all(torch.equal(a, b) for a, b in zip(g, run(inputs, weight)))
    finally:
        exactforge.set_num_threads(before[0])
        torch.set_num_threads(before[1])
    return g


@EXAMPLES
@given(st.integers(1, 6), st.integers(1, 5), st.integers(2, 40), st.booleans(), st.integers(0, 10_000))
def test_layer_norm_per_shape(batch, positions, width, affine, seed):
    # (width 1 normalises to exactly 0: torch's input gradient there is its own rounding noise)
    m, ref = twins(lambda: nn.LayerNorm(width, elementwise_affine=affine), seed)
    if affine:
        for net in (m, ref):
            with torch.no_grad():
                net.weight.uniform_(0.5, 2, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, positions, width, generator=gen) * 3 + 1
    w = torch.randn(batch, positions, width, generator=gen)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    (m(x1) * w).sum().backward()
    (ref(x2) * w).sum().backward()
    close([p.grad for p in m.parameters()], [p.grad for p in ref.parameters()], rtol=2e-4)
    # the input gradient can cancel to rounding noise (width 2: y = +-1 whatever x is); its
    # terms are of size |w| * gamma / std, so that is the scale it is compared on
    rstd = 1 / x.double().var(-1, unbiased=False).add(1e-5).sqrt().max()
    gamma = float(m.weight.abs().max()) if affine else 1.0
    assert float((x1.grad - x2.grad).abs().max()) <= 2e-5 * float(w.abs().max()) * gamma * float(rstd) * width
    if affine:
        invariant(m, [x], w, seed)


@EXAMPLES
@given(
    st.integers(2, 30), st.integers(1, 8), st.integers(1, 6), st.integers(1, 12), st.booleans(), st.integers(0, 10_000)
)
def test_embedding_per_shape(vocab, dim, batch, positions, padding, seed):
    m, ref = twins(lambda: nn.Embedding(vocab, dim, padding_idx=0 if padding else None), seed)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, positions), generator=gen)
    w = torch.randn(batch, positions, dim, generator=gen)
    g = invariant(m, [ids], w, seed)
    ref.zero_grad()
    (ref(ids) * w).sum().backward()
    close(g, [ref.weight.grad])


@EXAMPLES
@given(
    st.sampled_from([(8, 2), (12, 3), (16, 4)]),
    st.integers(1, 5),
    st.integers(1, 7),
    st.booleans(),
    st.sampled_from(["none", "causal", "bool", "float", "padding"]),
    st.booleans(),
    st.integers(0, 10_000),
)
def test_multi_head_attention_per_shape(eh, batch, length, batch_first, mask, bias, seed):
    E, H = eh
    m, ref = twins(lambda: nn.MultiheadAttention(E, H, bias=bias, batch_first=batch_first), seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, E, generator=gen)
    w = torch.randn(batch, length, E, generator=gen)
    kw = {}
    if mask == "causal":
        kw = dict(attn_mask=nn.Transformer.generate_square_subsequent_mask(length), is_causal=True)
    elif mask == "bool":
        kw = dict(attn_mask=torch.ones(length, length, dtype=torch.bool).triu(1))
    elif mask == "float":
        kw = dict(attn_mask=torch.randn(length, length, generator=gen))
    elif mask == "padding":
        pad = torch.zeros(batch, length, dtype=torch.bool)
        pad[:, length - 1] = length > 1
        kw = dict(key_padding_mask=pad)

    def call(net, xb, kwb):
        xin = xb if batch_first else xb.transpose(0, 1)
        out = net(xin, xin, xin, need_weights=False, **kwb)[0]
        return out if batch_first else out.transpose(0, 1)

    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    (call(m, x1, kw) * w).sum().backward()
    (call(ref, x2, kw) * w).sum().backward()
    close([x1.grad] + [p.grad for p in m.parameters()], [x2.grad] + [p.grad for p in ref.parameters()], rtol=2e-4)
    if mask == "padding":  # the mask follows the examples it belongs to
        return
    wrapped = nn.Module()
    wrapped.inner = m
    wrapped.forward = lambda xb: call(m, xb, kw)
    invariant(wrapped, [x], w, seed)


def test_transformer_classifier_matches_autograd_and_is_invariant():
    from exactforge.models.zoo import build_model

    make = lambda: build_model("transformer", (12,), 3, vocab=20, seed=4)
    m, ref = xnn.reproducible(make()), make()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (10, 12), generator=gen)
    y = torch.randint(0, 3, (10,), generator=gen)
    g = grads(m, ids, y, xnn.cross_entropy)
    close(g, grads(ref, ids, y, nn.functional.cross_entropy), rtol=2e-4)
    perm = torch.randperm(10, generator=gen)
    assert all(torch.equal(a, b) for a, b in zip(g, grads(m, ids[perm], y[perm], xnn.cross_entropy)))


def test_transformer_layers_that_cannot_be_replayed_are_refused():
    with pytest.raises(xnn.UnsupportedLayerError, match="ReLU and GELU"):
        xnn.reproducible(nn.TransformerEncoderLayer(8, 2, dropout=0.0, activation=nn.Tanh()))
    with pytest.raises(ValueError, match="MultiheadAttention, dropout=0.1"):
        xnn.keyed_dropout(nn.Sequential(nn.MultiheadAttention(8, 2, dropout=0.1)))
    with pytest.raises(xnn.UnsupportedLayerError, match="max_norm"):
        xnn.reproducible(nn.Embedding(5, 3, max_norm=1.0))
    with pytest.raises(xnn.UnsupportedLayerError, match="add_bias_kv"):
        xnn.reproducible(nn.MultiheadAttention(8, 2, add_bias_kv=True))


@EXAMPLES
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(3, 9),
    st.integers(3, 9),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(0, 2),
    st.integers(1, 2),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 10_000),
)
def test_native_im2col_and_col2im_give_torchs_bits(B, C, H, W, kh, kw, stride, padding, dilation, dtype, seed):
    """The column matrix holds F.unfold's entries; col2im adds in F.fold's order, to the bit."""
    from exactforge._backend.native import _core

    if (kh - 1) * dilation + 1 > H + 2 * padding or (kw - 1) * dilation + 1 > W + 2 * padding:
        return
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    geo = ([kh, kw], [stride, stride], [padding, padding], [dilation, dilation])
    cols = nn.functional.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    assert torch.equal(torch.from_numpy(_core.im2col(x.numpy(), *geo)), cols.transpose(0, 1).reshape(cols.shape[1], -1))
    c = torch.randn(cols.shape, generator=g, dtype=dtype)
    ref = nn.functional.fold(c, (H, W), (kh, kw), dilation=dilation, padding=padding, stride=stride)
    flat = c.transpose(0, 1).reshape(c.shape[1], -1).contiguous()
    assert torch.equal(torch.from_numpy(_core.col2im(flat.numpy(), [B, C, H, W], *geo)), ref)


def test_native_im2col_refuses_bad_geometry():
    from exactforge._backend.native import _core

    x = np.zeros((1, 1, 4, 4), np.float32)
    for geo in (([9, 9], [1, 1], [0, 0], [1, 1]), ([3, 3], [0, 1], [0, 0], [1, 1]), ([3], [1, 1], [0, 0], [1, 1])):
        with pytest.raises(ValueError):
            _core.im2col(x, *geo)
    with pytest.raises(ValueError, match="geometry"):
        _core.col2im(np.zeros((9, 5), np.float32), [1, 1, 4, 4], [3, 3], [1, 1], [0, 0], [1, 1])
    with pytest.raises(TypeError):
        _core.im2col(x.astype(np.int32), [3, 3], [1, 1], [0, 0], [1, 1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 9), (100, 20, 16, 20), (4, 33, 65, 17)])
def test_the_native_batched_product_is_the_torch_loop_bit_for_bit(dtype, shape):
    """The attention products' C++ loop gives the bits of the torch loop it replaced: every
    product and every sum separately rounded, in index order, special values included."""
    from exactforge._backend.native import _core

    N, M, K, P = shape
    rng = np.random.default_rng(K)
    a = rng.standard_normal((N, M, K)).astype(dtype)
    b = rng.standard_normal((N, K, P)).astype(dtype)
    a.flat[0] = np.finfo(dtype).smallest_subnormal
    b.flat[-1] = np.finfo(dtype).max
    if K > 2:
        a[0, 0, 2], b[0, 1, 0] = np.inf, np.nan
        a[-1, -1, :] *= np.finfo(dtype).tiny
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    acc = ta[:, :, 0:1] * tb[:, 0:1, :]
    for k in range(1, K):
        acc = acc + ta[:, :, k : k + 1] * tb[:, k : k + 1, :]
    u = np.uint32 if dtype == np.float32 else np.uint64
    for threads in (1, 2):
        assert np.array_equal(_core.bmm_unfused(a, b, threads).view(u), acc.numpy().view(u))
    with pytest.raises(ValueError, match="shapes do not chain"):
        _core.bmm_unfused(a, np.zeros((N, K + 1, P), dtype), 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.bmm_unfused(np.zeros((2, 3, 4), dtype), np.zeros((2, 5, 4), dtype).transpose(0, 2, 1), 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (65, 64), (300, 17), (5000, 64)])
def test_native_row_sums_are_the_fixed_sum_of_the_transpose(dtype, shape):
    """Softmax's and LayerNorm's row sums, along the rows as they lie, have the bits of the
    fixed-mode sum over axis 0 of the transposed copy they replaced (-0, NaN, inf included)."""
    from exactforge import reduce as R
    from exactforge._backend.native import _core

    rng = np.random.default_rng(shape[0])
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-30, 30, shape))).astype(dtype)
    x[0, 0] = -0.0
    if shape[0] > 2:
        x[1, :] = -0.0
        x[2, -1] = np.nan
    if shape[0] > 4:
        x[3, 0], x[4, 0] = np.inf, -np.inf
    u = np.uint32 if dtype == np.float32 else np.uint64
    ref = R.sum(np.ascontiguousarray(x.T), axis=0, mode="fixed")
    for threads in (1, 2):
        assert np.array_equal(_core.rowsum_fixed(x, threads).view(u), ref.view(u))


@pytest.mark.parametrize("mode", ["fixed", "exact"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_embedding_gradient_is_one_sum_per_token_as_before(mode, dtype):
    """All tokens' gradient rows in one native call: each the sum of its positions' rows, as one
    reduce.sum per token gave it (a token seen once: its row as it is; padding: zero)."""
    from exactforge import reduce as R

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 12, (7, 9), generator=g)
    ids[0, 0] = 11  # seen once below
    ids[ids == 11] = 10
    ids[0, 0] = 11
    weight = torch.randn(13, 5, dtype=dtype, generator=g, requires_grad=True)
    dy = torch.randn(7, 9, 5, dtype=dtype, generator=g) * torch.exp2(torch.randint(-40, 40, (7, 9, 1))).to(dtype)
    xnn.functional.embedding(ids, weight, padding_idx=3, mode=mode).backward(dy)
    flat, rows = ids.reshape(-1).numpy(), dy.reshape(-1, 5)
    for tok in range(13):
        pos = np.flatnonzero(flat == tok)  # in the batch's order, as the stable sort keeps it
        if tok == 3 or len(pos) == 0:
            expect = torch.zeros(5, dtype=dtype)
        elif len(pos) == 1:
            expect = rows[pos[0]]
        else:
            expect = R.sum(rows[torch.from_numpy(pos)].contiguous(), axis=0, mode=mode)
        assert torch.equal(weight.grad[tok], expect), tok


def _im2col_conv(x, w, ph, pw):
    """The stride-1 convolution the reproducible layer computed before the direct one: im2col,
    then the fixed-order product reading it transposed, laid out as B x O x Ho x Wo."""
    from exactforge._backend.native import _core

    B, _, H, W = x.shape
    O, _, kh, kw = w.shape
    cols = _core.im2col(x, [kh, kw], [1, 1], [ph, pw], [1, 1])
    yt = _core.matmul(cols, np.ascontiguousarray(w.reshape(O, -1).T), "fixed", None, 0, True)
    Ho, Wo = H + 2 * ph - kh + 1, W + 2 * pw - kw + 1
    return np.ascontiguousarray(yt.reshape(B, Ho * Wo, O).transpose(0, 2, 1).reshape(B, O, Ho, Wo))


#: stride-1 geometries (B, C, H, W, O, k, padding): channels across the kernels' channel blocks,
#: widths across the vector lanes, a 1x1 kernel with more output channels than a block
STRIDE1_GEOMETRIES = [
    (2, 3, 8, 8, 5, 3, 1),
    (3, 1, 28, 28, 6, 5, 0),
    (2, 16, 17, 33, 16, 3, 1),
    (1, 2, 5, 40, 9, 3, 2),
    (1, 13, 5, 40, 9, 3, 2),
    (2, 4, 7, 7, 33, 1, 0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geo", STRIDE1_GEOMETRIES)
def test_the_direct_convolution_has_the_im2col_products_bits(dtype, geo):
    """The forward convolution without im2col: each output's fused chain over C*kh*kw in the
    same order, padded positions included, so the same bits as the product it replaced (-0 in
    the input, an infinite weight meeting padding zeros: NaN either way), on any thread count; a
    finite bias added as each output is stored gives the bits of adding it afterwards."""
    from exactforge._backend.native import _core

    B, C, H, W, O, k, p = geo
    rng = np.random.default_rng(B * 100 + C)
    x = rng.standard_normal((B, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, k, k)).astype(dtype)
    x.flat[3] = -0.0
    w.flat[0] = np.inf
    ref = _im2col_conv(x, w, p, p)
    u = np.uint32 if dtype == np.float32 else np.uint64
    bias = rng.standard_normal(O).astype(dtype)
    with_bias = ref + bias.reshape(1, O, 1, 1)  # the layer's separate addition
    for threads in (1, 2):
        assert np.array_equal(_core.conv2d_fixed(x, w, [p, p], threads).view(u), ref.view(u))
        # the bias added as each output is stored: the same one rounding
        assert np.array_equal(_core.conv2d_fixed(x, w, [p, p], threads, bias=bias).view(u), with_bias.view(u))


@EXAMPLES
@given(
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 12),
    st.integers(1, 40),
    st.integers(1, 20),
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from([np.float32, np.float64]),
    st.integers(0, 10_000),
)
def test_the_direct_convolution_matches_the_im2col_product_on_any_geometry(B, C, H, W, O, kh, kw, ph, pw, dtype, seed):
    """A generator of stride-1 geometries (rectangular kernels, any padding, widths across the
    vector lanes): the direct convolution has the im2col product's bits on every one."""
    from hypothesis import assume

    from exactforge._backend.native import _core

    assume(H + 2 * ph >= kh and W + 2 * pw >= kw)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, kh, kw)).astype(dtype)
    ref = _im2col_conv(x, w, ph, pw)
    u = np.uint32 if dtype == np.float32 else np.uint64
    assert np.array_equal(_core.conv2d_fixed(x, w, [ph, pw]).view(u), ref.view(u))


def _col2im_input_grad(dy, w, shape, ph, pw):
    """The input gradient as the backward computed it before the direct kernel: the fixed-order
    product W^T dY over the output channels, then col2im."""
    from exactforge._backend.native import _core

    B, O = dy.shape[:2]
    dyt = np.ascontiguousarray(dy.reshape(B, O, -1).transpose(1, 0, 2).reshape(O, -1))
    dcols = _core.matmul(np.ascontiguousarray(w.reshape(O, -1).T), dyt, "fixed")
    return _core.col2im(dcols, list(shape), list(w.shape[2:]), [1, 1], [ph, pw], [1, 1])


def _special_values(a, rng):
    a.flat[0] = -0.0
    for v in (np.inf, -np.inf, np.nan):
        a.flat[rng.integers(a.size)] = v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geo", STRIDE1_GEOMETRIES)
def test_the_direct_input_gradient_has_the_product_and_col2ims_bits(dtype, geo):
    """The input gradient without W^T dY or col2im: each column's chain over the output
    channels, then each pixel's terms in col2im's order, so the same bits (infinities and NaN in
    dy included, NaN canonical as the product makes it) on any thread count."""
    from exactforge._backend.native import _core

    B, C, H, W, O, k, p = geo
    rng = np.random.default_rng(B * 100 + C)
    Ho, Wo = H + 2 * p - k + 1, W + 2 * p - k + 1
    dy = rng.standard_normal((B, O, Ho, Wo)).astype(dtype)
    w = rng.standard_normal((O, C, k, k)).astype(dtype)
    _special_values(dy, rng)
    ref = _col2im_input_grad(dy, w, (B, C, H, W), p, p)
    u = np.uint32 if dtype == np.float32 else np.uint64
    for threads in (1, 2):
        assert np.array_equal(_core.conv2d_input_grad_fixed(dy, w, [B, C, H, W], [p, p], threads).view(u), ref.view(u))


@EXAMPLES
@given(
    st.integers(1, 3),
    st.integers(1, 13),
    st.integers(1, 12),
    st.integers(1, 40),
    st.integers(1, 20),
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(0, 3),
    st.integers(0, 3),
    st.sampled_from([np.float32, np.float64]),
    st.booleans(),
    st.integers(0, 10_000),
)
def test_the_direct_input_gradient_matches_on_any_geometry(B, C, H, W, O, kh, kw, ph, pw, dtype, special, seed):
    """A generator of stride-1 geometries (channel counts across the kernel's channel blocks,
    widths across the vector lanes, padding wider than the kernel): the same bits every time."""
    from hypothesis import assume

    from exactforge._backend.native import _core

    assume(H + 2 * ph >= kh and W + 2 * pw >= kw)
    rng = np.random.default_rng(seed)
    dy = rng.standard_normal((B, O, H + 2 * ph - kh + 1, W + 2 * pw - kw + 1)).astype(dtype)
    w = rng.standard_normal((O, C, kh, kw)).astype(dtype)
    if special:
        _special_values(dy, rng)
    ref = _col2im_input_grad(dy, w, (B, C, H, W), ph, pw)
    u = np.uint32 if dtype == np.float32 else np.uint64
    assert np.array_equal(_core.conv2d_input_grad_fixed(dy, w, [B, C, H, W], [ph, pw]).view(u), ref.view(u))


def test_an_infinite_weight_keeps_the_input_gradient_of_the_product_and_col2im():
    """The direct kernel reads zeros where col2im skips a position; an infinite weight times such
    a zero is NaN, so the kernel refuses non-finite weights and the layer's backward keeps the two
    steps there: the gradient is the same either way."""
    from exactforge._backend.native import _core

    rng = np.random.default_rng(3)
    dy = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[1, 2, 0, 0] = np.inf
    with pytest.raises(ValueError, match="finite weights"):
        _core.conv2d_input_grad_fixed(dy, w, [2, 3, 6, 6], [1, 1])
    x = torch.from_numpy(rng.standard_normal((2, 3, 6, 6)).astype(np.float32)).requires_grad_()
    y = xnn.functional.conv2d(x, torch.from_numpy(w), padding=(1, 1))
    y.backward(torch.from_numpy(dy))
    ref = _col2im_input_grad(dy, w, (2, 3, 6, 6), 1, 1)
    assert np.array_equal(x.grad.numpy().view(np.uint32), ref.view(np.uint32))


@EXAMPLES
@given(
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 12),
    st.integers(1, 30),
    st.integers(1, 20),
    st.tuples(st.integers(1, 4), st.integers(1, 4)),
    st.tuples(st.integers(1, 2), st.integers(1, 2)),
    st.tuples(st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.integers(1, 2), st.integers(1, 2)),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from(["plain", "wide range", "non-finite x", "non-finite dy"]),
    st.sampled_from(["exact", "fixed"]),
    st.integers(0, 10_000),
)
def test_the_implicit_weight_gradient_has_the_im2col_products_bits(B, C, H, W, O, k, s, p, d, dtype, kind, mode, seed):
    """The weight gradient gathers im2col a panel at a time (and, exact, reads its row maxima from
    x): the bits of the product in the same mode over the materialised im2col, on every geometry
    (strides, dilations, padding), on inputs spanning 2^-29 .. 2^29 (so rows get different
    scales), and where x or dy holds infinities or NaN (then the exact one materialises im2col,
    as the product needs)."""
    from hypothesis import assume

    from exactforge._backend.native import _core

    assume(H + 2 * p[0] >= d[0] * (k[0] - 1) + 1 and W + 2 * p[1] >= d[1] * (k[1] - 1) + 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, C, H, W))
    if kind == "wide range":
        x *= np.exp2(rng.integers(-29, 30, x.shape))
    x = x.astype(dtype)
    geo = (list(k), list(s), list(p), list(d))
    cols = _core.im2col(x, *geo)
    dyt = rng.standard_normal((cols.shape[1], O)).astype(dtype)
    if kind == "non-finite x":
        _special_values(x, rng)
        cols = _core.im2col(x, *geo)
    if kind == "non-finite dy":
        _special_values(dyt, rng)
    ref = _core.matmul(cols, dyt, mode)
    u = np.uint32 if dtype == np.float32 else np.uint64
    grad = _core.conv2d_weight_grad_exact if mode == "exact" else _core.conv2d_weight_grad_fixed
    for threads in (1, 2):
        assert np.array_equal(grad(x, dyt, *geo, threads).view(u), ref.view(u))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "geo",
    [
        (3, 5, 33, 31, 37, (3, 3), (1, 1), (1, 1), (1, 1)),
        (8, 7, 9, 40, 70, (2, 3), (1, 2), (0, 2), (2, 1)),
        (1, 1, 64, 64, 6, (5, 5), (1, 1), (0, 0), (1, 1)),
    ],
)
def test_the_weight_gradient_resumes_its_chains_across_blocks(dtype, geo):
    """Batch x positions axes longer than one block of terms (each tile stores its outputs'
    partials and resumes them in the next block), output channels over several vector groups
    and im2col rows past a multiple of the tile's: the bits of the product over the materialised
    im2col, with infinities and NaN in x and dy, on any thread count."""
    from exactforge._backend.native import _core

    B, C, H, W, O, k, s, p, d = geo
    rng = np.random.default_rng(B + C + O)
    x = rng.standard_normal((B, C, H, W)).astype(dtype)
    _special_values(x, rng)
    geo_args = (list(k), list(s), list(p), list(d))
    cols = _core.im2col(x, *geo_args)
    assert cols.shape[1] > 1024
    dyt = rng.standard_normal((cols.shape[1], O)).astype(dtype)
    _special_values(dyt, rng)
    ref = _core.matmul(cols, dyt, "fixed")
    u = np.uint32 if dtype == np.float32 else np.uint64
    for threads in (1, 2):
        assert np.array_equal(_core.conv2d_weight_grad_fixed(x, dyt, *geo_args, threads).view(u), ref.view(u))


@EXAMPLES
@given(
    st.integers(2, 6),
    st.integers(1, 5),
    st.sampled_from([(), (7,), (3, 5), (1, 1)]),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["exact", "fixed"]),
    st.sampled_from([torch.float32, torch.float64]),
    st.sampled_from(["plain", "wide range", "non-finite x", "non-finite dy", "non-finite weight"]),
    st.integers(0, 10_000),
)
def test_fused_batch_norm_has_the_tensor_expressions_bits(N, C, spatial, affine_w, affine_b, mode, dtype, kind, seed):
    """Training-mode BatchNorm's fused passes (the variance's terms and dy * xhat summed chunk by
    chunk, normalisation and input gradient one pass each) against the same layer with the
    fusion off: output, running statistics and every gradient bit for bit, with or without the
    affine parameters, in both modes, on values spanning 2^-40 .. 2^40 and with infinities or NaN
    in x, dy or the weight (NaN payloads included: those keep the unfused expressions)."""
    from unittest import mock

    import exactforge.nn.functional.norm as xf
    import exactforge.ops.norm as xo

    rng = np.random.default_rng(seed)
    shape = (N, C) + spatial
    xv = rng.standard_normal(shape)
    if kind == "wide range":
        xv *= np.exp2(rng.integers(-40, 41, shape))
    special = [np.inf, -np.inf, np.nan][seed % 3]
    if kind == "non-finite x":
        xv.flat[rng.integers(xv.size)] = special
    dyv = rng.standard_normal(shape)
    if kind == "non-finite dy":
        dyv.flat[rng.integers(dyv.size)] = special
    wv = rng.standard_normal(C)
    if kind == "non-finite weight":
        wv[rng.integers(C)] = special
    w = torch.from_numpy(wv).to(dtype) if affine_w else None
    b = torch.from_numpy(rng.standard_normal(C)).to(dtype) if affine_b else None

    def run(fused):
        x = torch.from_numpy(xv).to(dtype).requires_grad_()
        params = [p.clone().requires_grad_() if p is not None else None for p in (w, b)]
        rm, rv = torch.zeros(C, dtype=dtype), torch.ones(C, dtype=dtype)
        with mock.patch.object(xo, "_fused_norm", xo._fused_norm if fused else lambda *a: False):
            y = xf.batch_norm_train(x, rm, rv, params[0], params[1], 0.1, 1e-5, mode)
            y.backward(torch.from_numpy(dyv).to(dtype))
        grads = [x.grad] + [p.grad for p in params if p is not None]
        return [y.detach(), rm, rv] + grads

    def bits(t):
        return t.numpy().view(np.uint32 if dtype == torch.float32 else np.uint64)

    for got, ref in zip(run(True), run(False)):
        assert np.array_equal(bits(got), bits(ref))


@EXAMPLES
@given(
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(1, 12),
    st.integers(1, 12),
    st.sampled_from([(1, 1), (2, 2), (3, 5), (7, 7), (2, None), 3]),
    st.integers(0, 10_000),
)
def test_adaptive_avg_pool2d_matches_torch_and_ignores_batch_order_and_threads(batch, channels, H, W, size, seed):
    """torch's bins (overlapping where the output does not divide the input), each summed in
    row-major order and divided once: torch's output within float32 rounding, and gradients
    bitwise the same for a permuted batch and on one thread."""
    torch.manual_seed(seed)
    pool = nn.AdaptiveAvgPool2d(size)
    m = xnn.reproducible(nn.Sequential(nn.Conv2d(channels, 2, 1), pool, nn.Flatten(), nn.Linear(1, 1)))
    x = torch.randn(batch, channels, H, W)
    ref = nn.functional.adaptive_avg_pool2d(x, size)
    out = xnn.reproducible(nn.AdaptiveAvgPool2d(size))(x)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, rtol=4e-7, atol=1e-7)
    xg, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    w = torch.randn(ref.shape)
    (g,) = torch.autograd.grad((xnn.reproducible(nn.AdaptiveAvgPool2d(size))(xg) * w).sum(), xg)
    (gr,) = torch.autograd.grad((nn.functional.adaptive_avg_pool2d(xr, size) * w).sum(), xr)
    assert torch.allclose(g, gr, rtol=1e-6, atol=1e-7)
    m[3] = xnn.reproducible(nn.Linear(2 * ref.shape[-2] * ref.shape[-1], 3))
    invariant(m, [x], torch.randn(batch, 3), seed)
    # an example's input gradient does not depend on where it sits in the batch
    moved_pool = xnn.reproducible(nn.AdaptiveAvgPool2d(size))
    perm = torch.randperm(batch, generator=torch.Generator().manual_seed(seed))
    xp = x[perm].clone().requires_grad_(True)
    (gp,) = torch.autograd.grad((moved_pool(xp) * w[perm]).sum(), xp)
    assert torch.equal(gp, g[perm])


def test_adaptive_avg_pool2d_refuses_bad_sizes():
    with pytest.raises(ValueError, match="3-D or 4-D"):
        xnn.reproducible(nn.AdaptiveAvgPool2d(1))(torch.randn(2, 3))
    with pytest.raises(ValueError, match="output_size"):
        xnn.reproducible(nn.AdaptiveAvgPool2d((1, 2, 3)))(torch.randn(1, 1, 4, 4))


@pytest.mark.parametrize("train", [True, False])
def test_layer_outputs_can_be_modified_in_place(train):
    """torchvision's ResNets apply ReLU(inplace=True) to BatchNorm's output and add the
    shortcut in place: the reproducible layers' outputs allow it, with autograd's gradients."""
    torch.manual_seed(0)
    for make, x in (
        (lambda: nn.BatchNorm2d(3), torch.randn(4, 3, 5, 5)),
        (lambda: nn.Linear(3, 3), torch.randn(2, 4, 3)),
        (lambda: nn.LayerNorm(3), torch.randn(4, 3)),
    ):
        m, ref = twins(make)
        m.train(train), ref.train(train)
        outs = []
        for layer in (m, ref):
            xi = x.clone().requires_grad_(True)
            y = layer(xi)
            y += 1.0
            nn.ReLU(inplace=True)(y).sum().backward()
            outs.append((y.detach(), xi.grad))
        assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5)
        assert torch.allclose(outs[0][1], outs[1][1], atol=1e-5)
