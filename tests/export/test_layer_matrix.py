"""Every registered layer type × every export format and mode, with parity asserted.

One small model holds one branch per layer case (input (seq, 24) -> case ->
12), so each format converts once (module-scoped fixtures) and every
(case, format) pair still gets its own test on its own output. The fp32
formats are also checked against the numpy kernel rebuilt from each layer's
factors (`registry.reference_kernel`), independently of `check_parity`.
"""

import numpy as np
import pytest
import tf_keras as keras

from tests.layers.registry import LAYER_CASES, MATRIX_IN, layer_params, randomize_lora
from tfreparam import export
from tfreparam.export import model_io
from tfreparam.export.flatbuffer import op_names

SEQ = 4
FORMATS = ["saved_model", "onnx", "tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "tflite-int16x8"]


@pytest.fixture(scope="module")
def matrix_model():
    inputs = keras.Input((None, MATRIX_IN), name="features")
    layers = {case.name: case.make(name=case.name) for case in LAYER_CASES}
    model = keras.Model(inputs, {name: layer(inputs) for name, layer in layers.items()})
    for i, layer in enumerate(layers.values()):
        randomize_lora(layer, seed=i)
    return model


@pytest.fixture(scope="module")
def features():
    return {"features": np.random.default_rng(1).normal(size=(3, SEQ, MATRIX_IN)).astype("float32")}


@pytest.fixture(scope="module")
def exported(matrix_model, features, tmp_path_factory):
    """Lazily exports the matrix model once per format: name -> (artifact path, ParityReport)."""
    root = tmp_path_factory.mktemp("matrix")
    representative = [{"features": np.random.default_rng(s).normal(size=(16, SEQ, MATRIX_IN)).astype("float32")}
                      for s in range(2)]
    cache = {}

    def get(fmt):
        if fmt not in cache:
            if fmt == "saved_model":
                path = str(root / "saved_model")
                report = export.saved_model(matrix_model, path, sample_inputs=features)
            elif fmt == "onnx":
                path = str(root / "model.onnx")
                report = export.onnx(matrix_model, path, sample_inputs=features)
            else:
                mode = fmt.split("-")[1]
                path = str(root / f"model_{mode}.tflite")
                report = export.tflite(matrix_model, path, mode=mode, seq_length=SEQ, sample_inputs=features,
                                       representative_data=representative)
            cache[fmt] = (path, report)
        return cache[fmt]

    return get


def _numpy_reference(layer, x):
    case = next(c for c in LAYER_CASES if c.name == layer.name)
    y = x.astype(np.float64) @ case.reference_kernel(layer)
    bias = getattr(layer, "bias", None)
    if bias is None and hasattr(layer, "base_layer"):
        bias = layer.base_layer.bias
    return y + (bias.numpy() if bias is not None else 0.0)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", layer_params())
def test_layer_exports_with_parity(case, fmt, exported, matrix_model, features):
    path, report = exported(fmt)
    result = report.outputs[case.name]
    mode = fmt.split("-")[1] if fmt.startswith("tflite") else "fp32"
    tolerance = export.default_tolerance(mode)
    if tolerance.max_abs is not None:
        assert result.max_abs <= tolerance.max_abs, result
    if tolerance.min_cosine is not None:
        assert result.cosine_min >= tolerance.min_cosine, result
    if mode == "fp32":
        # Independent of check_parity: the artifact against numpy on the layer's factors.
        actual = export.run_artifact(path, features)[case.name]
        expected = _numpy_reference(matrix_model.get_layer(case.name), features["features"])
        np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_dynamic_axes_in_saved_model_and_onnx(exported, matrix_model):
    """Token-id style exports take any batch and sequence length."""
    x = {"features": np.random.default_rng(2).normal(size=(5, 7, MATRIX_IN)).astype("float32")}
    expected = model_io.run_keras(matrix_model, x)
    for fmt in ("saved_model", "onnx"):
        actual = export.run_artifact(exported(fmt)[0], x)
        for name in expected:
            np.testing.assert_allclose(actual[name], expected[name], atol=1e-4, err_msg=f"{fmt}/{name}")


def test_tflite_fixes_the_sequence_length_and_says_so(exported):
    x = {"features": np.zeros((2, SEQ + 1, MATRIX_IN), "float32")}
    with pytest.raises(ValueError, match=r"features.*shape \(2, 5, 24\).*seq_length"):
        export.run_artifact(exported("tflite-fp32")[0], x)


def test_builtin_ops_only_in_every_tflite_mode(exported):
    for fmt in FORMATS[2:]:
        with open(exported(fmt)[0], "rb") as f:
            ops = op_names(f.read())
        assert not [op for op in ops if op.startswith(("Flex", "CUSTOM"))], (fmt, ops)
        assert "FULLY_CONNECTED" in ops or "BATCH_MATMUL" in ops, (fmt, ops)
