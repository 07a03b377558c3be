"""The package's shape: layers that import one way only, no import cycles, no classes inside functions.

Every import counts, also those inside functions (an import deferred into a function still ties two
modules together). The layers, lowest first, are drawn in the README ("How it is built").
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tfodtrain"

# Lowest first; a module imports modules of its own layer or below. A name ending in "." covers a package.
LAYERS = [
    ["tfodtrain", "tfodtrain.exit_codes", "tfodtrain.units", "tfodtrain.paths", "tfodtrain.console"],
    ["tfodtrain.rundir", "tfodtrain.checkpoint_files", "tfodtrain.preemption"],
    ["tfodtrain.memory.", "tfodtrain.data.", "tfodtrain.dtypes", "tfodtrain.distribute"],
    ["tfodtrain.config_checks"],
    ["tfodtrain.experiment"],
    ["tfodtrain.checkpointing"],
    ["tfodtrain.preflight."],
    ["tfodtrain.callbacks.", "tfodtrain.testing"],
    ["tfodtrain.train", "tfodtrain.evaluate", "tfodtrain.export", "tfodtrain.benchmarking",
     "tfodtrain.bench_model_garden"],
    ["tfodtrain.supervise", "tfodtrain.report.", "tfodtrain.watch", "tfodtrain.entry", "tfodtrain.__main__"],
]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the tfodtrain modules it imports, anywhere in its code."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names)
        graph[name] = {r for t in targets if t.split(".")[0] == "tfodtrain" and (r := resolve(t)) and r != name}
    return graph


def layer_of(module: str) -> int:
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            if module == entry or (entry.endswith(".") and (module + ".").startswith(entry)):
                return index
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it where it belongs")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_counting_imports_inside_functions():
    assert cycles(import_graph()) == []


def test_every_import_goes_to_the_same_layer_or_below():
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in sorted(import_graph().items()) for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert upward == []


def test_no_classes_defined_inside_functions():
    nested = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                nested += [f"{name}.{node.name}: class {c.name}" for c in ast.walk(node) if isinstance(c, ast.ClassDef)]
    assert nested == []


def test_mib_is_defined_once():
    defining = set()
    for name, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(getattr(t, "id", None) == "MIB" for t in targets):
                defining.add(name)
    assert defining == {"tfodtrain.units"}  # every other module imports it from there
