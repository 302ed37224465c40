"""LoRADense as a wrapper: PEFT / Keras 3 semantics of the update, merge and unmerge, config round trip."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tfreparam as tr

X = np.random.default_rng(0).normal(size=(5, 12)).astype("float32")


def _lora(alpha=6.0, rank=3, base=None, **kwargs):
    base = base or keras.layers.Dense(8, activation="relu", name="base")
    layer = tr.LoRADense(base, rank=rank, alpha=alpha, **kwargs)
    layer.build((None, 12))
    rng = np.random.default_rng(1)
    layer.set_factors({"lora_a": rng.normal(size=(12, rank)), "lora_b": rng.normal(size=(rank, 8))})
    return layer


def test_update_is_alpha_over_rank_times_a_b():
    # PEFT: delta_W = B_peft @ A_peft * (lora_alpha / r) in (out, in) layout; here kernels are (in, out).
    layer = _lora(alpha=6.0, rank=3)
    a, b = layer.get_factors()["lora_a"].astype(np.float64), layer.get_factors()["lora_b"].astype(np.float64)
    np.testing.assert_allclose(layer.delta_kernel().numpy(), 2.0 * a @ b, rtol=1e-5)
    kernel, bias = (w.astype(np.float64) for w in layer.base_layer.get_weights())
    expected = np.maximum(X @ (kernel + 2.0 * a @ b) + bias, 0.0)
    np.testing.assert_allclose(layer(X).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_merge_and_unmerge_in_place():
    layer = _lora()
    before = layer.base_layer.kernel.numpy().copy()
    unmerged = layer(X).numpy()
    layer.merge()
    assert layer.merged
    np.testing.assert_allclose(layer.base_layer.kernel.numpy(), before + layer.delta_kernel().numpy(), rtol=1e-6)
    np.testing.assert_allclose(layer(X).numpy(), unmerged, rtol=1e-5, atol=1e-5)  # merged output == unmerged
    np.testing.assert_allclose(layer.dense_kernel().numpy(), before + layer.delta_kernel().numpy(), rtol=1e-6)
    layer.unmerge()
    assert not layer.merged
    np.testing.assert_array_equal(layer.base_layer.kernel.numpy(), before)  # bit for bit
    np.testing.assert_array_equal(layer(X).numpy(), unmerged)
    with pytest.raises(ValueError, match="is not merged"):
        layer.unmerge()


def test_merge_refuses_twice_and_a_factored_base():
    layer = _lora()
    layer.merge()
    with pytest.raises(ValueError, match="already merged"):
        layer.merge()
    factored = _lora(base=tr.LowRankDense(8, rank=4))
    with pytest.raises(ValueError, match=r"wraps a LowRankDense.*use to_dense\(\) or tfreparam.fold"):
        factored.merge()


def test_the_callers_base_layer_is_not_modified():
    base = keras.layers.Dense(8, name="base")
    layer = tr.LoRADense(base, rank=2)
    layer.build((None, 12))
    assert base.trainable  # PEFT and Keras 3 freeze by reporting, not by flipping the caller's flag
    assert [w.name for w in layer.trainable_weights] == [w.name for w in (layer.lora_a, layer.lora_b)]
    assert {id(w) for w in base.weights} <= {id(w) for w in layer.non_trainable_weights}


def test_config_keeps_regularizers_and_constraints_and_rebuilds_the_base():
    layer = _lora(factor_regularizer=keras.regularizers.L2(0.1), factor_constraint=keras.constraints.MaxNorm(2.0),
                  dropout=0.25)
    config = layer.get_config()
    assert config["factor_regularizer"]["class_name"] == "L2"
    assert config["factor_constraint"]["class_name"] == "MaxNorm"
    assert not {"units", "activation", "use_bias"} & set(config)  # those are the base's
    clone = tr.LoRADense.from_config(config)
    assert isinstance(clone.base_layer, keras.layers.Dense) and clone.base_layer.activation is keras.activations.relu
    again = clone.get_config()
    assert again["base_layer"]["config"] == config["base_layer"]["config"]
    assert {k: v for k, v in again.items() if k != "base_layer"} == {k: v for k, v in config.items() if k != "base_layer"}
    clone.build((None, 12))
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(X).numpy(), layer(X).numpy())
    # The regularizer reaches only the adapter factors: 0.1 * (|A|^2 + |B|^2).
    factors = layer.get_factors()
    expected = 0.1 * sum(np.sum(f.astype(np.float64) ** 2) for f in factors.values())
    assert float(tf.add_n(layer.losses)) == pytest.approx(expected, rel=1e-5)


def test_merged_state_survives_a_model_round_trip(tmp_path):
    inputs = keras.Input((12,))
    layer = tr.LoRADense(keras.layers.Dense(8, name="base"), rank=2, name="lora")
    model = keras.Model(inputs, layer(inputs))
    layer.set_factors({"lora_a": np.ones((12, 2)), "lora_b": np.full((2, 8), 0.5)})
    expected = model(X).numpy()
    layer.merge()
    path = str(tmp_path / "merged.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("lora").merged
    np.testing.assert_allclose(loaded(X).numpy(), expected, rtol=1e-5, atol=1e-5)
    loaded.get_layer("lora").unmerge()  # no pre-merge kernel after loading: subtracts the update
    np.testing.assert_allclose(loaded.get_layer("lora").base_layer.kernel.numpy(),
                               layer.base_layer.kernel.numpy() - layer.delta_kernel().numpy(), atol=1e-6)
