"""Macros for tfreparam's BUILD files: each fills in what every target of its kind repeated.

    load("//:defs.bzl", "tfreparam_py_library", "tfreparam_py_test")

tfreparam_py_library:  a public py_library.
tfreparam_py_binary:   a script; srcs default to [name + ".py"].
tfreparam_test_library: test helpers (a test package's __init__.py, shared fixtures): testonly, on
                       //tests:test_support (the root conftest), visible to //tests/... only.
tfreparam_py_test:     one pytest file; srcs default to [name + ".py"], main to srcs[0], and deps
                       gain //tests:test_support.

tests/test_build_files.py evaluates this file with the BUILD files, so the
coverage checks there see the targets these macros define.
"""

load("@rules_python//python:defs.bzl", "py_binary", "py_library", "py_test")

TEST_SUPPORT = "//tests:test_support"

def _with_test_support(deps):
    local = ":test_support" if native.package_name() == "tests" else None
    if TEST_SUPPORT in deps or (local != None and local in deps):
        return deps
    return deps + [TEST_SUPPORT]

def tfreparam_py_library(name, srcs, deps = [], visibility = ["//visibility:public"], **kwargs):
    py_library(name = name, srcs = srcs, deps = deps, visibility = visibility, **kwargs)

def tfreparam_py_binary(name, srcs = None, deps = [], **kwargs):
    py_binary(name = name, srcs = srcs or [name + ".py"], deps = deps, **kwargs)

def tfreparam_test_library(name, srcs = ["__init__.py"], deps = [], visibility = ["//tests:__subpackages__"], **kwargs):
    py_library(
        name = name,
        testonly = True,
        srcs = srcs,
        deps = _with_test_support(deps),
        visibility = visibility,
        **kwargs
    )

def tfreparam_py_test(name, srcs = None, deps = [], **kwargs):
    srcs = srcs or [name + ".py"]
    py_test(name = name, srcs = srcs, main = srcs[0], deps = _with_test_support(deps), **kwargs)
