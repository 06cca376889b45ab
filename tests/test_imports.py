"""The import graph of src/forwardguard, read with ``ast``: no circles, stages that share code through the
package's root and ``models`` rather than through each other, and light modules that stay light."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "forwardguard"

STAGES = ("immunize", "registry", "finetune", "eval", "serve")
"""The stage packages: each does one step of the flow; what two of them share lives at the package's root
(images, measures, transforms, ...) or in ``models``. ``cli`` and ``demo`` sit on top and use them all."""

ALLOWED_STAGE_EDGES = {
    ("immunize", "registry"),  # the runner records what it wrote
    ("finetune", "registry"),  # planting reads a snapshot and records the new model
    ("eval", "registry"),  # the eval reads snapshots and models
    ("serve", "immunize"),  # the API runs the attacks
    ("serve", "registry"),  # ... records them, looks images up, checks keys
}
"""Which stage may import which: the flow's own arrows, never a detour for shared code."""

HEAVY = ("torch", "torchvision", "piq", "diffusers")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The project modules that ``path`` imports when it runs: at the top and inside functions, but not
    under ``if TYPE_CHECKING``. ``from package import submodule`` counts as importing the submodule."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parent, *([child.module] if child.module else [])])
                for alias in child.names:
                    submodule = f"{base}.{alias.name}"
                    found.add(submodule if submodule in modules else base)
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return {module for module in found if module in modules and module != name}


@functools.cache
def _graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in SOURCE.rglob("*.py")}
    return {name: _imports(path, name, set(paths)) for name, path in paths.items()}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan), or of one that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                circles.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return circles


def test_the_graph_reads_every_module() -> None:
    graph = _graph()
    assert {"forwardguard.images", "forwardguard.measures", "forwardguard.models.padding"} <= set(graph)
    assert "forwardguard.registry" in graph["forwardguard.eval.run"]  # function-level imports count


def test_no_import_circles() -> None:
    assert _circles(_graph()) == []


def test_stages_import_each_other_only_along_the_flow() -> None:
    detours = sorted(
        (module, target)
        for module, targets in _graph().items()
        for target in targets
        if _stage(module)
        and _stage(target)
        and _stage(module) != _stage(target)
        and (_stage(module), _stage(target)) not in ALLOWED_STAGE_EDGES
    )
    assert detours == []


def test_shared_layers_import_no_stage() -> None:
    """The root modules and ``models`` are below the stages: they import none of them."""
    upward = sorted(
        (module, target)
        for module, targets in _graph().items()
        if _stage(module) is None and module.split(".")[1:2] not in (["cli"], ["demo"])
        for target in targets
        if _stage(target)
    )
    assert upward == []


def test_image_and_measure_helpers_come_from_the_root() -> None:
    """Nothing imports images, padding or the measures from a stage package any more."""
    graph = _graph()
    for module in ("forwardguard.immunize.images", "forwardguard.finetune.losses", "forwardguard.immunize.buckets"):
        assert module not in graph
    importers_of_immunize = {
        module
        for module, targets in graph.items()
        for target in targets
        if _stage(target) == "immunize" and _stage(module) not in ("immunize", None)
    }
    assert importers_of_immunize <= {module for module in graph if module.startswith("forwardguard.serve.")}


@pytest.mark.parametrize("module", ["forwardguard.eval.gate", "forwardguard.finetune.config", "forwardguard.images"])
def test_light_modules_import_no_torch(module: str) -> None:
    """A JSON policy check and a YAML config load no deep-learning library (a fresh interpreter)."""
    code = f"import sys, {module}; print(','.join(n for n in {HEAVY!r} if n in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"import {module} loads {result.stdout.strip()}"
