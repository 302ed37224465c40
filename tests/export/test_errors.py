"""Bad input and unsupported models fail with clear errors, not stack traces from deep inside TF."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfreparam import export
from tfreparam.export import UnsupportedOpsError


@keras.utils.register_keras_serializable(package="tfreparam_tests")
class StringLength(keras.layers.Layer):
    """Formats numbers as strings and measures them: tf.strings has no TFLite builtin."""

    def call(self, inputs):
        text = tf.strings.as_string(inputs, precision=3)
        return tf.cast(tf.strings.length(text), tf.float32)


@pytest.fixture(scope="module")
def dense_model():
    inputs = keras.Input((6,), name="x")
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(inputs))


def test_op_without_builtin_names_the_ops(tmp_path):
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2)(StringLength()(inputs)))
    with pytest.raises(UnsupportedOpsError, match=r"no TFLite builtin: .*tf\.AsString.*tf\.StringLength") as info:
        export.tflite(model, str(tmp_path / "m.tflite"))
    assert {"tf.AsString", "tf.StringLength"} <= set(info.value.ops)
    assert "SELECT_TF_OPS" in str(info.value)
    assert not (tmp_path / "m.tflite").exists()


def test_unknown_mode(dense_model, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown TFLite mode 'int4'.*'fp32'"):
        export.tflite(dense_model, str(tmp_path / "m.tflite"), mode="int4")


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_full_integer_needs_representative_data(dense_model, tmp_path, mode):
    with pytest.raises(ValueError, match=rf"mode='{mode}'.*needs representative_data"):
        export.tflite(dense_model, str(tmp_path / "m.tflite"), mode=mode)


def test_representative_data_must_be_named_batches(dense_model, tmp_path):
    with pytest.raises(ValueError, match="representative_data must be dicts of input name -> array"):
        export.tflite(dense_model, str(tmp_path / "m.tflite"), mode="int8", representative_data=[np.ones((2, 6))])


@pytest.mark.parametrize("fmt, name", [("tflite", "m.onnx"), ("onnx", "m.tflite")])
def test_wrong_suffix(dense_model, tmp_path, fmt, name):
    with pytest.raises(ValueError, match="path must end in"):
        getattr(export, fmt)(dense_model, str(tmp_path / name))


def test_strings_signature_needs_a_preprocessor(dense_model, tmp_path):
    with pytest.raises(ValueError, match=r"'strings' signature .* needs preprocessor="):
        export.saved_model(dense_model, str(tmp_path / "sm"), signatures=("token_ids", "strings"))


def test_unknown_signature(dense_model, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown signatures \['images'\]"):
        export.saved_model(dense_model, str(tmp_path / "sm"), signatures=("images",))


def test_parity_inputs_must_be_named(dense_model, tmp_path):
    path = str(tmp_path / "m.onnx")
    export.onnx(dense_model, path)
    with pytest.raises(TypeError, match=r"inputs must be a dict of input name -> array \(names \['x'\]\)"):
        export.check_parity(dense_model, path, np.ones((2, 6), "float32"))
    with pytest.raises(ValueError, match=r"lack \['x'\]"):
        export.check_parity(dense_model, path, {"y": np.ones((2, 6), "float32")})


def test_not_an_artifact(dense_model, tmp_path):
    x = {"x": np.ones((1, 6), "float32")}
    with pytest.raises(ValueError, match="No artifact at .*missing.onnx"):
        export.check_parity(dense_model, str(tmp_path / "missing.onnx"), x)
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="not an export artifact: expected a .tflite file"):
        export.check_parity(dense_model, str(tmp_path / "model.bin"), x)


def test_not_a_keras_model(tmp_path):
    with pytest.raises(TypeError, match="Expected a tf_keras Model; got Module"):
        export.onnx(tf.Module(), str(tmp_path / "m.onnx"))


def test_int16x8_refuses_ops_the_runtime_cannot_run(tmp_path):
    """SQUARED_DIFFERENCE has no int16 kernel in LiteRT: a clear error, not an abort.

    A last-axis LayerNorm is rewritten without it (tests/export/test_int16_layer_norm.py);
    one over another axis keeps Keras' lowering and must be refused.
    """
    inputs = keras.Input((5, 8), name="x")
    model = keras.Model(inputs, keras.layers.LayerNormalization(axis=1)(keras.layers.Dense(8)(inputs)))
    data = {"x": np.random.default_rng(0).normal(size=(8, 5, 8)).astype("float32")}
    with pytest.raises(ValueError, match=r"int16x8 quantized \['SQUARED_DIFFERENCE'\].*mode='dynamic'"):
        export.tflite(model, str(tmp_path / "m.tflite"), mode="int16x8", representative_data=data, seq_length=None)
