"""Every import path of the modules that moved into subpackages still imports, and gives the
same module object as the new path (so isinstance, monkeypatching and pickles agree)."""

from __future__ import annotations

import importlib
import pickle

import pytest

from exactforge._compat import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_new_module(old):
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])


def test_from_imports_and_attributes_of_the_old_paths():
    import exactforge
    from exactforge import exact, record
    from exactforge.models import REDUCTION_PLAN, ModelSpec, sgd_step  # the models module, now a package
    from exactforge.verify import _check_table, verify_trace  # likewise

    assert exact is importlib.import_module("exactforge.forging.solvers")
    assert record.TraceRecorder is exactforge.trace.record.TraceRecorder
    assert REDUCTION_PLAN == exactforge.models.native.REDUCTION_PLAN and ModelSpec and sgd_step
    assert verify_trace is exactforge.verify.verifier.verify_trace and _check_table


def test_pickles_name_the_new_module_and_load_either_way():
    from exactforge.forging.search import Domain

    blob = pickle.dumps(Domain(2, 2, 2), protocol=0)  # text: the module name can be edited in place
    assert b"exactforge.forging.search" in blob
    assert pickle.loads(blob) == Domain(2, 2, 2)
    old = blob.replace(b"exactforge.forging.search", b"exactforge.search")
    assert pickle.loads(old) == Domain(2, 2, 2)
