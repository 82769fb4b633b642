"""Import paths from before the subpackages: ``exactforge.exact`` is
``exactforge.forging.solvers`` and so on. Each old path gives the same module object as the
new one (one module, not a copy), so ``isinstance`` checks, monkeypatching and pickles made
with either path keep working."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Optional, Sequence

#: old module path -> the module that holds its code now
MOVED = {
    "exactforge._arrays": "exactforge._backend.arrays",
    "exactforge._device": "exactforge._backend.device",
    "exactforge._native": "exactforge._backend.native",
    "exactforge._json": "exactforge.report.jsonio",
    "exactforge.figures": "exactforge.report.figures",
    "exactforge.losses": "exactforge.nn.losses",
    "exactforge.torch_models": "exactforge.models.torch_fcn",
    "exactforge.zoo": "exactforge.models.zoo",
    "exactforge.optim": "exactforge.models.optim",
    "exactforge.record": "exactforge.trace.record",
    "exactforge.distances": "exactforge.verify.distances",
    "exactforge.exact": "exactforge.forging.solvers",
    "exactforge.search": "exactforge.forging.search",
    "exactforge.certify": "exactforge.forging.certify",
    "exactforge.attacks": "exactforge.forging.attacks",
    "exactforge.game": "exactforge.forging.game",
    "exactforge.repro": "exactforge.studies.repro",
    "exactforge.reevaluate": "exactforge.studies.reevaluate",
    "exactforge.demo": "exactforge.studies.demo",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self._remember(importlib.import_module(self.target))

    def exec_module(self, module: ModuleType) -> None:
        # The target ran its own code when it was imported. importlib has just stamped the
        # alias's spec on it: give it back its own, so reloads and tools see the real module.
        module.__spec__ = self.spec

    def _remember(self, module: ModuleType) -> ModuleType:
        self.spec = module.__spec__
        return module


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Adds the finder once per interpreter (a reload of exactforge does not add a second)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
