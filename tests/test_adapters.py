"""LoRA adapters saved on their own and loaded onto a fresh copy of the base model."""

import numpy as np
import pytest
import tf_keras as keras

import tfreparam as tr

X = np.random.default_rng(0).normal(size=(16, 12)).astype("float32")
POLICY = {r"(q|v)": tr.LoRA(rank=2, alpha=4)}


def _base():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((12,))
    q = keras.layers.Dense(12, name="q")(inputs)
    v = keras.layers.Dense(12, name="v")(q)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(v))


def test_adapters_round_trip_onto_a_fresh_base(tmp_path):
    base = _base()
    tuned = tr.reparameterize(base, POLICY)
    tuned.get_layer("head").trainable = False  # train the adapters only, as PEFT does
    tuned.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    tuned.fit(X, np.ones((16, 3), "float32"), epochs=3, verbose=0)
    assert not np.allclose(tuned(X).numpy(), base(X).numpy())  # the adapters learned something
    path = tr.save_adapters(tuned, tmp_path / "adapters")
    with np.load(path) as stored:
        # Only the adapters: 2 layers x (A, B, alpha), none of the base weights.
        assert sorted(stored.files) == ["q/alpha", "q/lora_a", "q/lora_b", "v/alpha", "v/lora_a", "v/lora_b"]
        assert stored["q/lora_a"].shape == (12, 2) and float(stored["v/alpha"]) == 4.0

    fresh = tr.reparameterize(_base(), POLICY)  # same base weights, new (zero-B) adapters
    np.testing.assert_array_equal(fresh(X).numpy(), base(X).numpy())
    tr.load_adapters(fresh, path)
    np.testing.assert_allclose(fresh(X).numpy(), tuned(X).numpy(), rtol=1e-6, atol=1e-6)


def test_mismatched_adapters_are_refused_before_anything_is_loaded(tmp_path):
    path = tr.save_adapters(tr.reparameterize(_base(), POLICY), tmp_path / "adapters.npz")
    other_rank = tr.reparameterize(_base(), {r"(q|v)": tr.LoRA(rank=3, alpha=4)})
    before = other_rank.get_weights()
    with pytest.raises(ValueError, match=r"Saved lora_a of layer 'q' has shape \(12, 2\), the layer's has \(12, 3\)"):
        tr.load_adapters(other_rank, path)
    for a, b in zip(before, other_rank.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"trained with alpha=4.0"):
        tr.load_adapters(tr.reparameterize(_base(), {r"(q|v)": tr.LoRA(rank=2, alpha=8)}), path)
    with pytest.raises(ValueError, match=r"layers without saved adapters \['head'\]"):
        tr.load_adapters(tr.reparameterize(_base(), tr.LoRA(rank=2, alpha=4)), path)
    with pytest.raises(ValueError, match=r"has no LoRADense layers"):
        tr.save_adapters(_base(), tmp_path / "none")
