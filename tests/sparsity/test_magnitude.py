"""TFMOT magnitude pruning on every registered layer type, 2:4 sparsity, strip, save/load."""

import numpy as np
import pytest
import tf_keras as keras

import tfreparam as tr
from tests.layers.registry import _DEFAULTS, LAYER_CASES, MATRIX_IN, MATRIX_UNITS, layer_params, randomize_lora
from tfreparam import sparsity
from tfreparam.sparsity import tfmot

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, MATRIX_IN)).astype("float32")
Y = RNG.normal(size=(64, MATRIX_UNITS)).astype("float32")


def _model(layer):
    inputs = keras.Input((MATRIX_IN,))
    model = keras.Model(inputs, layer(inputs))
    randomize_lora(layer)
    return model


# Configs for the transposed shape (in 12 = 3·2·2 -> units 24 = 2·3·4), to chain layers.
_SWAPPED_DEFAULTS = {
    "low_rank": {"rank": 4},
    "kronecker": {"input_factors": (3, 4), "output_factors": (4, 6), "num_terms": 2},
    "tensor_train": {"input_factors": (3, 2, 2), "output_factors": (2, 3, 4), "ranks": 3},
    "tucker": {"input_factors": (3, 4), "output_factors": (4, 6), "ranks": (3, 4, 2, 3)},
    "cp": {"input_factors": (3, 4), "output_factors": (4, 6), "rank": 5},
    "block_term": {"input_factors": (3, 4), "output_factors": (4, 6), "ranks": 2, "num_blocks": 3},
    "lora_dense": {"rank": 3, "alpha": 6.0, "base": "dense"},
    "lora_low_rank": {"rank": 3, "alpha": 6.0, "base": "low_rank"},
}


def _defaults(case):
    return dict(_DEFAULTS[case.name])


def _expected_zeros(size, sparsity_):
    # TFMOT keeps max(round(size * (1 - s)), 1) entries (round half to even).
    return size - max(int(np.round(size * (1 - sparsity_))), 1)


def _fit(model, epochs, callback, compile=True):
    if compile:  # a second fit without compiling reuses the traced train step
        model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(X, Y, epochs=epochs, batch_size=16, verbose=0, callbacks=[callback])


@pytest.mark.parametrize("case", layer_params())
def test_prune_reaches_target_keeps_zeros_and_strips(case):
    layer = case.make()
    model = _model(layer)
    # The layer is a TFMOT PrunableLayer whose prunable weights are its factors only.
    names = sorted(w.name.split("/")[-1] for w in layer.get_prunable_weights())
    assert names == sorted(f"{n}:0" for n in layer.factor_names)
    assert isinstance(layer, tfmot.sparsity.keras.PrunableLayer)

    pruned = sparsity.prune(model, 0.5, "polynomial", begin_step=0, end_step=4, frequency=2)
    _fit(pruned, 1, sparsity.UpdatePruningStep())  # 4 steps: the target is reached at step 4
    report = sparsity.sparsity_report(pruned)
    assert len(report.rows) == len(layer.factor_names)
    for row in report.rows:
        assert row.zeros == _expected_zeros(row.size, 0.5), row
        assert abs(row.sparsity - 0.5) <= max(0.01, 1.0 / row.size)
    # The input model is untouched.
    assert all(np.count_nonzero(w.numpy()) == w.numpy().size for w in layer.get_prunable_weights())

    wrapper = pruned.layers[1]
    zero_sets = [w.numpy() == 0 for w in wrapper.layer.get_prunable_weights()]
    _fit(pruned, 1, sparsity.UpdatePruningStep(), compile=False)  # past end_step: masks frozen
    for was_zero, weight in zip(zero_sets, wrapper.layer.get_prunable_weights()):
        np.testing.assert_array_equal(weight.numpy()[was_zero], 0.0)
        assert np.array_equal(weight.numpy() == 0, was_zero)

    stripped = sparsity.strip(pruned)
    assert not any(isinstance(l, keras.layers.Wrapper) for l in stripped.layers)
    assert type(stripped.layers[1]) is type(layer)
    np.testing.assert_array_equal(stripped(X).numpy(), pruned(X, training=False).numpy())


def test_tfmot_prune_low_magnitude_works_unchanged_on_all_layer_types():
    inputs = keras.Input((MATRIX_IN,))
    h, layers = inputs, []
    for case in LAYER_CASES:  # chain them: in -> units -> in -> ...
        n_in, units = (MATRIX_IN, MATRIX_UNITS) if len(layers) % 2 == 0 else (MATRIX_UNITS, MATRIX_IN)
        layer = case.build(n_in, units, dict(_SWAPPED_DEFAULTS.get(case.name, {})) if n_in == MATRIX_UNITS else
                           _defaults(case), dtype=None)
        h = layer(h)
        layers.append(layer)
    model = keras.Model(inputs, h)
    for layer in layers:
        randomize_lora(layer)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        model, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.75, 0, frequency=1)
    )
    # One mask update, eagerly (what UpdatePruningStep + a training step trigger).
    for wrapper in pruned.layers[1:]:
        wrapper.pruning_step.assign(1)
        wrapper.pruning_obj.conditional_mask_update()
        wrapper.pruning_obj.weight_mask_op()
    plain = tfmot.sparsity.keras.strip_pruning(pruned)
    for layer in plain.layers[1:]:
        for weight in layer.get_prunable_weights():
            assert np.sum(weight.numpy() == 0) == _expected_zeros(weight.numpy().size, 0.75), weight.name


def _assert_m_by_n(weight, m, n):
    """At least m zeros in every group of n consecutive entries along axis 0."""
    value = np.asarray(weight)
    groups = value.reshape(value.shape[0] // n, n, -1)
    zeros = np.sum(groups == 0, axis=1)
    assert np.all(zeros >= m), zeros
    # and exactly the (n - m) largest magnitudes survive in each group
    assert np.all(np.sum(groups != 0, axis=1) == n - m)


def test_two_four_on_dense_low_rank_and_lora():
    inputs = keras.Input((MATRIX_IN,))
    h = keras.layers.Dense(16, name="dense")(inputs)
    h = tr.LowRankDense(16, rank=4, name="low_rank")(h)
    h = tr.LoRADense(keras.layers.Dense(MATRIX_UNITS, name="base"), rank=4, name="lora")(h)
    model = keras.Model(inputs, h)
    randomize_lora(model.get_layer("lora"))
    before = {w.name: w.numpy() for w in model.weights}
    pruned = sparsity.prune(model, m_by_n=(2, 4))
    _fit(pruned, 1, sparsity.UpdatePruningStep())
    checked = []
    for layer in sparsity.strip(pruned).layers[1:]:
        for name in sparsity.m_by_n_weights(layer):
            _assert_m_by_n(getattr(layer, name).numpy(), 2, 4)
            checked.append(f"{layer.name}/{name}")
    assert checked == ["dense/kernel", "low_rank/u", "low_rank/v", "lora/lora_a", "lora/lora_b"]
    # The first mask is set from the initial weights: the kept entries of the
    # first group of the Dense kernel are its two largest magnitudes then.
    kernel0 = before["dense/kernel:0"][:4, 0]
    mask0 = pruned.get_layer("prune_low_magnitude_dense").pruning_vars[0][1].numpy()[:4, 0]
    np.testing.assert_array_equal(np.sort(np.argsort(-np.abs(kernel0))[:2]), np.flatnonzero(mask0))


def test_two_four_refuses_or_skips_other_factorizations():
    inputs = keras.Input((MATRIX_IN,))
    h = keras.layers.Dense(MATRIX_IN, name="dense")(inputs)
    h = tr.KroneckerDense(MATRIX_UNITS, (4, 6), (3, 4), name="kron")(h)
    model = keras.Model(inputs, h)
    with pytest.raises(ValueError, match=r"'kron' \(KroneckerDense\).*skip_unsupported=True"):
        sparsity.prune(model, m_by_n=(2, 4))
    with pytest.raises(ValueError, match="m/n = 0.5"):
        sparsity.prune(model, 0.7, m_by_n=(2, 4))
    with pytest.warns(UserWarning, match="left unpruned"):
        pruned = sparsity.prune(model, m_by_n=(2, 4), skip_unsupported=True)
    assert [type(l).__name__ for l in pruned.layers[1:]] == ["PruneLowMagnitude", "KroneckerDense"]


def test_forgetting_the_callback_is_loud_and_bad_arguments_are_named():
    model = _model(tr.LowRankDense(MATRIX_UNITS, rank=4))
    pruned = sparsity.prune(model, 0.5, "constant")
    pruned.compile("adam", "mse")
    with pytest.raises(Exception, match="UpdatePruningStep"):
        pruned.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    with pytest.raises(ValueError, match="needs `end_step`"):
        sparsity.prune(model, 0.5, "polynomial")
    with pytest.raises(ValueError, match="target_sparsity"):
        sparsity.prune(model, 1.5, "constant")
    with pytest.raises(ValueError, match="matches no layer"):
        sparsity.prune(model, 0.5, "constant", policy="nothing.*")
    with pytest.raises(ValueError, match="already has pruning wrappers"):
        sparsity.prune(pruned, 0.5, "constant")
    embedding = keras.Sequential([keras.Input((3,)), keras.layers.Embedding(10, 4, name="emb")])
    with pytest.raises(ValueError, match="'emb' .*not a projection"):
        sparsity.prune(embedding, 0.5, "constant", policy="emb")


def test_keras_save_load_under_prune_scope(tmp_path):
    inputs = keras.Input((MATRIX_IN,))
    h = tr.LowRankDense(16, rank=4, name="low_rank")(inputs)
    h = tr.KroneckerDense(MATRIX_UNITS, (4, 4), (3, 4), num_terms=2, name="kron")(h)
    pruned = sparsity.prune(keras.Model(inputs, h), 0.5, "constant", frequency=1)
    _fit(pruned, 1, sparsity.UpdatePruningStep())
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    with tfmot.sparsity.keras.prune_scope():
        loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(X).numpy(), pruned(X, training=False).numpy(), atol=1e-6)
    assert sparsity.sparsity_report(loaded).as_dict() == sparsity.sparsity_report(pruned).as_dict()
    _fit(loaded, 1, sparsity.UpdatePruningStep())  # training continues after the reload
    assert sparsity.sparsity_report(loaded).overall == pytest.approx(0.5, abs=0.01)
