"""The package is layered: a module imports only from its own subpackage or from a layer below
(function-level imports included). Read from the source with ast, nothing is imported."""

from __future__ import annotations

import ast
import os

PKG = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "python", "exactforge"))

#: bottom to top; the modules of one entry may not import each other unless they share a subpackage
LAYERS = [
    ("exactforge._core", "exactforge._cuda"),  # the compiled modules
    ("exactforge._backend",),
    ("exactforge.reduce",),
    ("exactforge.data_torchvision",),  # the file readers data.py calls
    ("exactforge.mathfn", "exactforge.data"),
    ("exactforge.ops",),  # the kernels as torch operators
    ("exactforge",),  # the package root: compile_options, thread counts
    ("exactforge.report",),
    ("exactforge.distributed",),
    ("exactforge.nn",),
    ("exactforge.models",),
    ("exactforge.trace",),
    ("exactforge.pol",),
    ("exactforge.verify",),
    ("exactforge.forging",),
    ("exactforge.invert",),
    ("exactforge.studies",),
    ("exactforge.cli",),
]


def _unit(module: str) -> tuple:
    """(layer index, the layer entry it matched) of a module: the longest entry that prefixes it."""
    best = None
    for i, layer in enumerate(LAYERS):
        for name in layer:
            if module == name or module.startswith(name + ".") and name != "exactforge":
                if best is None or len(name) > len(best[1]):
                    best = (i, name)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _modules():
    for folder, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                rel = os.path.relpath(path, os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                yield path, rel[: -len(".__init__")] if rel.endswith(".__init__") else rel, f == "__init__.py"


def _imports(path: str, module: str, is_pkg: bool):
    tree = ast.parse(open(path).read())
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "exactforge":
                    yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "exactforge":
                target = node.module
            else:
                continue
            for a in node.names:  # `from . import x` may import the submodule x
                sub = f"{target}.{a.name}"
                native = sub in ("exactforge._core", "exactforge._cuda")  # extension modules
                yield (
                    node.lineno,
                    sub
                    if native
                    or os.path.exists(os.path.join(os.path.dirname(PKG), *sub.split(".")) + ".py")
                    or os.path.isdir(os.path.join(os.path.dirname(PKG), *sub.split(".")))
                    else target,
                )


def test_every_import_goes_down_or_stays_in_its_subpackage():
    wrong = []
    for path, module, is_pkg in _modules():
        own_layer, own = _unit(module)
        for line, target in _imports(path, module, is_pkg):
            layer, unit = _unit(target)
            if layer < own_layer or unit == own:
                continue
            wrong.append(f"{module}:{line} imports {target} ({unit} is not below {own})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)
