"""The package layering every ``raydet/<package>/__init__.py`` declares: imports run downward only."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "raydet"
PACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
FOUNDATION = {"errors": (), "config": ("errors",)}  # top-level modules every package may import
TOP = ("cli", "pipeline")  # top-level modules that may import anything


def raydet_imports(path: Path) -> set[str]:
    """The first component under ``raydet`` of every import in ``path`` (at module top or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "raydet" else [f"raydet.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("raydet.")}
    return found


def test_every_module_is_in_a_package_or_is_foundation_or_top():
    loose = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert loose == sorted([*FOUNDATION, *TOP])


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_itself_and_what_its_init_declares(package):
    may = importlib.import_module(f"raydet.{package}").MAY_IMPORT
    assert package not in may and set(may) <= set(PACKAGES) | set(FOUNDATION)
    upward = {
        str(m.relative_to(PACKAGE)): sorted(raydet_imports(m) - set(may) - {package})
        for m in (PACKAGE / package).rglob("*.py")
    }
    assert {m: bad for m, bad in upward.items() if bad} == {}


def test_the_declared_layers_have_no_cycle():
    may = {p: set(importlib.import_module(f"raydet.{p}").MAY_IMPORT) & set(PACKAGES) for p in PACKAGES}
    order: list[str] = []
    while len(order) < len(may):
        ready = [p for p in sorted(may) if p not in order and may[p] <= set(order)]
        assert ready, f"a cycle among {sorted(set(may) - set(order))}"
        order += ready


@pytest.mark.parametrize("module", sorted(FOUNDATION))
def test_foundation_modules_import_only_the_foundation_below_them(module):
    assert raydet_imports(PACKAGE / f"{module}.py") <= set(FOUNDATION[module])


def test_import_raydet_and_its_packages_loads_neither_tensorflow_nor_ray():
    code = (
        "import sys, raydet, raydet.config, raydet.cli, "
        + ", ".join(f"raydet.{p}" for p in PACKAGES)
        + "; print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'ray', 'tf_keras'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]"
