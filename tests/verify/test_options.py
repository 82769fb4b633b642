"""VerifyOptions: verify_trace's settings as one object. The keyword arguments build the same
options (and replace an options object's fields), an unknown one is a TypeError naming it, a
wrong value is an invalid report naming the setting, and the report's JSON carries the
settings under ``options`` beside its other keys, unchanged."""

from __future__ import annotations

import ast
import json
import os

import pytest

from exactforge.data import load_digits
from exactforge.models import native as M
from exactforge.trace.record import record_native
from exactforge.verify import VerifyOptions, verify_trace

DIGITS = load_digits()

# the report's keys before the settings joined it: none may change
KEYS = {
    "accepted", "max_error", "epsilon", "distance", "policy", "steps", "epsilon_source", "reason", "valid",
    "num_steps", "declared_steps", "complete", "partial", "unverified_tail", "initial", "initial_verified",
    "initial_test", "resolution", "engine", "permute_batches", "threads", "total_segments", "checkpoints_checked",
    "declared", "learning_rates", "reference", "vacuous", "schedule", "domain", "known_data", "interval",
    "required", "executor", "machines", "arithmetic", "augmentation",
}  # fmt: skip


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("options") / "t")
    record_native(d, M.ModelSpec("fcn", 64, 10, (8,)), DIGITS, steps=6, batch_size=16, lr=0.05, checkpoint_every=2)
    return d


def test_keywords_and_an_options_object_give_the_same_report(trace):
    by_keywords = verify_trace(trace, policy="random", fraction=0.5, seed=3, permute_batches=1, threads=1)
    opts = VerifyOptions(policy="random", fraction=0.5, seed=3, permute_batches=1, threads=1)
    by_object = verify_trace(trace, opts)
    assert by_keywords.accepted and by_object.accepted
    assert by_keywords.to_dict()["steps"][0]["step"] == by_object.to_dict()["steps"][0]["step"]
    a, b = by_keywords.to_dict(), by_object.to_dict()
    for d in (a, b):
        for s in d["steps"]:
            s.pop("seconds")
    assert a == b


def test_keywords_replace_the_options_fields(trace):
    rep = verify_trace(trace, VerifyOptions(policy="random", fraction=0.5), policy="all")
    assert rep.policy == "all" and rep.options["policy"] == "all" and len(rep.steps) == rep.total_segments == 3


def test_an_unknown_setting_is_a_type_error_naming_it(trace):
    with pytest.raises(TypeError, match="'epsilom'"):
        verify_trace(trace, epsilom=0.0)
    with pytest.raises(TypeError, match="options"):
        verify_trace(trace, {"epsilon": 0.0})


@pytest.mark.parametrize(
    "setting, value, named",
    [
        ("epsilon", -1.0, "epsilon"),
        ("epsilon", "loose", "epsilon"),
        ("distance_kind", "l3", "distance"),
        ("policy", "some", "policy"),
        ("threads", 0, "threads"),
        ("permute_batches", -2, "permute_batches"),
        ("require", "everything", "require"),
        ("reference_epochs", 0, "reference_epochs"),
        ("max_interval", 0, "max_interval"),
        ("limits", 5, "limits"),
    ],
)
def test_a_wrong_setting_is_an_invalid_report_naming_it(trace, setting, value, named):
    rep = verify_trace(trace, **{setting: value})
    assert not rep.valid and not rep.accepted and rep.reason.startswith(named), rep.reason
    json.dumps(rep.to_dict(), allow_nan=False)  # the settings, wrong ones included, are JSON


def test_the_report_carries_the_settings_and_keeps_its_keys(trace):
    rep = verify_trace(trace, dataset=DIGITS, threads=1, require="vacuous")
    d = json.loads(rep.to_json())
    assert set(d) == KEYS | {"options"}
    opts = d["options"]
    assert set(opts) == {f for f in VerifyOptions.__dataclass_fields__}
    assert opts["threads"] == 1 and opts["require"] == "vacuous" and opts["dataset"] == "Dataset"
    assert opts["model"] is None and opts["limits"]["max_checkpoint_bytes"] > 0


def test_imports_inside_verify_run_one_way():
    """No module of exactforge.verify imports one that imports it back (directly or through others)."""
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "python", "exactforge", "verify")
    names = {f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py"}
    graph = {}
    for name in names:
        tree = ast.parse(open(os.path.join(folder, name + ".py")).read())
        graph[name] = {
            n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module in names
        }

    def reaches(a, b, seen=()):
        return any(c == b or (c not in seen and reaches(c, b, (*seen, c))) for c in graph[a])

    assert not [n for n in names if reaches(n, n)], graph
