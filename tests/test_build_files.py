"""The Bazel BUILD files cover the tree: evaluated as Starlark with stub rules.

Bazel cannot fetch its rules offline here, so this test plays Bazel's loading
phase: it executes every BUILD file with stand-ins for `load`, `py_library`,
`py_test`, ... and checks that every module and test file belongs to a target,
every listed source exists, and every in-repo dependency names a real target.
In-repo macro files (`load("//:defs.bzl", ...)`) are executed too, with the
same stand-ins underneath, so the targets a macro defines are the ones checked.
"""

import pathlib
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ["tfreparam", "bert", "recipes", "tools", "bench", "tests"]
SKIP_DIRS = {".venv", ".venvs", ".git", "__pycache__", "reports", ".pytest_cache", ".hypothesis"}


def _walk(root, pattern):
    return sorted(p for p in root.rglob(pattern) if not SKIP_DIRS.intersection(p.relative_to(root).parts))


def _evaluate(root, build_file):
    """Runs one BUILD file; returns {target label: attributes}."""
    package = build_file.parent.relative_to(root).as_posix()
    package = "" if package == "." else package
    targets = {}

    def rule(kind):
        def define(name, **attrs):
            label = f"//{package}:{name}"
            if label in targets:
                raise AssertionError(f"{build_file}: target {name!r} defined twice")
            targets[label] = dict(attrs, kind=kind, package=package)

        return define

    def no_glob(*args, **kwargs):
        raise AssertionError(f"{build_file}: list sources explicitly, not with glob()")

    rules = {kind: rule(kind) for kind in ("py_library", "py_test", "py_binary", "filegroup")}
    rules["requirement"] = lambda name: f"@pypi//{name.replace('-', '_')}"
    namespace = {
        "package": lambda **kwargs: None,
        "exports_files": lambda *args, **kwargs: None,
        "glob": no_glob,
        "filegroup": rules["filegroup"],
    }

    def loader(into):
        def load(bzl, *symbols, **aliases):
            names = dict({symbol: symbol for symbol in symbols}, **aliases)
            if bzl.startswith("@"):  # rules_python, pip: the stand-ins
                source = rules
            else:
                source = _macros(root, bzl, package, loader, no_glob)
            for alias, symbol in names.items():
                if symbol not in source:
                    raise AssertionError(f"{build_file}: {bzl} has no symbol {symbol!r}")
                into[alias] = source[symbol]

        return load

    namespace["load"] = loader(namespace)
    exec(compile(build_file.read_text(), str(build_file), "exec"), namespace)
    return targets


def _macros(root, bzl, package, loader, no_glob):
    """Executes an in-repo .bzl file ("//pkg:file.bzl") for a BUILD file in `package`; returns its globals."""
    if not bzl.startswith("//") or ":" not in bzl:
        raise AssertionError(f"unexpected load label {bzl!r}")
    bzl_package, name = bzl[2:].split(":", 1)
    path = root / bzl_package / name
    if not path.is_file():
        raise AssertionError(f"load({bzl!r}): no file {path}")
    namespace = {"native": types.SimpleNamespace(package_name=lambda: package, glob=no_glob), "glob": no_glob}
    namespace["load"] = loader(namespace)
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace


def load_targets(root):
    targets = {}
    for build_file in _walk(root, "BUILD"):
        targets.update(_evaluate(root, build_file))
    return targets


def _sources(targets, kinds=None):
    paths = set()
    for attrs in targets.values():
        if kinds is None or attrs["kind"] in kinds:
            paths.update((pathlib.PurePosixPath(attrs["package"]) / src).as_posix() for src in attrs.get("srcs", []))
    return paths


def missing_sources(root, targets):
    return sorted(path for path in _sources(targets) if not (root / path).is_file())


def uncovered_modules(root, targets):
    covered = _sources(targets)
    modules = [
        path.relative_to(root).as_posix()
        for package in PACKAGES if (root / package).is_dir()
        for path in _walk(root / package, "*.py")
    ]
    return [module for module in modules if module not in covered]


def files_without_py_test(root, targets):
    tests = _sources(targets, kinds={"py_test"})
    files = [p.relative_to(root).as_posix() for p in _walk(root / "tests", "test_*.py")] if (root / "tests").is_dir() else []
    return [path for path in files if path not in tests]


def dangling_deps(targets):
    def resolve(label, package):
        if label.startswith(":"):
            return f"//{package}{label}"
        if label.startswith("//") and ":" not in label:
            return f"{label}:{label.rsplit('/', 1)[-1]}"
        return label

    return [
        f"{label} -> {dep}"
        for label, attrs in targets.items()
        for dep in attrs.get("deps", [])
        if not dep.startswith("@") and resolve(dep, attrs["package"]) not in targets
    ]


@pytest.fixture(scope="module")
def targets():
    assert (ROOT / "BUILD").is_file(), "the repository root needs a BUILD file"
    return load_targets(ROOT)


def test_every_listed_source_exists(targets):
    assert not missing_sources(ROOT, targets), "BUILD targets name files that do not exist"


def test_every_module_belongs_to_a_target(targets):
    assert not uncovered_modules(ROOT, targets), "modules missing from every BUILD target"


def test_every_test_file_is_a_py_test(targets):
    assert not files_without_py_test(ROOT, targets), "test files without a py_test target"


def test_in_repo_deps_resolve(targets):
    assert not dangling_deps(targets), "deps that name no target"


def test_checker_reports_each_kind_of_gap(tmp_path):
    (tmp_path / "tfreparam").mkdir()
    (tmp_path / "tests").mkdir()
    for path in ["tfreparam/__init__.py", "tfreparam/orphan.py", "tests/test_a.py", "tests/test_b.py"]:
        (tmp_path / path).write_text("")
    (tmp_path / "BUILD").write_text("")
    (tmp_path / "tfreparam" / "BUILD").write_text(
        'load("@rules_python//python:defs.bzl", "py_library")\n'
        'py_library(name = "tfreparam", srcs = ["__init__.py", "gone.py"], deps = ["//nowhere"])\n'
    )
    (tmp_path / "tests" / "BUILD").write_text(
        'load("@rules_python//python:defs.bzl", "py_test")\n'
        'py_test(name = "test_a", srcs = ["test_a.py"], deps = ["//tfreparam"])\n'
    )
    found = load_targets(tmp_path)
    assert missing_sources(tmp_path, found) == ["tfreparam/gone.py"]
    assert uncovered_modules(tmp_path, found) == ["tfreparam/orphan.py", "tests/test_b.py"]
    assert files_without_py_test(tmp_path, found) == ["tests/test_b.py"]
    assert dangling_deps(found) == ["//tfreparam:tfreparam -> //nowhere"]
    (tmp_path / "tests" / "BUILD").write_text('srcs = glob(["*.py"])\n')
    with pytest.raises(AssertionError, match="not with glob"):
        load_targets(tmp_path)


def test_checker_sees_the_targets_the_macros_define(tmp_path):
    """The real //:defs.bzl, in a small tree: its targets are checked like hand-written ones."""
    (tmp_path / "defs.bzl").write_text((ROOT / "defs.bzl").read_text())
    (tmp_path / "tfreparam").mkdir()
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    for path in ["tfreparam/__init__.py", "tfreparam/orphan.py", "tests/__init__.py", "tests/conftest.py",
                 "tests/unit/__init__.py", "tests/unit/test_a.py", "tests/unit/test_b.py"]:
        (tmp_path / path).write_text("")
    (tmp_path / "BUILD").write_text("")
    (tmp_path / "tfreparam" / "BUILD").write_text(
        'load("//:defs.bzl", "tfreparam_py_library")\n'
        'tfreparam_py_library(name = "tfreparam", srcs = ["__init__.py"])\n'
    )
    (tmp_path / "tests" / "BUILD").write_text(
        'load("@rules_python//python:defs.bzl", "py_library")\n'
        'py_library(name = "test_support", testonly = True, srcs = ["__init__.py", "conftest.py"])\n'
    )
    (tmp_path / "tests" / "unit" / "BUILD").write_text(
        'load("//:defs.bzl", "tfreparam_py_test", lib = "tfreparam_test_library")\n'
        'lib(name = "unit_tests")\n'
        'tfreparam_py_test(name = "test_a", deps = [":unit_tests", "//tfreparam", "//missing"])\n'
    )
    found = load_targets(tmp_path)
    test_a = found["//tests/unit:test_a"]
    assert (test_a["kind"], test_a["srcs"], test_a["main"]) == ("py_test", ["test_a.py"], "test_a.py")
    assert test_a["deps"] == [":unit_tests", "//tfreparam", "//missing", "//tests:test_support"]
    assert found["//tests/unit:unit_tests"]["testonly"] and found["//tfreparam:tfreparam"]["kind"] == "py_library"
    assert uncovered_modules(tmp_path, found) == ["tfreparam/orphan.py", "tests/unit/test_b.py"]
    assert files_without_py_test(tmp_path, found) == ["tests/unit/test_b.py"]
    assert dangling_deps(found) == ["//tests/unit:test_a -> //missing"]
    (tmp_path / "tests" / "unit" / "BUILD").write_text('load("//:defs.bzl", "no_such_macro")\n')
    with pytest.raises(AssertionError, match="has no symbol 'no_such_macro'"):
        load_targets(tmp_path)
