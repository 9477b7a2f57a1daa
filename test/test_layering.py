"""The package's layers, read from its imports: core <- nodes/ <- apps/ (and cli.py on top).

The ROS-free core (model, training, data, control, sim, recording, evaluation, ...) imports
nothing from ``nodes/`` or ``apps/`` and no rclpy; ``nodes/`` imports nothing from ``apps/``.
Programs that start or drive nodes live in ``apps/``.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "roboalign_ros"
TOP = {"apps": 2, "cli.py": 3}          # layer of each top-level entry above the core
NODES = 1


def layer(path: Path) -> int:
    """0: core, 1: nodes/, 2: apps/, 3: cli.py."""
    first = path.relative_to(PACKAGE).parts[0]
    return NODES if first == "nodes" else TOP.get(first, 0)


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` (or ``source`` placed there) imports.

    Relative imports are resolved; imports inside functions count too.
    """
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    package = ["roboalign_ros", *path.relative_to(PACKAGE).parent.parts]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def module_layer(name: str) -> int | None:
    """The layer of ``roboalign_ros.<...>`` module ``name`` (None: not this package's)."""
    parts = name.split(".")
    if parts[0] != "roboalign_ros" or len(parts) == 1:
        return None
    return NODES if parts[1] == "nodes" else {"apps": 2, "cli": 3}.get(parts[1], 0)


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_sources_are_found():
    assert len(SOURCES) > 50 and any(layer(p) == NODES for p in SOURCES)
    assert any(layer(p) == 2 for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_layer_above_its_own(path):
    own = layer(path)
    above = sorted(n for n in imported_modules(path)
                   if (module_layer(n) or 0) > own)
    assert not above, f"{path.relative_to(PACKAGE)} (layer {own}) imports {above}"
    if own == 0:
        ros = sorted(n for n in imported_modules(path) if n.split(".")[0] == "rclpy")
        assert not ros, f"{path.relative_to(PACKAGE)}: the core must not import {ros}"


def test_the_reader_sees_relative_and_lazy_imports():
    # the check itself: a function-level relative import of nodes/ in the core is caught
    src = "def f():\n    from ..nodes.eval_node import EvalNode\n    import rclpy\n"
    names = imported_modules(PACKAGE / "evaluation" / "headless.py", src)
    assert {"roboalign_ros.nodes.eval_node", "rclpy"} <= names
    assert module_layer("roboalign_ros.nodes.eval_node") == NODES
    assert module_layer("roboalign_ros.apps.demo") == 2 and module_layer("numpy") is None
