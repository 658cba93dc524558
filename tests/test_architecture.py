"""The package's shape, read from its source: imports form no cycle (function-level imports
included), each model family's library is imported by its adapter alone, nothing outside an
adapter reaches into a backbone's model, and no code dispatches on hyper-parameter classes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import groupcoop

PACKAGE = Path(groupcoop.__file__).parent
ADAPTERS = {"groupcoop.backbone_openclip": "open_clip", "groupcoop.backbone_transformers": "transformers"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from . import x` imports the module x
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in MODULES else target, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    return {name: {target for target, _ in _imports(name, path) if target in MODULES and target != name}
            for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_sees_function_level_and_relative_imports():
    graph = _graph()
    assert "groupcoop.train" in graph["groupcoop.methods.coop"]  # imported inside its trainer
    assert "groupcoop.backbone_openclip" in graph["groupcoop.backbone"]  # `from . import backbone_openclip`
    assert "groupcoop.data.base" in graph["groupcoop.data.registry"]


def test_no_import_cycle_among_the_package_modules():
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("leaf", ["groupcoop.errors", "groupcoop.schema", "groupcoop.choices", "groupcoop.templates"])
def test_leaf_modules_import_nothing_of_the_package_but_errors(leaf):
    assert _graph()[leaf] <= {"groupcoop.errors"}


def test_each_model_library_is_imported_by_its_adapter_alone():
    for name, path in MODULES.items():
        for target, line in _imports(name, path):
            library = target.split(".")[0]
            if library in ADAPTERS.values():
                assert ADAPTERS.get(name) == library, f"{path.name}:{line} imports {library}"


def test_nothing_outside_an_adapter_reaches_into_a_backbones_model():
    internals = {"model", "text", "visual", "tokenizer"}
    for name, path in MODULES.items():
        if name in ADAPTERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in internals:
                owner = node.value
                owner_name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
                assert owner_name not in ("backbone", "bb"), f"{path.name}:{node.lineno} reads {owner_name}.{node.attr}"


def test_no_dispatch_on_hyper_parameter_classes():
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance" and len(node.args) == 2:
                kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                named = [getattr(k, "id", getattr(k, "attr", "")) for k in kinds]
                assert not any(n.endswith("Params") for n in named), f"{path.name}:{node.lineno} isinstance on {named}"
