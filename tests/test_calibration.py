"""Streaming calibration statistics equal their one-shot numpy definitions."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfreparam import calibration


def _model():
    inputs = keras.Input((7, 10))
    h = keras.layers.Dense(6, activation="tanh", name="a")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="b")(h))


def test_input_grams_stream_over_batches():
    model = _model()
    x = np.random.default_rng(0).normal(size=(50, 7, 10)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(8)  # uneven last batch
    stats = calibration.input_grams(model, [model.get_layer("a"), model.get_layer("b")], dataset)
    flat_a = x.reshape(-1, 10).astype(np.float64)
    np.testing.assert_allclose(stats["a"].gram, flat_a.T @ flat_a / flat_a.shape[0], rtol=1e-5)
    hidden = np.tanh(x @ model.get_layer("a").kernel.numpy() + model.get_layer("a").bias.numpy())
    flat_b = hidden.reshape(-1, 6).astype(np.float64)
    np.testing.assert_allclose(stats["b"].gram, flat_b.T @ flat_b / flat_b.shape[0], rtol=1e-4, atol=1e-6)
    assert stats["a"].rows == 50 * 7


def test_fisher_importance_is_summed_squared_gradients():
    model = _model()
    x = np.random.default_rng(1).normal(size=(16, 7, 10)).astype("float32")
    y = np.random.default_rng(2).normal(size=(16, 7, 3)).astype("float32")
    layer = model.get_layer("a")
    stats = calibration.fisher_row_importance(
        model, [layer], {"a": layer.kernel}, tf.data.Dataset.from_tensor_slices((x, y)).batch(8), "mse"
    )
    expected = 0
    for start in (0, 8):
        with tf.GradientTape() as tape:
            loss = keras.losses.get("mse")(y[start:start + 8], model(x[start:start + 8]))
        expected = expected + tf.reduce_sum(tape.gradient(loss, layer.kernel) ** 2, axis=1).numpy()
    np.testing.assert_allclose(stats["a"].row_importance, expected, rtol=1e-5)


def test_empty_and_bad_data():
    model = _model()
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 7, 10), "float32")).batch(4)
    with pytest.raises(ValueError, match="calibration_data is empty"):
        calibration.input_grams(model, [model.get_layer("a")], empty)
    with pytest.raises(ValueError, match="calibration_data must be a batched tf.data.Dataset or arrays"):
        calibration.as_dataset(object())
    with pytest.raises(ValueError, match="needs a loss"):
        calibration.fisher_row_importance(model, [model.get_layer("a")], {}, empty)


def test_padding_positions_are_left_out_of_grams():
    ids = keras.Input((None,), dtype="int32", name="input_word_ids")
    mask = keras.Input((None,), dtype="int32", name="input_mask")
    hidden = keras.layers.Embedding(20, 4, name="embed")(ids)
    model = keras.Model({"input_word_ids": ids, "input_mask": mask}, keras.layers.Dense(3, name="proj")(hidden))
    x = {"input_word_ids": np.array([[1, 2, 0, 0], [3, 4, 5, 0]], "int32"),
         "input_mask": np.array([[1, 1, 0, 0], [1, 1, 1, 0]], "int32")}
    stats = calibration.input_grams(model, [model.get_layer("proj")], tf.data.Dataset.from_tensors(x))
    table = model.get_layer("embed").embeddings.numpy().astype(np.float64)
    real = table[[1, 2, 3, 4, 5]]
    np.testing.assert_allclose(stats["proj"].gram, real.T @ real / 5, rtol=1e-5)
    assert stats["proj"].rows == 5
