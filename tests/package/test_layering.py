"""Package structure: no import cycle between mlip modules and no import from a higher layer.

Layers, lowest first: the base modules (errors, targets, io, device, outputs) → data, model (which
do not import each other) → training, calculators → cli. Every ``import`` counts, including those
inside functions, since a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mlip"
LAYERS = {"base": 0, "data": 1, "model": 1, "training": 2, "calculators": 2, "cli": 3}
FACADES = {"mlip", "mlip.__main__"}  # the package's lazy public API and `python -m mlip`


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The mlip modules that ``name`` imports (resolved to the longest known module name)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("mlip"):
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) - {"mlip"} for name, path in modules.items()}


def _layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 and parts[1] in LAYERS else LAYERS["base"]


def test_import_graph_is_found():
    graph = _graph()
    assert "mlip.training.trainer" in graph and "mlip.model.potential" in graph["mlip.training.trainer"]
    assert len(graph) > 30


def test_no_upward_or_sideways_import():
    bad = []
    for name, deps in _graph().items():
        if name in FACADES:
            continue
        own = name.split(".")[1] if name.count(".") else ""
        for dep in deps:
            other = dep.split(".")[1] if dep.count(".") else ""
            if other == own and own in LAYERS:
                continue  # inside one subpackage
            if _layer(dep) == _layer(name) == LAYERS["base"]:
                continue  # base modules may use each other (the cycle test still applies)
            if _layer(dep) >= _layer(name):
                bad.append(f"{name} -> {dep}")
    assert not bad, "imports against the layering: " + ", ".join(sorted(bad))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep in FACADES:
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state and module not in FACADES:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(cycles)


@pytest.mark.parametrize("module", ["mlip.data.store", "mlip.model.potential"])
def test_known_former_offenders_stay_fixed(module):
    deps = {d for name, ds in _graph().items() if name == module or name.startswith(module + ".") for d in ds}
    assert not {d for d in deps if d.startswith(("mlip.training", "mlip.cli"))}, deps


def test_license_file_matches_the_declared_licence():
    declared = (ROOT / "pyproject.toml").read_text()
    assert 'license = { text = "MIT" }' in declared
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
