"""The Bazel BUILD files cover the tree: evaluated as Starlark with stub rules.

Bazel cannot fetch its rules offline here, so this test plays Bazel's loading
phase: it executes every BUILD file with stand-ins for `load`, `py_library`,
`py_test`, ... and checks that every module and test file belongs to a target,
every listed source exists, and every in-repo dependency names a real target.
"""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ["tfreparam", "bert", "recipes", "tools", "bench", "tests"]
SKIP_DIRS = {".venv", ".git", "__pycache__", "reports", ".pytest_cache", ".hypothesis"}


def _build_files():
    return sorted(
        path for path in ROOT.rglob("BUILD")
        if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts)
    )


def _evaluate(build_file):
    """Runs one BUILD file; returns {target label: attributes}."""
    package = build_file.parent.relative_to(ROOT).as_posix()
    package = "" if package == "." else package
    targets = {}

    def rule(kind):
        def define(name, **attrs):
            label = f"//{package}:{name}"
            if label in targets:
                raise AssertionError(f"{build_file}: target {name!r} defined twice")
            targets[label] = dict(attrs, kind=kind, package=package)

        return define

    def load(bzl, *symbols, **aliases):
        for symbol in symbols:
            namespace[symbol] = stubs.get(symbol, rule(symbol))
        for alias, symbol in aliases.items():
            namespace[alias] = stubs.get(symbol, rule(symbol))

    stubs = {
        "py_library": rule("py_library"),
        "py_test": rule("py_test"),
        "py_binary": rule("py_binary"),
        "filegroup": rule("filegroup"),
        "requirement": lambda name: f"@pypi//{name.replace('-', '_')}",
    }
    namespace = {
        "load": load,
        "package": lambda **kwargs: None,
        "exports_files": lambda *args, **kwargs: None,
        "glob": lambda *args, **kwargs: pytest.fail(f"{build_file}: list sources explicitly, not with glob()"),
    }
    namespace.update({k: v for k, v in stubs.items() if k == "filegroup"})
    exec(compile(build_file.read_text(), str(build_file), "exec"), namespace)
    return targets


@pytest.fixture(scope="module")
def targets():
    files = _build_files()
    assert (ROOT / "BUILD") in files, "the repository root needs a BUILD file"
    result = {}
    for build_file in files:
        result.update(_evaluate(build_file))
    return result


def _sources(targets, kinds=None):
    paths = {}
    for label, attrs in targets.items():
        if kinds and attrs["kind"] not in kinds:
            continue
        for src in attrs.get("srcs", []):
            path = (pathlib.PurePosixPath(attrs["package"]) / src).as_posix()
            paths.setdefault(path, []).append(label)
    return paths


def test_every_listed_source_exists(targets):
    missing = sorted(path for path in _sources(targets) if not (ROOT / path).is_file())
    assert not missing, f"BUILD targets name files that do not exist: {missing}"


def test_every_module_belongs_to_a_target(targets):
    covered = _sources(targets)
    modules = sorted(
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts)
    )
    uncovered = [module for module in modules if module not in covered]
    assert not uncovered, f"modules missing from every BUILD target: {uncovered}"


def test_every_test_file_is_a_py_test(targets):
    tests = _sources(targets, kinds={"py_test"})
    test_files = sorted(
        path.relative_to(ROOT).as_posix() for path in (ROOT / "tests").rglob("test_*.py")
    )
    missing = [path for path in test_files if path not in tests]
    assert not missing, f"test files without a py_test target: {missing}"


def test_in_repo_deps_resolve(targets):
    def resolve(label, package):
        if label.startswith(":"):
            return f"//{package}{label}"
        if label.startswith("//") and ":" not in label:
            return f"{label}:{label.rsplit('/', 1)[-1]}"
        return label

    dangling = []
    for label, attrs in targets.items():
        for dep in attrs.get("deps", []):
            if dep.startswith("@"):
                continue  # external (pip) dependency
            if resolve(dep, attrs["package"]) not in targets:
                dangling.append(f"{label} -> {dep}")
    assert not dangling, f"deps that name no target: {dangling}"
