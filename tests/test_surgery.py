"""reparameterize / fold on small Functional and Sequential models."""

import numpy as np
import pytest
import tf_keras as keras

import tfreparam as tr

X = np.random.default_rng(0).normal(size=(64, 24)).astype("float32")


def _functional():
    inputs = keras.Input((24,))
    h = keras.layers.Dense(32, activation="relu", name="d1")(inputs)
    h = keras.layers.Dense(12, name="d2")(h)
    outputs = keras.layers.Dense(4, activation="softmax", name="head")(h)
    return keras.Model(inputs, outputs)


def _sequential():
    return keras.Sequential([
        keras.Input((24,)),
        keras.layers.Dense(32, activation="relu", name="d1"),
        keras.layers.Dense(12, name="d2"),
        keras.layers.Dense(4, activation="softmax", name="head"),
    ])


FULL_RANK_POLICIES = {
    "low_rank": {"d1": tr.LowRank(rank=24), "d2": tr.LowRank(rank=12), "head": tr.LowRank(rank=4)},
    "kronecker": {"d1": tr.Kronecker(num_terms=16), "d2": tr.Kronecker(num_terms=12)},
    "tensor_train": {"d.*": tr.TensorTrain(ranks=1000, num_cores=2)},
    "tucker": {"d.*": tr.Tucker(ranks=1000)},
    "energy": {"d.*": tr.LowRank(energy=1.0)},
    "block_term": {"d.*": tr.BlockTerm(ranks=1000, num_blocks=1)},
}


@pytest.mark.parametrize("build", [_functional, _sequential], ids=["functional", "sequential"])
@pytest.mark.parametrize("policy", FULL_RANK_POLICIES.values(), ids=FULL_RANK_POLICIES.keys())
def test_full_rank_reproduces_outputs(build, policy):
    model = build()
    new = tr.reparameterize(model, policy)
    assert any(isinstance(layer, tr.ReparameterizedDense) for layer in new.layers)
    np.testing.assert_allclose(new(X).numpy(), model(X).numpy(), atol=1e-4)
    # The original is untouched.
    assert all(type(layer) is not tr.LowRankDense for layer in model.layers)


def test_partial_policy_copies_other_layers_untouched():
    model = _functional()
    new = tr.reparameterize(model, {"d1": tr.LowRank(rank=4)})
    assert isinstance(new.get_layer("d1"), tr.LowRankDense)
    for name in ["d2", "head"]:
        assert type(new.get_layer(name)) is keras.layers.Dense
        for a, b in zip(new.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # The factors are the truncated SVD of the trained kernel (numpy reference).
    kernel = model.get_layer("d1").kernel.numpy().astype(np.float64)
    u, s, vt = np.linalg.svd(kernel)
    best = (u[:, :4] * s[:4]) @ vt[:4]
    np.testing.assert_allclose(new.get_layer("d1").dense_kernel().numpy(), best, atol=1e-5)
    np.testing.assert_array_equal(new.get_layer("d1").bias.numpy(), model.get_layer("d1").bias.numpy())


def test_keep_exempts_layers_and_first_pattern_wins():
    model = _functional()
    new = tr.reparameterize(model, {"head": tr.Keep(), ".*": tr.LowRank(rank=4)})
    assert type(new.get_layer("head")) is keras.layers.Dense
    assert isinstance(new.get_layer("d1"), tr.LowRankDense)


def test_callable_policy():
    model = _functional()
    new = tr.reparameterize(model, lambda layer: tr.LowRank(rank=2) if layer.units > 16 else None)
    assert [type(l).__name__ for l in new.layers[1:]] == ["LowRankDense", "Dense", "Dense"]


def test_einsum_dense_plain_projection():
    inputs = keras.Input((5, 24))
    h = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 16), bias_axes="d", name="proj")(inputs)
    model = keras.Model(inputs, h)
    new = tr.reparameterize(model, tr.LowRank(rank=16))
    assert isinstance(new.get_layer("proj"), tr.LowRankDense)
    x = np.random.default_rng(1).normal(size=(3, 5, 24)).astype("float32")
    np.testing.assert_allclose(new(x).numpy(), model(x).numpy(), atol=1e-4)


def test_fold_materialises_dense_layers_with_same_outputs():
    model = _functional()
    new = tr.reparameterize(model, {"d1": tr.Kronecker(num_terms=3), "d2": tr.TensorTrain(ranks=3, num_cores=2)})
    lora_inputs = keras.Input((24,))
    lora_model = keras.Model(lora_inputs, tr.LoRADense(keras.layers.Dense(8), rank=2, name="lora")(lora_inputs))
    for m in [new, lora_model]:
        folded = tr.fold(m)
        assert not any(isinstance(layer, tr.ReparameterizedDense) for layer in folded.layers)
        np.testing.assert_allclose(folded(X).numpy(), m(X).numpy(), atol=1e-5)


def test_whitened_beats_svd_on_correlated_inputs():
    # Inputs living near a low-dimensional subspace: whitening should exploit it.
    rng = np.random.default_rng(2)
    mixing = rng.normal(size=(24, 24)) * np.logspace(0, -3, 24)[:, None]
    x = (rng.normal(size=(512, 24)) @ mixing).astype("float32")
    inputs = keras.Input((24,))
    model = keras.Model(inputs, keras.layers.Dense(32, name="d")(inputs))
    errors = {}
    for method in ["svd", "whitened"]:
        new = tr.reparameterize(model, tr.LowRank(rank=4, method=method), calibration_data=x)
        delta = new(x).numpy() - model(x).numpy()
        errors[method] = np.linalg.norm(delta) / np.linalg.norm(model(x).numpy() - model.get_layer("d").bias.numpy())
    assert errors["whitened"] < 0.5 * errors["svd"], errors


def test_fisher_needs_labels_and_uses_them():
    model = _functional()
    model.compile(loss="sparse_categorical_crossentropy")
    y = np.random.default_rng(3).integers(0, 4, size=(64,))
    new = tr.reparameterize(model, {"d1": tr.LowRank(rank=6, method="fisher")}, calibration_data=(X, y))
    assert isinstance(new.get_layer("d1"), tr.LowRankDense)
    with pytest.raises(ValueError, match=r"needs labelled calibration data"):
        tr.reparameterize(model, {"d1": tr.LowRank(rank=6, method="fisher")}, calibration_data=X)


ERRORS = [
    ({"d1": "low_rank"}, "maps to 'low_rank', which is not a spec"),
    ({"dense_7": tr.LowRank(rank=2)}, r"policy: pattern 'dense_7' matches no layer .* The projection layers are: d1, d2, head\."),
    ({"d1": tr.LowRank(rank=40)}, r"Cannot reparameterize layer 'd1' .*rank=40 exceeds"),
    ({"d1": tr.Kronecker(input_factors=(5, 5))}, r"Cannot reparameterize layer 'd1'.*"),
    ({"d1": tr.LowRank(rank=2, method="whitened")}, r"Layers \['d1'\] use data-aware decompositions; pass calibration_data"),
    (42, "policy must be a spec"),
]


@pytest.mark.parametrize("policy, message", ERRORS)
def test_bad_policies(policy, message):
    with pytest.raises(ValueError, match=message):
        tr.reparameterize(_functional(), policy)


def test_policy_naming_an_unsupported_layer():
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match=r"It names conv \(Conv2D\), but only Dense"):
        tr.reparameterize(model, {"conv": tr.LowRank(rank=2)})


def test_spec_arguments_are_checked():
    with pytest.raises(ValueError, match="needs exactly one of rank, energy, param_budget; got none"):
        tr.LowRank()
    with pytest.raises(ValueError, match="method must be one of"):
        tr.LowRank(rank=2, method="magic")


def test_subclassed_model_is_refused():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)

        def call(self, x):
            return self.dense(x)

    model = Sub()
    model(X)
    with pytest.raises(ValueError, match="needs a Functional or Sequential model; Sub is a subclassed"):
        tr.reparameterize(model, tr.LowRank(rank=2))


def test_precollected_statistics_replace_the_data_pass():
    from tfreparam import calibration

    x = np.random.default_rng(5).normal(size=(128, 24)).astype("float32")
    model = _functional()
    stats = calibration.input_grams(model, [model.get_layer("d1")], x)
    from_data = tr.reparameterize(model, {"d1": tr.LowRank(rank=3, method="whitened")}, calibration_data=x)
    from_stats = tr.reparameterize(model, {"d1": tr.LowRank(rank=3, method="whitened")}, statistics=stats)
    np.testing.assert_allclose(from_stats(X).numpy(), from_data(X).numpy(), atol=1e-6)


def test_block_term_is_produced_and_fits_planted_blocks():
    # d1's kernel is a sum of two Tucker blocks with mutually orthogonal bases and
    # scales 10:1 over modes (4, 6) x (4, 8): deflation recovers them exactly.
    rng = np.random.default_rng(4)
    model = _functional()
    modes, ranks = (4, 6, 4, 8), (2, 3, 2, 4)
    bases = [np.linalg.qr(rng.normal(size=(n, n)))[0] for n in modes]
    blocks = []
    for b, scale in enumerate((10.0, 1.0)):
        core = scale * rng.normal(size=ranks)  # well-conditioned unfoldings
        tensor = core
        for j, basis in enumerate(bases):
            tensor = np.moveaxis(np.tensordot(basis[:, b * ranks[j]:(b + 1) * ranks[j]], tensor, axes=([1], [j])), 0, j)
        blocks.append(tensor)
    kernel = (blocks[0] + blocks[1]).reshape(24, 32).astype("float32")
    model.get_layer("d1").kernel.assign(kernel)
    new = tr.reparameterize(model, {"d1": tr.BlockTerm(ranks=ranks, num_blocks=2, n_iter=0)})
    layer = new.get_layer("d1")
    assert isinstance(layer, tr.BlockTermDense) and layer.num_blocks == 2
    np.testing.assert_allclose(layer.dense_kernel().numpy(), kernel, atol=1e-4 * np.abs(kernel).max())


def test_factorizations_are_returned_explicitly_for_the_report():
    model = _functional()
    new, factorizations = tr.reparameterize(model, {"d1": tr.LowRank(rank=4)}, return_factorizations=True)
    assert set(factorizations) == {"d1"} and factorizations["d1"].layer_config == {"rank": 4}
    s = np.linalg.svd(model.get_layer("d1").kernel.numpy().astype(np.float64), compute_uv=False)
    tail = np.sqrt((s[4:] ** 2).sum() / (s**2).sum())
    rows = {row.name: row for row in tr.report(new, factorizations).rows}
    assert rows["d1"].relative_error == pytest.approx(tail, abs=1e-5)
    # Without them, a lone model has no reference to measure against.
    assert {row.name: row for row in tr.report(new).rows}["d1"].relative_error is None


def test_lora_policy_injects_frozen_adapters_that_change_nothing_at_first():
    inputs = keras.Input((24,))
    q = keras.layers.Dense(24, name="layer_0/attention/query")(inputs)
    v = keras.layers.Dense(24, name="layer_0/attention/value")(inputs)
    k = keras.layers.Dense(24, name="layer_0/attention/key")(inputs)
    model = keras.Model(inputs, keras.layers.Add()([q, k, v]))
    new = tr.reparameterize(model, {r".*/attention/(query|value)": tr.LoRA(rank=8, alpha=16)})
    query = new.get_layer("layer_0/attention/query")
    assert isinstance(query, tr.LoRADense) and type(new.get_layer("layer_0/attention/key")) is keras.layers.Dense
    assert (query.rank, query.scaling) == (8, 2.0)
    np.testing.assert_array_equal(query.base_layer.kernel.numpy(), model.get_layer("layer_0/attention/query").kernel.numpy())
    np.testing.assert_array_equal(query.lora_b.numpy(), np.zeros((8, 24)))
    assert np.abs(query.lora_a.numpy()).max() <= 1 / np.sqrt(24)
    np.testing.assert_array_equal(new(X).numpy(), model(X).numpy())

    from bert.peft import trainable_only

    trainable_only(new, "lora")
    assert sorted(w.name.split("/")[-1] for w in new.trainable_weights) == ["lora_a:0"] * 2 + ["lora_b:0"] * 2
    frozen = [w.numpy().copy() for w in new.non_trainable_weights]
    new.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    new.fit(X, np.ones((len(X), 24), "float32"), epochs=1, verbose=0)
    for before, after in zip(frozen, new.non_trainable_weights):
        np.testing.assert_array_equal(before, after.numpy())
    assert np.abs(query.lora_b.numpy()).max() > 0  # the adapters trained


def test_bad_regex_and_flat_calibration_data_name_the_argument():
    # Issue 16.12: a bare re.error and a numpy broadcasting message before.
    with pytest.raises(ValueError, match=r"policy: 'd\(1' is not a valid regular expression"):
        tr.reparameterize(_functional(), {"d(1": tr.LowRank(rank=2)})
    with pytest.raises(ValueError, match=r"calibration_data has shape \(24,\), but the model input .* takes batches"):
        tr.reparameterize(_functional(), tr.LowRank(rank=2, method="whitened"), calibration_data=X[0])


@pytest.mark.parametrize("spec", [
    tr.LowRank(param_budget=0.5), tr.Kronecker(param_budget=0.5), tr.TensorTrain(param_budget=0.5, num_cores=2),
    tr.Tucker(param_budget=0.5), tr.CP(param_budget=0.5, n_iter=5), tr.BlockTerm(ranks=2, param_budget=0.5),
    tr.LoRA(rank=3),
], ids=lambda spec: type(spec).__name__)
def test_every_spec_builds_its_family_layer_with_the_sizes_it_factorizes_to(spec):
    layer = spec.make_layer(24, 32, name="fresh")
    assert isinstance(layer, spec.family.layer_class) and layer.name == "fresh"
    kernel = np.random.default_rng(6).normal(size=(24, 32))
    factorization = spec.factorize(kernel)
    assert factorization.form is spec.family.form
    assert factorization.layer_config == spec.layer_config(24, 32)
    layer.build((None, 24))
    if spec.family.name != "lora":
        assert factorization.num_params == layer.num_params - 32 <= 0.5 * 24 * 32
