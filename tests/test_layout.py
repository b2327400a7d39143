"""The package's import structure: no import loops, and each folder imports only the folders below it.

Imports are read from the source with ``ast``, at module level and inside functions alike, so an import moved into
a function to dodge a loop still counts.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import qoqmed

PACKAGE_DIR = Path(qoqmed.__file__).parent

# What each part of the package may import from the rest of it (besides itself). The folders follow the pipeline;
# no import runs back up it.
ALLOWED: dict[str, set[str]] = {
    "modeling": set(),
    "rewards": set(),
    "algos": set(),
    "data": {"modeling", "rewards"},
    "eval": {"data", "modeling", "rewards"},
    "train": {"data", "modeling", "rewards", "algos", "eval"},
    "infer": {"data", "modeling", "rewards"},
    "serve": {"data", "infer"},
    "experiment": {"data", "modeling", "rewards", "algos", "eval", "train"},
    "cli": {"data", "modeling", "rewards", "algos", "eval", "train", "infer", "serve", "experiment"},
    "__init__": set(),
}


def _module_name(path: Path) -> str:
    parts = ["qoqmed", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(path: Path, module: str) -> list[str]:
    """Every module name an import statement of ``path`` refers to, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name` the module itself
            names += [f"{target}.{alias.name}" for alias in node.names] + [target]
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a name imported from a package counts as importing the package,
    unless the name is a submodule)."""
    paths = {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in paths.items():
        graph.setdefault(module, set())
        names = _imported_names(path, module)
        for name in names:
            if name not in paths or name == module:
                continue
            if any(other.startswith(name + ".") and other in paths for other in names if other != name):
                continue  # `from pkg import sub`: the edge goes to pkg.sub
            graph[module].add(name)
    return dict(graph)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
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


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_no_import_loops():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import loop: " + " -> ".join(cycle or [])


def test_find_cycle_sees_a_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_function_level_imports_count(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from .other import g\n    return g\n")
    assert "qoqmed.data.other" in _imported_names(source, "qoqmed.data.m")


def test_each_part_imports_only_the_parts_below_it():
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            src, dst = _part(module), _part(target)
            if src != dst and dst not in ALLOWED[src]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layering: " + ", ".join(sorted(wrong))


def test_only_train_imports_trl():
    users = sorted(
        _module_name(path) for path in PACKAGE_DIR.rglob("*.py")
        if any(name == "trl" or name.startswith("trl.") for name in _imported_names(path, _module_name(path)))
    )
    assert users and all(name.startswith("qoqmed.train.") for name in users), users


def test_schema_imports_no_file_reader():
    readers = {"qoqmed.data.readers", "qoqmed.data.dicom", "qoqmed.data.volumes", "qoqmed.data.ecg",
               "qoqmed.data.validate"}
    graph = import_graph()
    seen, todo = set(), ["qoqmed.data.schema"]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert not seen & readers, sorted(seen & readers)
