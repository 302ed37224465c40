"""No import cycles among the project's modules, function-level imports included.

Every module of tfreparam/, bert/, recipes/, tools/ and bench/ is parsed (ast,
nothing is imported) and every `import` statement in it, at any depth (module
level, inside functions, classes, `try` or `if` blocks), becomes an edge to the
project module it names:

- `import a.b.c` -> `a.b.c` (the longest dotted prefix that is a project module);
- `from a.b import name` -> `a.b.name` when that is a submodule, else `a.b`
  (the package `__init__`, which is what defines `name`); relative imports
  are resolved against the importing module first;
- imports of anything outside the project are ignored, and so are dynamic
  imports (`importlib.import_module(...)`, a lazy package `__getattr__`):
  they run on first use, not while the importer itself is being imported.

A strongly-connected component of more than one module is a cycle. A package
`__init__` importing its own submodules is an edge like any other and no cycle
by itself; a submodule that imports its own package (`from pkg import name`
where `name` is defined in `pkg/__init__.py`) closes one and is reported.
A function-level import that hides a cycle still counts: it only postpones
the cycle to the first call.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("tfreparam", "bert", "recipes", "tools", "bench")
SKIP_DIRS = {".venv", ".venvs", "__pycache__"}


# -- the checker -----------------------------------------------------------------------


def project_modules(root: pathlib.Path, packages) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py under the given top-level packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            if SKIP_DIRS.intersection(relative.parts):
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _longest_module(name: str, modules) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of `from <...> import` in `module`."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(module: str, path: pathlib.Path, modules) -> dict[str, int]:
    """{imported project module: first line number} for every import statement in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    edges: dict[str, int] = {}

    def add(target, line):
        if target and target != module:
            edges.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_longest_module(alias.name, modules), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(module, is_package, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if alias.name != "*" and submodule in modules:
                    add(submodule, node.lineno)
                else:
                    add(_longest_module(source, modules), node.lineno)
    return edges


def import_graph(root: pathlib.Path, packages=PACKAGES) -> tuple[dict, dict]:
    """(module -> {imported module: line}, module -> file) over the project."""
    modules = project_modules(root, packages)
    return {name: import_edges(name, path, modules) for name, path in modules.items()}, modules


def strongly_connected(graph) -> list[list[str]]:
    """Tarjan's algorithm, iterative; only the components of more than one module, sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in graph:
                    continue
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _one_cycle(graph, component) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first within the component)."""
    members, start = set(component), component[0]
    previous = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for succ in sorted(graph[node]):
            if succ == start:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return list(reversed(path)) + [start]
            if succ in members and succ not in previous:
                previous[succ] = node
                queue.append(succ)
    return component  # unreachable for a strongly-connected component


def describe_cycles(root: pathlib.Path, packages=PACKAGES) -> list[str]:
    """One line per cycle: its modules and one closed path with the importing file:line of each edge."""
    graph, modules = import_graph(root, packages)
    lines = []
    for component in strongly_connected(graph):
        path = _one_cycle(graph, component)
        steps = [
            f"{a} -> {b} ({modules[a].relative_to(root)}:{graph[a][b]})" for a, b in zip(path, path[1:])
        ]
        lines.append(f"{len(component)} modules {component}: " + "; ".join(steps))
    return lines


# -- the project has none ------------------------------------------------------------


def test_project_has_no_import_cycles():
    cycles = describe_cycles(ROOT)
    assert not cycles, "Import cycles (function-level imports included):\n" + "\n".join(cycles)


def test_graph_covers_every_package():
    graph, modules = import_graph(ROOT)
    for package in PACKAGES:
        assert package in modules, f"{package}/__init__.py not found"
    # Sanity: the checker sees real edges, function-level ones included.
    assert graph["tfreparam.surgery"], "tfreparam/surgery.py should import project modules"


# -- the checker on synthetic packages ------------------------------------------------


def _write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    root = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from pkg import b\n    return b\n",
        "pkg/b.py": "from pkg.a import f\n",
        "pkg/c.py": "import pkg.a\n",
    })
    graph, _ = import_graph(root, ["pkg"])
    assert graph["pkg.a"] == {"pkg.b": 2}  # `from pkg import b`: b is a submodule, not the __init__
    assert strongly_connected(graph) == [["pkg.a", "pkg.b"]]
    (line,) = describe_cycles(root, ["pkg"])
    assert "pkg.a -> pkg.b (pkg/a.py:2)" in line and "pkg.b -> pkg.a (pkg/b.py:1)" in line


def test_checker_passes_an_acyclic_package_whose_init_imports_its_submodules(tmp_path):
    root = _write(tmp_path, {
        "pkg/__init__.py": "from pkg.a import f\nfrom . import b\nfrom .sub import g\n",
        "pkg/a.py": "import os\nfrom pkg.b import x\n",
        "pkg/b.py": "x = 1\n",
        "pkg/sub/__init__.py": "from .inner import g\n",
        "pkg/sub/inner.py": "from ..b import x\ndef g():\n    import pkg.a\n",
    })
    graph, _ = import_graph(root, ["pkg"])
    assert set(graph["pkg"]) == {"pkg.a", "pkg.b", "pkg.sub"}
    assert set(graph["pkg.sub.inner"]) == {"pkg.b", "pkg.a"}
    assert strongly_connected(graph) == []
    assert describe_cycles(root, ["pkg"]) == []


def test_checker_counts_a_submodule_importing_its_own_package(tmp_path):
    root = _write(tmp_path, {
        "pkg/__init__.py": "from pkg.a import f\nVALUE = 1\n",
        "pkg/a.py": "def f():\n    from pkg import VALUE\n    return VALUE\n",
        "other/__init__.py": "",
        "other/user.py": "from pkg import VALUE\n",  # importing another package's __init__ is fine
    })
    graph, _ = import_graph(root, ["pkg", "other"])
    assert graph["pkg.a"] == {"pkg": 2}
    assert strongly_connected(graph) == [["pkg", "pkg.a"]]


def test_checker_resolves_relative_imports_and_longer_cycles(tmp_path):
    root = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/x.py": "from .y import a\n",
        "pkg/y.py": "from . import z\n",
        "pkg/z.py": "class C:\n    def m(self):\n        from .x import b\n",
    })
    graph, _ = import_graph(root, ["pkg"])
    assert strongly_connected(graph) == [["pkg.x", "pkg.y", "pkg.z"]]
    (line,) = describe_cycles(root, ["pkg"])
    assert line.startswith("3 modules")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
