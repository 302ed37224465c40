"""The int16x8-friendly LayerNorm rewrite: same function as Keras', ops LiteRT can run in int16."""

import numpy as np
import pytest
import tf_keras as keras

from tfreparam import export
from tfreparam.export.int16_layer_norm import MultiplyVarianceLayerNorm, with_int16_layer_norm
from tfreparam.export.flatbuffer import float_ops, op_names


def _numpy_layer_norm(x, gamma, beta, epsilon):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + epsilon) * gamma + beta


@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False)])
def test_matches_numpy(center, scale):
    rng = np.random.default_rng(0)
    # Outlier columns like MiniLM's residual stream: the variance is dominated by two dimensions.
    x = rng.normal(size=(4, 7, 24)).astype("float32")
    x[..., [3, 17]] *= 150.0
    layer = MultiplyVarianceLayerNorm(center=center, scale=scale, epsilon=1e-12)
    layer.build(x.shape)
    gamma = rng.uniform(0.3, 1.5, 24) if scale else np.ones(24)
    beta = rng.normal(size=24) if center else np.zeros(24)
    layer.set_weights([w for w, used in ((gamma, scale), (beta, center)) if used])
    np.testing.assert_allclose(layer(x).numpy(), _numpy_layer_norm(x, gamma, beta, 1e-12), atol=2e-5)


def _model_with_layer_norms():
    inputs = keras.Input((6, 16), name="x")
    h = keras.layers.LayerNormalization(name="ln_a")(keras.layers.Dense(16, name="dense")(inputs))
    outputs = keras.layers.LayerNormalization(axis=-1, epsilon=1e-5, name="ln_b")(h + inputs)
    return keras.Model(inputs, outputs)


def test_rewrite_keeps_the_function_and_leaves_the_model_alone():
    model = _model_with_layer_norms()
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([np.random.default_rng(1).normal(size=w.shape) for w in layer.get_weights()])
    copy = with_int16_layer_norm(model)
    assert [type(copy.get_layer(n)) for n in ("ln_a", "ln_b")] == [MultiplyVarianceLayerNorm] * 2
    assert type(model.get_layer("ln_a")) is keras.layers.LayerNormalization
    assert copy.get_layer("ln_b").epsilon == 1e-5
    x = np.random.default_rng(2).normal(size=(3, 6, 16)).astype("float32")
    np.testing.assert_allclose(copy(x).numpy(), model(x).numpy(), atol=1e-5)


def test_model_without_layer_norm_is_returned_as_is():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    assert with_int16_layer_norm(model) is model


def test_int16x8_export_runs_layer_norm_in_int16(tmp_path):
    model = _model_with_layer_norms()
    rng = np.random.default_rng(3)
    data = [{"x": rng.normal(size=(8, 6, 16)).astype("float32")} for _ in range(4)]
    path = tmp_path / "m.tflite"
    report = export.tflite(model, str(path), mode="int16x8", representative_data=data, seq_length=None,
                           sample_inputs=data[0])
    assert report.passed, report
    assert report.outputs[next(iter(report.outputs))].cosine_min >= 0.999
    ops = set(op_names(path.read_bytes()))
    assert "SQUARED_DIFFERENCE" not in ops and {"RSQRT", "MEAN"} <= ops
    assert float_ops(path.read_bytes()) == {}
