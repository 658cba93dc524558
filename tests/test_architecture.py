"""The package's shape, read from its source: folders by responsibility whose imports only run down
the data's way through the house (function-level imports included) and form no cycle; no module over
500 lines and no function over 80; each model family's library imported by its adapter alone; nothing
outside an adapter reaching into a backbone's model; no dispatch on hyper-parameter classes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import groupcoop

PACKAGE = Path(groupcoop.__file__).parent
ADAPTERS = {"groupcoop.backbones.open_clip": "open_clip", "groupcoop.backbones.transformers": "transformers"}


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
    assert "groupcoop.methods.loop" in graph["groupcoop.methods.coop"]  # imported inside its trainer
    assert "groupcoop.backbones.names" in graph["groupcoop.backbones.families"]  # `from .names import ...`
    assert "groupcoop.data.base" in graph["groupcoop.data.registry"]


# The rooms in the order data flows through them (docs/design.md): a module imports only from its own
# room or an earlier one. Leaves are the package's small shared modules; `top` only wires rooms together.
ROOMS = ("leaves", "io", "data", "backbones", "features", "grouping", "methods", "reports", "runs", "sweeps",
         "presets", "top")
LEAVES = {"groupcoop", "groupcoop.errors", "groupcoop.schema", "groupcoop.choices", "groupcoop.templates",
          "groupcoop.metrics", "groupcoop.limits"}
TOP = {"groupcoop.api", "groupcoop.__main__"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 80


def room(module: str) -> str:
    """The room a module lives in: its folder under the package, `leaves` or `top` for the root's."""
    if module in LEAVES:
        return "leaves"
    if module in TOP:
        return "top"
    folder = module.split(".")[1]
    return "top" if folder == "cli" else folder


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import of a module from a later room."""
    return [f"{a} ({room(a)}) -> {b} ({room(b)})" for a, targets in sorted(graph.items()) for b in sorted(targets)
            if ROOMS.index(room(b)) > ROOMS.index(room(a))]


def test_the_layer_check_finds_an_import_back_up():
    assert upward_imports({"groupcoop.data.base": {"groupcoop.runs.folder"}}) == [
        "groupcoop.data.base (data) -> groupcoop.runs.folder (runs)"]
    assert upward_imports({"groupcoop.runs.folder": {"groupcoop.data.base", "groupcoop.errors"}}) == []


def test_every_module_lives_in_a_room():
    assert {room(name) for name in MODULES} <= set(ROOMS)


def test_no_import_runs_back_up_the_rooms():
    assert upward_imports(_graph()) == []


def test_no_module_or_function_is_too_long():
    long = []
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "split along a seam: " + "; ".join(long)


def test_no_adapter_imports_the_families_table():
    """families.py imports its adapters by name on first use (`_adapter`), an edge the graph does not
    see; an adapter importing the table back would be a hidden cycle (wrappers get their inner
    backbone handed in instead)."""
    graph = _graph()
    for name in MODULES:
        if name.startswith("groupcoop.backbones.") and name != "groupcoop.backbones.families":
            assert "groupcoop.backbones.families" not in graph[name], name


def test_no_import_cycle_among_the_package_modules():
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("leaf", sorted(LEAVES))
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
