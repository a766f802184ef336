"""lib's packages import downward only: utilities < kernels < env < models < data < control
< diagnostics."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = [
    "",
    "kernels",
    "env",
    "models",
    "data",
    "control",
    "diagnostics",
]  # "": lib's top-level modules


def layer(module: str) -> str | None:
    """The layer of `lib.x.y` ("" for lib's top-level modules); None outside lib."""
    parts = module.split(".")
    if parts[0] != "lib":
        return None
    return parts[1] if len(parts) > 2 and parts[1] in ORDER else ""


def lib_modules():
    out = []
    for folder, _, files in os.walk(os.path.join(ROOT, "lib")):
        for f in files:
            if f.endswith(".py") and f != "__init__.py":
                path = os.path.relpath(os.path.join(folder, f), ROOT)
                out.append(path[:-3].replace(os.sep, "."))
    return sorted(out)


def imported(path):
    """Every `lib...` module imported anywhere in a file (function-level too)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("lib."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "lib" or node.module in (f"lib.{p}" for p in ORDER if p):
                yield from (f"{node.module}.{a.name}" for a in node.names)
            elif node.module.startswith("lib."):
                yield node.module


def test_the_packages_are_the_layers():
    found = {layer(m) for m in lib_modules()}
    assert found == set(ORDER)


@pytest.mark.parametrize("module", lib_modules())
def test_imports_point_downward(module):
    mine = ORDER.index(layer(module))
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    for target in imported(path):
        theirs = layer(target)
        assert ORDER.index(theirs) <= mine, f"{module} imports {target}, a layer above it"
