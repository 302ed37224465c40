"""The Factorization record: derived numbers, float32 factors, and a TF-free subpackage."""

import ast
import dataclasses
import pathlib

import numpy as np
import pytest

import tfreparam.decompose as decompose
from tfreparam.decompose import Factorization, param_count

W = np.random.default_rng(0).standard_normal((24, 20))

ALL_METHODS = {
    "svd": lambda: decompose.svd(W, rank=3),
    "whitened_svd": lambda: decompose.whitened_svd(W, np.diag(np.arange(1.0, 25.0)), rank=3),
    "fisher_svd": lambda: decompose.fisher_svd(W, np.arange(1.0, 25.0), rank=3),
    "nearest_kronecker": lambda: decompose.nearest_kronecker(W, (4, 6), (4, 5), num_terms=2),
    "tt_svd": lambda: decompose.tt_svd(W, (4, 6), (4, 5), ranks=3),
    "tucker": lambda: decompose.tucker(W, (4, 6), (4, 5), ranks=2),
    "cp_als": lambda: decompose.cp_als(W, (4, 6), (4, 5), rank=3, n_iter=20),
    "block_term": lambda: decompose.block_term(W, (4, 6), (4, 5), ranks=2, num_blocks=2, n_iter=2),
    "lora": lambda: decompose.lora(W, rank=3),
}


@pytest.mark.parametrize("method", sorted(ALL_METHODS))
def test_derived_numbers_are_consistent(method):
    f = ALL_METHODS[method]()

    assert f.method == method
    assert f.shape == (24, 20)
    assert f.num_params == sum(a.size for a in f.factors.values())
    assert f.num_params == param_count(f.form.name, f.shape, **f.layer_config)
    assert f.compression_ratio == pytest.approx(24 * 20 / f.num_params)
    assert all(a.dtype == np.float32 for a in f.factors.values())
    approx = f.reconstruct()
    assert approx.dtype == np.float64 and approx.shape == (24, 20)
    # The reported error is that of the stored float32 factors.
    assert f.relative_error == pytest.approx(np.linalg.norm(W - approx) / np.linalg.norm(W), rel=1e-9)
    assert (f.output_error is None) == (method != "whitened_svd")


def test_output_error_uses_the_gram_matrix():
    G = np.diag(np.arange(1.0, 25.0))
    f = ALL_METHODS["whitened_svd"]()
    X = np.sqrt(G)  # XᵀX = G
    expected = np.linalg.norm(X @ (W - f.reconstruct())) / np.linalg.norm(X @ W)
    assert f.output_error == pytest.approx(expected, rel=1e-9)


def test_factorization_is_frozen_and_checks_its_form():
    f = decompose.svd(W, rank=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.relative_error = 0.0
    with pytest.raises(ValueError, match=r"Unknown factorization family 'dense'"):
        Factorization("svd", "dense", {}, {}, (1, 1), 0.0)
    # A registered name resolves to its form, which rebuilds the kernel.
    g = Factorization("svd", "low_rank", f.factors, f.layer_config, f.shape, f.relative_error)
    assert g.form is decompose.get_form("low_rank") and g.form.name == "low_rank"
    np.testing.assert_array_equal(g.reconstruct(), f.factors["u"].astype(np.float64) @ f.factors["v"])


def test_float64_input_still_gives_float32_factors():
    f = decompose.svd(W.astype(np.float32), rank=2)
    assert f.factors["u"].dtype == np.float32


def test_importing_the_subpackage_leaves_tensorflow_out():
    # Issue 16.17: `import tfreparam.decompose` used to import TensorFlow (2.9 s) through tfreparam/__init__.
    import subprocess
    import sys

    probe = "import sys, tfreparam.decompose; print(sorted(m for m in ('tensorflow', 'tf_keras', 'keras') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_subpackage_never_imports_tensorflow_or_keras():
    package = pathlib.Path(decompose.__file__).parent
    banned = {"tensorflow", "tf_keras", "keras"}
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"
                assert not name.startswith("tfreparam.layers"), f"{path.name} imports {name}"


def test_public_api_is_exported():
    expected = {
        "Factorization", "Form", "get_form", "block_term", "lora", "corrected_kernel", "svd", "whitened_svd", "fisher_svd", "nearest_kronecker", "tt_svd", "tucker",
        "cp_als", "balanced_factors", "param_count", "low_rank_rank_for_budget",
        "kronecker_terms_for_budget", "tt_rank_for_budget", "tucker_rank_for_budget", "cp_rank_for_budget",
    }
    assert expected <= set(decompose.__all__)
    assert all(callable(getattr(decompose, name)) for name in expected)


def test_output_error_from_gram_equals_error_on_the_data():
    import numpy as np

    from tfreparam.decompose import output_error

    rng = np.random.default_rng(7)
    x, kernel = rng.normal(size=(50, 6)), rng.normal(size=(6, 4))
    approx = kernel + 0.1 * rng.normal(size=kernel.shape)
    direct = np.linalg.norm(x @ (kernel - approx)) / np.linalg.norm(x @ kernel)
    assert abs(output_error(kernel, approx, x.T @ x) - direct) < 1e-12
