"""Traces of user loops that replay faithfully: reproducible CNNs, losses, refusals."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch
from torch import nn

import exactforge.nn as xnn
from exactforge.data import load_dataset
from exactforge.trace.record import TraceRecorder
from exactforge.verify import verify_trace


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 10),
    )


def record(tmp, model, opt, loss_fn, loss_for_loop, data, steps=4, b=16, **kw):
    X = torch.from_numpy(data.X).reshape(len(data), *(data.shape or (data.dim,)))
    y = torch.from_numpy(data.y)
    rng = np.random.default_rng(0)
    with TraceRecorder(str(tmp), model, opt, data, steps=steps, batch_size=b, loss_fn=loss_fn, **kw) as rec:
        for _ in range(steps):
            idx = rng.choice(len(data), b, replace=False)
            t = torch.from_numpy(idx)
            rec.begin(idx)
            loss = loss_for_loop(model(X[t]), y[t])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(idx)


def test_reproducible_cnn_trace_is_accepted_at_epsilon_0_under_any_batch_order_and_threads(tmp_path):
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = xnn.reproducible(small_cnn())
    fresh = small_cnn()
    record(
        tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=0.05), xnn.cross_entropy, xnn.cross_entropy, data
    )
    r = verify_trace(str(tmp_path / "t"), model=fresh, permute_batches=3, threads=1)
    assert r.valid and r.accepted and r.max_error == 0.0, r.reason
    # torch's own layers, replayed under a permutation, are not bit for bit
    torch.manual_seed(0)
    plain = small_cnn()
    record(tmp_path / "p", plain, torch.optim.SGD(plain.parameters(), lr=0.05), None, nn.functional.cross_entropy, data)
    assert verify_trace(str(tmp_path / "p"), model=small_cnn()).accepted  # same order, same machine
    r = verify_trace(str(tmp_path / "p"), model=small_cnn(), permute_batches=3)
    assert r.valid and r.max_error > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss_fn",
    [
        nn.CrossEntropyLoss(label_smoothing=0.1),
        nn.MSELoss(),
        functools.partial(nn.functional.cross_entropy, label_smoothing=0.2),
    ],
)
def test_losses_are_recorded_and_replayed(tmp_path, loss_fn):
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = small_cnn()
    if isinstance(loss_fn, nn.MSELoss):
        loop = lambda out, y: loss_fn(out, nn.functional.one_hot(y, 10).float())
    else:
        loop = loss_fn
    record(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=0.05), loss_fn, loop, data)
    r = verify_trace(str(tmp_path / "t"), model=small_cnn())
    assert r.valid and r.accepted and r.max_error == 0.0, r.reason


def test_custom_loss_needs_the_verifiers_function(tmp_path):
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = small_cnn()

    def my_loss(out, y):
        return nn.functional.cross_entropy(out, y) + 0.01 * out.pow(2).mean()

    record(tmp_path / "t", model, torch.optim.SGD(model.parameters(), lr=0.05), my_loss, my_loss, data)
    r = verify_trace(str(tmp_path / "t"), model=small_cnn())
    assert not r.valid and "loss_fn" in r.reason
    assert verify_trace(str(tmp_path / "t"), model=small_cnn(), loss_fn=my_loss).accepted


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
    ],
    ids=["momentum", "dampening+wd", "nesterov", "wd", "adam", "adamw"],
)
@pytest.mark.parametrize("reproducible", [False, True])
def test_optimizers_with_state_replay_at_epsilon_0(tmp_path, make_opt, reproducible):
    """The optimizer's state is in every checkpoint (checkpoint_every=2: segments of two steps
    replay the state forward); with exactforge.nn layers, under a permuted batch too."""
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = xnn.reproducible(small_cnn()) if reproducible else small_cnn()
    loss = xnn.cross_entropy if reproducible else nn.functional.cross_entropy
    record(tmp_path / "t", model, make_opt(model.parameters()), loss, loss, data, steps=5, checkpoint_every=2)
    r = verify_trace(str(tmp_path / "t"), model=small_cnn(), permute_batches=1 if reproducible else None)
    assert r.valid and r.accepted and r.max_error == 0.0, r.reason
    # the state is checked too: a forged momentum buffer in a checkpoint is caught
    from safetensors.numpy import load_file

    ck = load_file(str(tmp_path / "t" / "checkpoints" / sorted(os.listdir(tmp_path / "t" / "checkpoints"))[1]))
    assert any(k.startswith("optimizer.") for k in ck) or "momentum" not in str(make_opt)


@pytest.mark.parametrize(
    "make_opt,why",
    [
        (lambda p: torch.optim.Adagrad(p, lr=1e-3), "Adagrad"),
        (lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), "fused"),
        (lambda p: torch.optim.SGD([{"params": list(p)[:2]}], lr=0.1), "every parameter of the model"),
    ],
)
def test_unreplayable_optimizers_are_refused_when_recording(tmp_path, make_opt, why):
    model = small_cnn()
    with pytest.raises(ValueError, match=why):
        TraceRecorder(str(tmp_path / "t"), model, make_opt(model.parameters()), load_dataset("digits"))


def dropout_net():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10), nn.Dropout(0.1)
    )


@pytest.mark.parametrize("reproducible", [False, True])
def test_training_dropout_traces_are_keyed_and_accepted(tmp_path, reproducible):
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = dropout_net()
    if reproducible:
        model = xnn.reproducible(model)
    loss = xnn.cross_entropy if reproducible else nn.functional.cross_entropy
    record(
        tmp_path / "t",
        model,
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        None if not reproducible else xnn.cross_entropy,
        loss,
        data,
        steps=5,
        dropout_seed=11,
    )
    r = verify_trace(str(tmp_path / "t"), model=dropout_net())
    assert r.valid and r.accepted and r.max_error == 0.0, r.reason
    if reproducible:  # masks follow the examples: any batch order, any thread count
        r = verify_trace(str(tmp_path / "t"), model=dropout_net(), permute_batches=5, threads=1)
        assert r.valid and r.accepted and r.max_error == 0.0, r.reason
    import json

    man = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert man["dropout"] == {"seed": 11} and man["eval_modules"] == []


def test_dropout_masks_follow_examples_and_have_the_declared_rate():
    keep = xnn.functional.keep_mask(3, 7, 1, np.arange(2000), 500, 0.25)
    assert abs(keep.mean() - 0.75) < 0.005
    again = xnn.functional.keep_mask(3, 7, 1, np.arange(2000)[::-1], 500, 0.25)
    assert np.array_equal(keep[::-1], again)
    other = [xnn.functional.keep_mask(*k, np.arange(2000), 500, 0.25) for k in ((4, 7, 1), (3, 8, 1), (3, 7, 2))]
    assert all(0.5 < (o == keep).mean() < 0.7 for o in other)  # independent streams agree 0.75^2 + 0.25^2


def test_dropout_without_keys_and_unkeyable_dropout_are_refused(tmp_path):
    data = load_dataset("digits")
    model = dropout_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X = torch.from_numpy(data.X[:8])
    with TraceRecorder(str(tmp_path / "t"), model, opt, data) as rec:
        with pytest.raises(RuntimeError, match="dropout_keys"):
            model(X)  # no rec.begin(idx): no step may draw from torch's RNG
        rec.begin(np.arange(8))
        model(X).sum().backward()
        with pytest.raises(ValueError, match="begin"):
            rec.step(np.arange(1, 9))
    with pytest.raises(ValueError, match="Dropout2d"):
        TraceRecorder(str(tmp_path / "u"), nn.Sequential(nn.Dropout2d(0.5)), opt, data)
    model.eval()
    TraceRecorder(str(tmp_path / "v"), model, opt, data)  # eval mode: recorded as such
    with pytest.raises(ValueError, match="class weights"):
        TraceRecorder(str(tmp_path / "w"), model, opt, data, loss_fn=nn.CrossEntropyLoss(weight=torch.ones(10)))


def test_eval_mode_modules_are_replayed_in_eval_mode(tmp_path):
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = dropout_net()
    model[3].eval()  # this dropout off, the other on
    record(
        tmp_path / "t",
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        None,
        nn.functional.cross_entropy,
        data,
        steps=3,
    )
    r = verify_trace(str(tmp_path / "t"), model=dropout_net())
    assert r.valid and r.accepted and r.max_error == 0.0, r.reason


@pytest.mark.parametrize(
    "edit,why",
    [
        (lambda m: m.update(loss={"name": "evil"}), "loss"),
        (lambda m: m.update(loss={"name": "cross_entropy", "label_smoothing": 7}), "label_smoothing"),
        (lambda m: m.update(loss={"name": "custom"}), "loss_fn"),
        (lambda m: m.update(input_shape=[3, 1000]), "input_shape"),
        (lambda m: m.update(input_shape="64"), "input_shape"),
        (lambda m: m.update(dropout={"seed": -1}), "dropout"),
        (lambda m: m.update(dropout=[1]), "dropout"),
        (lambda m: m.update(eval_modules=[7]), "eval_modules"),
        (lambda m: m.update(eval_modules=["no.such.module"]), "eval_modules"),
        (lambda m: m.update(input_shape=[1 + 2**58, 64]), "input_shape"),  # 64 + 2^64: 64 once wrapped in int64
        (lambda m: m.update(reduction="warp"), "reduction"),
        (lambda m: m.update(optimizer={"name": "rmsprop", "lr": 0.1}), "optimizer"),
        (lambda m: m["optimizer"].update(momentum=float("1e300")), "momentum"),
        (lambda m: m["optimizer"].update(extra=1), "takes exactly"),
        (lambda m: m["model"].update(note="x"), "torch_class"),
        (lambda m: m.update(model={"zoo": "lenet", "input_shape": [1, 8, 8], "num_classes": 10, "w": 2}), "zoo entry"),
    ],
)
def test_hostile_loss_and_shape_fields_are_refused(tmp_path, edit, why):
    """A prover's manifest cannot name a loss, an input shape or a layer mode the verifier does
    not know: the trace is invalid, with the field named."""
    from hostile import rechain

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = small_cnn()
    record(
        tmp_path / "t",
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        None,
        nn.functional.cross_entropy,
        data,
        steps=2,
    )
    rechain(str(tmp_path / "t"), manifest_edit=edit)
    r = verify_trace(str(tmp_path / "t"), model=small_cnn())
    assert not r.valid and why in r.reason, r.reason


@pytest.mark.slow
def test_train_lenet_native_on_mnist_5k_verifies_at_epsilon_0_permuted(tmp_path):
    """The CLI's native CNN engine: LeNet-5 as in the papers (61,706 parameters on 28x28)."""
    import json

    from exactforge.cli import main
    from exactforge.models.zoo import build_model

    assert sum(p.numel() for p in build_model("lenet", (1, 28, 28), 10).parameters()) == 61706
    out = tmp_path / "t"
    assert (
        main(
            [
                "train",
                "--model",
                "lenet",
                "--dataset",
                "mnist-5k",
                "--steps",
                "2",
                "--batch-size",
                "20",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.load(open(out / "manifest.json"))["model"]["zoo"] == "lenet"
    assert main(["verify", str(out), "--epsilon", "0", "--permute-batches", "1", "--threads", "1", "--quiet"]) == 0
    assert (
        main(["train", "--model", "lenet", "--mode", "fixed", "--steps", "1", "--out", str(tmp_path / "f"), "--quiet"])
        == 2
    )


@pytest.mark.slow
def test_train_transformer_native_verifies_at_epsilon_0_permuted(tmp_path):
    """Embedding, causal self-attention, LayerNorm: the Transformer on the reproducible path;
    torch's own layers replayed in the same order on the same machine."""
    from exactforge.cli import main

    out = tmp_path / "t"
    assert (
        main(
            [
                "train",
                "--model",
                "transformer",
                "--dataset",
                "synthetic-tokens",
                "--steps",
                "3",
                "--batch-size",
                "16",
                "--lr",
                "0.05",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    r = verify_trace(str(out), permute_batches=2, threads=1)
    assert r.valid and r.accepted and r.max_error == 0.0 and r.num_steps == 3, r.reason
    out = tmp_path / "torch"
    assert (
        main(
            [
                "train",
                "--engine",
                "torch",
                "--model",
                "transformer",
                "--dataset",
                "synthetic-tokens",
                "--steps",
                "2",
                "--batch-size",
                "16",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["verify", str(out), "--quiet"]) == 0
    assert (
        main(
            [
                "train",
                "--model",
                "transformer",
                "--dataset",
                "digits",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "d"),
                "--quiet",
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    "edit,why",
    [
        (lambda m: m["model"].update(zoo="transformer"), "does not fit"),
        (lambda m: m["model"].update(zoo="resnet"), "zoo model"),
        (lambda m: m["model"].update(input_shape=[1, 28, 28]), "does not fit"),
        (lambda m: m["model"].update(num_classes=3), "does not fit"),
    ],
)
def test_hostile_zoo_entries_are_refused(tmp_path, edit, why):
    from exactforge.trace.record import record_zoo

    from hostile import rechain

    record_zoo(str(tmp_path / "t"), "lenet", load_dataset("digits"), steps=1, batch_size=8)
    rechain(str(tmp_path / "t"), manifest_edit=edit)
    r = verify_trace(str(tmp_path / "t"))
    assert not r.valid and why in r.reason, r.reason
