"""`ParityReport` arithmetic against hand-computed numbers, and a parity check that must fail."""

import math

import numpy as np
import pytest
import tf_keras as keras

from tfreparam import export
from tfreparam.export import parity


def test_compare_matches_closed_forms():
    reference = {"y": np.array([[3.0, 4.0], [1.0, 0.0]])}
    actual = {"y": np.array([[3.0, 4.5], [0.0, 1.0]])}
    result = parity.compare(reference, actual)["y"]
    assert result.max_abs == pytest.approx(1.0)
    assert result.mean_abs == pytest.approx((0 + 0.5 + 1 + 1) / 4)
    assert result.reference_max_abs == pytest.approx(4.0)
    # Row 0: (9 + 18) / (5 * sqrt(9 + 20.25)); row 1: orthogonal.
    row0 = 27.0 / (5.0 * math.sqrt(29.25))
    assert result.cosine_min == pytest.approx(0.0)
    assert result.cosine_mean == pytest.approx(row0 / 2)


def test_zero_rows_compare_as_equal_only_when_both_are_zero():
    result = parity.compare({"y": np.zeros((2, 3))}, {"y": np.array([[0.0, 0, 0], [1, 0, 0]])})["y"]
    assert result.cosine_mean == pytest.approx(0.5)


def test_tolerance_decides_pass_and_fail():
    outputs = parity.compare({"a": np.ones((1, 4))}, {"a": np.ones((1, 4)) + 2e-4})
    loose = parity.ParityReport("x.onnx", "onnx", parity.Tolerance(max_abs=1e-3), outputs)
    strict = parity.ParityReport("x.onnx", "onnx", parity.Tolerance(max_abs=1e-4), outputs)
    assert loose.passed and loose.raise_if_failed() is loose
    assert strict.failures == ["a: max-abs 0.0002 > 0.0001"]
    with pytest.raises(export.ParityError, match=r"onnx artifact x.onnx does not match .*max-abs 0.0002 > 0.0001"):
        strict.raise_if_failed()


def test_default_tolerances_are_the_issue_numbers():
    assert export.default_tolerance("fp32") == parity.Tolerance(max_abs=1e-4)
    assert export.default_tolerance("fp16") == parity.Tolerance(max_abs=1e-2)
    assert export.default_tolerance("int8").min_cosine == 0.99
    with pytest.raises(ValueError, match="Unknown mode 'int3'"):
        export.default_tolerance("int3")


def test_a_changed_model_fails_its_parity_check(tmp_path):
    """Export, then shift the bias by 0.01: check_parity must see exactly that difference."""
    inputs = keras.Input((5,), name="x")
    dense = keras.layers.Dense(3, name="out")
    model = keras.Model(inputs, dense(inputs))
    path = str(tmp_path / "m.onnx")
    export.onnx(model, path)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, bias + np.array([0.0, 0.01, 0.0], "float32")])
    x = {"x": np.random.default_rng(0).normal(size=(4, 5)).astype("float32")}
    report = export.check_parity(model, path, x)
    assert report.outputs["output_0"].max_abs == pytest.approx(0.01, abs=1e-6)
    assert not report.passed
    with pytest.raises(export.ParityError):
        report.raise_if_failed()
