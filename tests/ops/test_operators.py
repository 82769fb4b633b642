"""The kernels as torch operators: every operator's fake implementation agrees with the real one
(torch.library.opcheck: schema, fake tensors, AOT dispatch), the eager functions and the
operators give the same bits, and a compiled reproducible model traces as one graph whose
training step has the eager step's bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from exactforge import ops
from exactforge import reduce as R
from exactforge.nn import reproducible
from exactforge.nn.functional import cross_entropy

OPS = torch.ops.exactforge


def _cases():
    g = torch.Generator().manual_seed(0)

    def r(*s, dtype=torch.float32):
        return torch.randn(*s, generator=g, dtype=dtype)

    x = r(3, 2, 7, 6)
    w = r(4, 2, 3, 3)
    yield "mm fixed", OPS.mm.default, (r(5, 7), r(7, 3), "fixed")
    yield "mm exact float64", OPS.mm.default, (r(5, 7, dtype=torch.float64), r(7, 3, dtype=torch.float64), "exact")
    yield "mm a transposed", OPS.mm.default, (r(7, 5), r(7, 3), "exact", True)
    yield "bmm", OPS.bmm.default, (r(2, 3, 4), r(2, 4, 5))
    yield "sum0", OPS.sum0.default, (r(6, 4), "exact")
    yield "rowsum", OPS.rowsum.default, (r(6, 4),)
    yield "conv2d direct", OPS.conv2d.default, (x, w, r(4), [1, 1], [1, 1], [1, 1])
    yield "conv2d im2col", OPS.conv2d.default, (x, w, None, [2, 1], [0, 1], [1, 2])
    yield "conv2d input grad", OPS.conv2d_input_grad.default, (r(3, 4, 7, 6), w, [3, 2, 7, 6], [1, 1], [1, 1], [1, 1])
    dyt = r(3 * 7 * 6, 4)
    yield "conv2d weight grad", OPS.conv2d_weight_grad.default, (x, dyt, [4, 2, 3, 3], [1, 1], [1, 1], [1, 1], "exact")
    yield "sqrt_rn", OPS.sqrt_rn.default, (r(5).abs(),)
    yield "exp", OPS.exp.default, (r(5),)
    yield "activation gelu", OPS.activation.default, (r(4, 3), "gelu")
    yield "activation tanh", OPS.activation.default, (r(4, 3), "tanh")
    q = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 2]), 3).float()
    yield "softmax_xent", OPS.softmax_xent.default, (r(4, 3), q)
    yield "avg_pool2d", OPS.avg_pool2d.default, (x, [3, 3], [2, 2], [1, 1], False, True, None)
    yield (
        "avg_pool2d_backward",
        OPS.avg_pool2d_backward.default,
        (r(3, 2, 4, 3), x, [3, 3], [2, 2], [1, 1], False, True, None),
    )
    y, idx = torch.ops.aten.max_pool2d_with_indices(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    yield "max_pool2d", OPS.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    yield (
        "max_pool2d_backward",
        OPS.max_pool2d_backward.default,
        (r(*y.shape), x, [3, 3], [2, 2], [1, 1], [1, 1], False, idx),
    )
    yield "channel_sum", OPS.channel_sum.default, (x, "fixed")
    yield "batch_norm_train", OPS.batch_norm_train.default, (x, r(2), r(2), 1e-5, 3 * 7 * 6, "exact", "portable-1")
    xhat, rstd = r(3, 2, 7, 6), r(2).abs()
    fused = torch.tensor(True)
    args = (r(3, 2, 7, 6), xhat, rstd, r(2), fused, 126, "exact", True)
    yield "batch_norm_train_backward", OPS.batch_norm_train_backward.default, args


CASES = list(_cases())


@pytest.mark.parametrize("name,op,args", CASES, ids=[c[0] for c in CASES])
def test_each_operator_passes_opcheck(name, op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def _bits(t: torch.Tensor) -> np.ndarray:
    a = t.detach().contiguous().numpy()
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("mode", ["fixed", "exact"])
def test_the_operator_and_the_array_api_give_the_same_bits(mode):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(33, 70, generator=g), torch.randn(70, 9, generator=g)
    ref = R.matmul(a.numpy(), b.numpy(), mode=mode)
    for got in (ops.mm(a, b, mode), OPS.mm(a, b, mode), OPS.mm(a.t().contiguous(), b, mode, True)):
        assert np.array_equal(_bits(got), ref.view(np.uint32))


def test_a_bad_mode_names_the_argument():
    with pytest.raises(ValueError, match="mode"):
        OPS.mm(torch.ones(2, 2), torch.ones(2, 2), "fast")


@pytest.mark.parametrize(
    "a,b",
    [(torch.tensor(1.0), torch.ones(2, 2)), (torch.ones(3), torch.ones(3, 2)), (torch.ones(2, 3), torch.ones(4, 2))],
)
def test_bad_shapes_are_errors_that_name_the_arguments(a, b):
    for call in (lambda: ops.mm(a, b, "fixed"), lambda: OPS.mm(a, b, "exact")):
        with pytest.raises(ValueError, match="a, b"):
            call()
    with pytest.raises(ValueError, match="x"):
        ops.sum0(torch.tensor(1.0), "exact")


def _mlp():
    return nn.Sequential(
        nn.Linear(12, 16),
        nn.GELU(),
        nn.LayerNorm(16),
        nn.ReLU(inplace=True),
        nn.Linear(16, 8),
        nn.Sigmoid(),
        nn.Linear(8, 5),
    )


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 12),
        nn.ReLU(inplace=True),
        nn.Linear(12, 5),
    )


class _Pooling(nn.Module):
    """Overlapping max pooling, a basic block with the parameter-free shortcut, and an average
    over a window large enough that a compiler's own loop would sum it in another order."""

    def __init__(self):
        super().__init__()
        from exactforge.models.zoo import BasicBlock

        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.block = BasicBlock(8, 16, 2)
        self.avg = nn.AvgPool2d(4)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.avg(self.block(self.pool(self.stem(x)))).flatten(1))


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0][:, -1])  # no torch reduction of our own


MODELS = {
    "mlp": (_mlp, (10, 12)),
    "cnn": (_cnn, (6, 1, 12, 12)),
    "attention": (_Attention, (4, 3, 8)),
    "pooling": (_Pooling, (4, 3, 16, 16)),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "fixed"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_compiled_reproducible_model_is_one_graph_with_the_eager_bits(model, mode):
    make, shape = MODELS[model]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=g)
    y = torch.randint(0, 5, (shape[0],), generator=g)

    def build():
        torch.manual_seed(0)
        return reproducible(make(), mode=mode)

    torch._dynamo.reset()
    explained = torch._dynamo.explain(build())(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]

    def step(m):
        out = m(x)
        loss = cross_entropy(out, y, mode=mode)
        loss.backward()
        return [out, loss] + [p.grad for p in m.parameters()]

    eager = step(build())
    compiled = step(torch.compile(build(), fullgraph=True))
    assert len(eager) == len(compiled)
    for e, c in zip(eager, compiled):
        assert np.array_equal(_bits(e), _bits(c))


@pytest.mark.parametrize("mode", ["fixed", "exact"])
@pytest.mark.parametrize("shape", [(7,), (9, 5), (6, 3, 4)])
def test_sum0_has_the_array_apis_bits(mode, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3)) * 1e3
    ref = R.sum(x.numpy(), axis=0, mode=mode)
    for got in (ops.sum0(x, mode), OPS.sum0(x, mode)):
        assert got.shape == x.shape[1:]
        assert np.array_equal(_bits(got), np.asarray(ref).view(np.uint32))


@pytest.mark.slow
def test_keyed_dropout_and_embedding_compile_around_their_numpy_code_with_the_eager_bits():
    """Not traced (their masks and token sums are NumPy code), so they break the graph; the
    compiled model still runs and gives the eager gradients."""
    import exactforge.nn as xnn

    def make():
        torch.manual_seed(0)
        return reproducible(nn.Sequential(nn.Embedding(10, 8), nn.Dropout(0.5), nn.Flatten(), nn.Linear(24, 3)))

    ids = torch.randint(0, 10, (4, 3), generator=torch.Generator().manual_seed(4))
    target = torch.tensor([0, 1, 2, 0])

    def grads(model, run):
        xnn.dropout_keys(model, seed=1, step=5, examples=torch.arange(4))
        cross_entropy(run(ids), target).backward()
        return [p.grad for p in model.parameters()]

    eager = make()
    compiled_model = make()
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model)
    for e, c in zip(grads(eager, eager), grads(compiled_model, compiled)):
        assert np.array_equal(_bits(e), _bits(c))
