"""Config, .keras, .h5 weights and SavedModel round trips for every layer."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.layers.registry import MATRIX_IN, layer_params, randomize_lora


def _model(layer):
    inputs = keras.Input((5, MATRIX_IN))
    return keras.Model(inputs, layer(inputs))


def _inputs():
    return np.random.default_rng(3).normal(size=(2, 5, MATRIX_IN)).astype("float32")


@pytest.fixture(params=layer_params())
def built_model(request):
    case = request.param
    layer = case.make(activation="relu")
    model = _model(layer)
    randomize_lora(layer)
    return case, layer, model


def test_config_round_trip(built_model):
    _, layer, _ = built_model
    config = layer.get_config()
    clone = type(layer).from_config(config)
    clone.build((None, MATRIX_IN))
    assert clone.get_config() == config
    clone.set_weights(layer.get_weights())
    x = _inputs()
    np.testing.assert_allclose(clone(x).numpy(), layer(x).numpy(), atol=1e-6)


def test_keras_format_round_trip(built_model, tmp_path):
    _, layer, model = built_model
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.layers[-1]) is type(layer)
    x = _inputs()
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)


def test_h5_weights_round_trip(built_model, tmp_path):
    case, layer, model = built_model
    path = str(tmp_path / "weights.h5")
    model.save_weights(path)
    fresh = _model(case.make(activation="relu"))
    fresh.load_weights(path)
    x = _inputs()
    np.testing.assert_allclose(fresh(x).numpy(), model(x).numpy(), atol=1e-6)


def test_saved_model_round_trip(built_model, tmp_path):
    _, layer, model = built_model
    path = str(tmp_path / "saved_model")
    model.save(path, save_format="tf")
    x = _inputs()
    loaded = keras.models.load_model(path)
    assert type(loaded.layers[-1]) is type(layer)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
    # The bare SavedModel serves without the Python classes.
    serving = tf.saved_model.load(path).signatures["serving_default"]
    (output,) = serving(tf.constant(x)).values()
    np.testing.assert_allclose(output.numpy(), model(x).numpy(), atol=1e-6)
