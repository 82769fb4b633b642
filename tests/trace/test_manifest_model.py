"""The typed manifest (exactforge.trace.manifest): a hostile manifest, every hash rebuilt, is
refused when the trace is opened, with a TraceError that names the field as
``manifest.<section>.<field>``; ``exactforge verify`` ends with exit 2 and that name. Honest
traces of every fixture read into the same view, their bytes and hashes untouched."""

from __future__ import annotations

import glob
import json
import os

import pytest

from exactforge.cli import main
from exactforge.data import load_digits
from exactforge.models import native as M
from exactforge.trace import Trace, TraceError
from exactforge.trace.format import sha256_bytes
from exactforge.trace.manifest import TraceSpec
from exactforge.trace.record import record_native
from exactforge.verify import verify_trace

from hostile import copy, rechain

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
TORCH = os.path.join(FIXTURES, "golden", "zen3", "native", "mlp_sgd_steplr")


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("model") / "native")
    record_native(d, M.ModelSpec("fcn", 64, 10, (8,)), load_digits(), steps=2, batch_size=16, lr=0.05)
    return d


def _set(path, value):
    def edit(man):
        obj = man
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return edit


def _adam_with_sgd_keys(man):
    man["optimizer"]["name"] = "adam"


def _abstract_child(man):
    man["scheduler"]["children"] = [{"class": "torch.optim.lr_scheduler.LRScheduler", "state": {}}]


# (base trace, edit, the field the error must name)
CASES = {
    "abstract LRScheduler": (
        "torch",
        _set(["scheduler", "class"], "torch.optim.lr_scheduler.LRScheduler"),
        "scheduler.class",
    ),
    "abstract _LRScheduler": (
        "torch",
        _set(["scheduler", "class"], "torch.optim.lr_scheduler._LRScheduler"),
        "scheduler.class",
    ),
    "abstract sub-scheduler": ("torch", _abstract_child, "scheduler.children[0].class"),
    "scheduler state not an object": ("torch", _set(["scheduler", "state"], [1]), "scheduler.state"),
    "scheduler with an unknown field": ("torch", _set(["scheduler", "code"], "x"), "scheduler"),
    "adam with SGD's keys": ("torch", _adam_with_sgd_keys, "optimizer.betas"),
    "code-like optimizer name": (
        "torch",
        _set(["optimizer", "name"], "__import__('os').system('id')"),
        "optimizer.name",
    ),
    "momentum a string": ("torch", _set(["optimizer", "momentum"], "x"), "optimizer.momentum"),
    "momentum negative": ("torch", _set(["optimizer", "momentum"], -0.5), "optimizer.momentum"),
    "nesterov a number": ("torch", _set(["optimizer", "nesterov"], 1), "optimizer.nesterov"),
    "an option torch cannot replay": ("torch", _set(["optimizer", "fused"], True), "optimizer.fused"),
    "groups not a list": ("torch", _set(["optimizer", "groups"], {"params": [0]}), "optimizer.groups"),
    "optimizer not an object": ("torch", _set(["optimizer"], "sgd"), "optimizer"),
    "lr a string": ("torch", _set(["lr"], "0.05"), "lr"),
    "reduction unknown": ("torch", _set(["reduction"], "sloppy"), "reduction"),
    "accumulate 1": ("torch", _set(["accumulate"], 1), "accumulate"),
    "clip_grad negative": ("torch", _set(["clip_grad"], {"norm": -1.0}), "clip_grad"),
    "dropout seed negative": ("torch", _set(["dropout"], {"seed": -1}), "dropout"),
    "torch_class not a name": ("torch", _set(["model"], {"torch_class": 3}), "model"),
    "data fingerprint not a digest": ("torch", _set(["data", "fingerprint"], "x"), "data.fingerprint"),
    "data size zero": ("torch", _set(["data", "num_examples"], 0), "data.num_examples"),
    "native with momentum": ("native", _set(["optimizer", "momentum"], 0.9), "optimizer.momentum"),
    "native adam": ("native", _set(["optimizer", "name"], "adam"), "optimizer.name"),
    "native zoo model": ("native", _set(["model"], {"zoo": "lenet", "input_shape": [64], "num_classes": 10}), "model"),
    "native scheduler": ("native", _set(["scheduler"], {"class": "x.StepLR", "state": {}}), "scheduler"),
    "native model spec of another kind": ("native", _set(["model", "kind"], "resnet"), "model"),
}


def _edited(base, tmp_path, edit):
    d = copy(base, str(tmp_path / "t"))
    rechain(d, edit)
    return d


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_hostile_field_is_refused_when_the_trace_is_opened(native, tmp_path, name):
    base, edit, field = CASES[name]
    d = _edited(TORCH if base == "torch" else native, tmp_path, edit)
    with pytest.raises(TraceError) as err:
        Trace.open(d)
    assert str(err.value).startswith(f"manifest.{field}:"), str(err.value)
    rep = verify_trace(d)
    assert not rep.valid and not rep.accepted and rep.reason == str(err.value)


@pytest.mark.parametrize(
    "name", ["abstract LRScheduler", "abstract _LRScheduler", "adam with SGD's keys", "code-like optimizer name"]
)
def test_the_cli_exits_2_naming_the_field(native, tmp_path, name, capsys):
    base, edit, field = CASES[name]
    d = _edited(TORCH, tmp_path, edit)
    out = str(tmp_path / "report.json")
    assert main(["verify", d, "--quiet", "--json", out]) == 2
    with open(out) as f:
        rep = json.load(f)
    assert not rep["valid"] and f"manifest.{field}" in rep["reason"]
    assert f"manifest.{field}" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(FIXTURES, "**", "manifest.json"), recursive=True)))
def test_every_fixture_reads_into_the_typed_view_with_its_bytes_unchanged(path):
    with open(path, "rb") as f:
        raw = f.read()
    trace = Trace.open(os.path.dirname(path))
    assert trace.manifest_hash == sha256_bytes(raw)
    spec = trace.spec
    assert spec == TraceSpec.parse(json.loads(raw))
    assert spec.engine == trace.manifest["engine"] and spec.optimizer.kind == trace.manifest["optimizer"]["name"]
    assert spec.optimizer.lr == trace.manifest["optimizer"]["lr"] and spec.lr == trace.manifest["lr"]
    assert spec.data.fingerprint == trace.manifest["data"]["fingerprint"]
    if "scheduler" in trace.manifest:
        assert spec.scheduler is not None and spec.scheduler.cls == trace.manifest["scheduler"]["class"]
    with pytest.raises(AttributeError):
        spec.lr = 1.0  # type: ignore[misc]
