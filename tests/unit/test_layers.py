"""The import layers of docs/architecture.md hold: no module imports a package above it.

The layer table is read from the architecture map itself, so the map and the code
cannot drift apart: a new package must be given a layer there, and an import that
reaches up (or sideways, into a peer of the same layer) fails here with the file and
line that does it. Every import counts: module level, inside functions, and under
``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "platform" / "attune"
MAP = ROOT / "docs" / "architecture.md"
_ROW = re.compile(r"^\|\s*(\d+)\s*\|([^|]+)\|")


@dataclass(frozen=True)
class Import:
    source: str  # the importing file, relative to the repository
    line: int
    importer: str  # top-level unit of the importing module ("serving", "cli", ...)
    imported: str  # top-level unit it reaches


def layers_from_map(text: str) -> dict[str, int]:
    """``{unit: layer}`` from the rows ``| n | `a`, `b` | ... |`` of the map's layer table."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for line in section.splitlines():
        row = _ROW.match(line)
        if row:
            for unit in re.findall(r"`([a-z_]+)`", row.group(2)):
                assert unit not in layers, f"{unit} is in two layers of {MAP.name}"
                layers[unit] = int(row.group(1))
    return layers


def unit_of(module: str) -> str | None:
    """The top-level unit of ``attune.x.y`` (``x``), or None outside the package / for its root."""
    parts = module.split(".")
    if parts[0] != "attune" or len(parts) == 1:
        return None
    return parts[1]


@functools.cache
def units_on_disk() -> frozenset[str]:
    return frozenset(
        path.stem if path.is_file() else path.name
        for path in PACKAGE.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()
    )


def imports_of(path: Path) -> list[Import]:
    """Every import of another attune unit made by one file."""
    relative = path.relative_to(PACKAGE.parent)
    return imports_in(path.read_text(), relative)


def imports_in(source: str, relative: Path) -> list[Import]:
    """Every import of another attune unit in ``source``, the text of file ``relative``."""
    module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
    importer = unit_of(module) or "attune"
    units = units_on_disk()
    found: list[Import] = []
    for node in ast.walk(ast.parse(source, filename=str(relative))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "attune":
                # ``from attune import storage`` names a unit; ``from attune import
                # __version__`` reads the root package, which every import loads anyway.
                targets = [f"attune.{alias.name}" for alias in node.names]
            else:
                targets = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{relative}:{node.lineno}: relative import; write attune.…")
        for target in targets:
            unit = unit_of(target)
            if unit in units and unit != importer:
                found.append(Import(str(relative), node.lineno, importer, unit))
    return found


@functools.cache
def all_imports() -> tuple[Import, ...]:
    return tuple(found for path in sorted(PACKAGE.rglob("*.py")) for found in imports_of(path))


def test_every_unit_has_one_layer_in_the_map() -> None:
    layers = layers_from_map(MAP.read_text())
    assert units_on_disk() | {"attune"} == set(layers), (
        f"packages without a layer: {sorted(units_on_disk() - set(layers))}; "
        f"layers naming nothing: {sorted(set(layers) - units_on_disk() - {'attune'})}"
    )


def test_no_module_imports_a_unit_of_its_own_layer_or_above() -> None:
    layers = layers_from_map(MAP.read_text())
    upward = [
        f"{found.source}:{found.line}: {found.importer} (layer {layers[found.importer]}) "
        f"imports {found.imported} (layer {layers[found.imported]})"
        for found in all_imports()
        if layers[found.imported] >= layers[found.importer]
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_serving_never_imports_training() -> None:
    assert not [
        found
        for found in all_imports()
        if found.importer == "serving" and found.imported in {"training", "demo"}
    ]


@pytest.mark.parametrize(
    ("source", "should_pass"),
    [
        ("from attune.errors import ConfigError\n", True),
        ("def f():\n    from attune.serving.config import AppArgs\n", False),
        ("import attune.training.pipeline\n", False),
        ("from attune import storage\n", True),
        ("from attune import demo\n", False),
    ],
)
def test_the_check_sees_every_import_form(source: str, should_pass: bool) -> None:
    """The walker finds lazy, absolute and ``from attune import unit`` imports alike."""
    layers = layers_from_map(MAP.read_text())
    found = imports_in(source, Path("attune/data/probe.py"))
    assert found or should_pass
    assert all(layers[f.imported] < layers["data"] for f in found) is should_pass
