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


# -- sequential (error-correcting) whitening ----------------------------------------


def _chain(seed=0):
    """Three stacked linear projections (activations as separate layers, so layer outputs are pre-activation)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,))
    h = keras.layers.Dense(24, name="p0")(inputs)
    h = keras.layers.Activation("tanh")(h)
    h = keras.layers.Dense(16, name="p1")(h)
    h = keras.layers.Activation("tanh")(h)
    return keras.Model(inputs, keras.layers.Dense(8, name="p2")(h))


def _correlated(n, seed):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(12, 12)) * np.logspace(0, -1.5, 12)[:, None]
    return (rng.normal(size=(n, 12)) @ mixing).astype("float32")


def test_paired_grams_match_numpy():
    from tfreparam import surgery
    import tfreparam as tr

    model = _chain()
    x = _correlated(40, 1)
    compressed = tr.reparameterize(model, tr.LowRank(rank=3))
    stats = calibration.paired_grams(model, compressed, ["p1"], tf.data.Dataset.from_tensor_slices(x).batch(16))
    probe = lambda m: keras.Model(m.inputs, m.get_layer("p1").input)(x).numpy().astype(np.float64)  # noqa: E731
    original, current = probe(model), probe(compressed)
    np.testing.assert_allclose(stats["p1"].gram, current.T @ current / 40, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["p1"].cross, current.T @ original / 40, rtol=1e-5, atol=1e-7)
    assert stats["p1"].rows == 40
    del surgery


def test_sequential_whitening_error_per_layer_is_at_most_one_shot():
    import tfreparam as tr

    model = _chain()
    x = _correlated(600, 2)
    data = tf.data.Dataset.from_tensor_slices(x).batch(100)
    policy = tr.LowRank(rank=4, method="whitened")
    one_shot = tr.reparameterize(model, policy, calibration_data=data)
    sequential = tr.reparameterize(model, policy, calibration_data=data, sequential=True)

    def outputs(m):
        return keras.Model(m.inputs, [m.get_layer(n).output for n in ("p0", "p1", "p2")])(x)

    reference = outputs(model)
    errors = {}
    for label, m in (("one_shot", one_shot), ("sequential", sequential)):
        errors[label] = [float(np.linalg.norm(a.numpy() - r.numpy()) / np.linalg.norm(r.numpy()))
                         for a, r in zip(outputs(m), reference)]
    # Layer 0 sees identical inputs in both (only the small ridge differs); later layers correct the drift.
    assert errors["sequential"][0] == pytest.approx(errors["one_shot"][0], rel=1e-3)
    for seq, shot in zip(errors["sequential"], errors["one_shot"]):
        assert seq <= shot * (1 + 1e-3)
    assert errors["sequential"][2] < 0.95 * errors["one_shot"][2]
    assert [l.rank for l in sequential.layers if hasattr(l, "rank")] == [4, 4, 4]


def test_corrected_kernel_is_the_least_squares_solution():
    from tfreparam.decompose import corrected_kernel

    rng = np.random.default_rng(3)
    x_orig = rng.normal(size=(200, 6))
    x_comp = x_orig + 0.1 * rng.normal(size=(200, 6))
    w = rng.normal(size=(6, 4))
    expected = np.linalg.lstsq(x_comp, x_orig @ w, rcond=None)[0]
    got = corrected_kernel(w, x_comp.T @ x_comp / 200, x_comp.T @ x_orig / 200, ridge=0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)


def test_sequential_needs_calibration_data():
    import tfreparam as tr

    with pytest.raises(ValueError, match="sequential=True refits layers"):
        tr.reparameterize(_chain(), tr.LowRank(rank=2), sequential=True)
