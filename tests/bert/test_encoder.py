"""The flat functional BERT: structure, parameter counts, masking, variants."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import bert
import tfreparam as tr

CONFIG = bert.BertConfig.named("tiny", vocab_size=120, max_position_embeddings=40, hidden_dropout=0.0,
                               attention_dropout=0.0)
H, I, L, V, P, T = 128, 512, 2, 120, 40, 2


def _inputs(batch=3, seq=12, pad_from=9, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, size=(batch, seq)).astype("int32")
    mask = np.ones((batch, seq), "int32")
    mask[:, pad_from:] = 0
    ids[mask == 0] = 0
    return [ids, mask, np.zeros_like(ids)]


def _dense(n_in, n_out):
    return n_in * n_out + n_out


def _expected_params(c=CONFIG, embedding=None, shared=False, adapter=None):
    e = embedding or H
    params = V * e + P * e + T * e + 2 * e
    if embedding:
        params += _dense(e, H)
    block = 4 * _dense(H, H) + _dense(H, I) + _dense(I, H) + 2 * 2 * H
    if adapter:
        block += 2 * (_dense(H, adapter) + _dense(adapter, H))
    params += block * (1 if shared else L)
    return params + _dense(H, H)  # pooler


def test_every_projection_is_a_top_level_layer():
    model = bert.build_encoder(CONFIG)
    names = {layer.name for layer in model.layers}
    for i in range(L):
        for projection in bert.BLOCK_PROJECTIONS:
            assert f"layer_{i}/{projection}" in names
            assert type(model.get_layer(f"layer_{i}/{projection}")) is keras.layers.Dense
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.count_params() == _expected_params()


def test_albert_variants_parameter_counts():
    shared = bert.build_encoder(CONFIG.replace(share_layers=True))
    assert shared.count_params() == _expected_params(shared=True)
    factorized = bert.build_encoder(CONFIG.replace(embedding_size=32))
    assert factorized.count_params() == _expected_params(embedding=32)
    adapters = bert.build_encoder(CONFIG.replace(adapter_size=8))
    assert adapters.count_params() == _expected_params(adapter=8)


def test_shared_layers_are_reused_across_depth():
    model = bert.build_encoder(CONFIG.replace(share_layers=True), output_hidden_states=True)
    assert "shared/attention/query" in {layer.name for layer in model.layers}
    out = model(_inputs())
    # Two applications of the same block: outputs differ but weights are one set.
    assert len(out["hidden_states"]) == L + 1
    assert len(model.get_layer("shared/attention/query").inbound_nodes) == L


def test_padding_does_not_change_real_tokens():
    model = bert.build_encoder(CONFIG)
    ids, mask, types = _inputs(seq=9, pad_from=9)
    longer = [np.pad(a, ((0, 0), (0, 7))) for a in (ids, mask, types)]
    short_out = model([ids, mask, types])["sequence_output"].numpy()
    long_out = model(longer)["sequence_output"].numpy()[:, :9]
    np.testing.assert_allclose(long_out, short_out, atol=1e-5)


def test_attention_probabilities_ignore_padding():
    model = bert.build_encoder(CONFIG, output_attentions=True, output_hidden_states=True)
    out = model(_inputs(pad_from=9))
    assert len(out["attention_probs"]) == L
    probs = out["attention_probs"][0].numpy()
    assert probs.shape == (3, 2, 12, 12)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert probs[..., 9:].max() < 1e-4


def test_adapters_start_as_identity():
    plain = bert.build_encoder(CONFIG)
    with_adapters = bert.build_encoder(CONFIG.replace(adapter_size=8))
    for layer in plain.layers:
        if layer.weights:
            with_adapters.get_layer(layer.name).set_weights(layer.get_weights())
    x = _inputs()
    np.testing.assert_allclose(
        with_adapters(x)["sequence_output"].numpy(), plain(x)["sequence_output"].numpy(), atol=1e-5
    )


def test_trainable_only():
    model = bert.build_encoder(CONFIG.replace(adapter_size=8))
    bert.trainable_only(model, "adapters")
    names = [v.name for v in model.trainable_variables]
    assert names and all("/adapter/" in name or "layer_norm" in name for name in names)
    assert sum("/adapter/" in name for name in names) == L * 2 * 4  # down/up kernel+bias, twice per block
    with pytest.raises(ValueError, match="no lora to train"):
        bert.trainable_only(model, "lora")
    with pytest.raises(ValueError, match="kind must be one of"):
        bert.trainable_only(model, "everything")


def test_low_rank_policy_bert_builds_trains_and_counts():
    policy = {r"layer_\d+/ffn/.*": tr.LowRank(param_budget=0.25), r"layer_\d+/attention/(query|key)": tr.Kronecker()}
    model = bert.build_encoder(CONFIG, layer_policy=policy)
    assert isinstance(model.get_layer("layer_1/ffn/output"), tr.LowRankDense)
    assert isinstance(model.get_layer("layer_0/attention/key"), tr.KroneckerDense)
    assert type(model.get_layer("layer_0/attention/value")) is keras.layers.Dense
    rank = model.get_layer("layer_0/ffn/intermediate").rank
    assert rank == (H * I // 4) // (H + I)
    saved = L * 2 * (H * I - rank * (H + I)) + L * 2 * (H * H - (8 * 8 + 16 * 16))  # 128 = 8·16
    assert model.count_params() == _expected_params() - saved
    classifier = bert.build_classifier(model, 2, config=CONFIG)
    classifier.compile(optimizer=keras.optimizers.Adam(3e-3),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = _inputs(batch=16)
    y = (x[0][:, 0] % 2).astype("int32")
    history = classifier.fit(x, y, epochs=8, batch_size=16, verbose=0).history["loss"]
    assert history[-1] < history[0]


def test_keras_round_trip(tmp_path):
    model = bert.build_encoder(CONFIG.replace(adapter_size=4), layer_policy={r".*/ffn/output": tr.TensorTrain(ranks=4)})
    x = _inputs()
    model.save(tmp_path / "bert.keras")
    loaded = keras.models.load_model(tmp_path / "bert.keras")
    np.testing.assert_allclose(loaded(x)["sequence_output"].numpy(), model(x)["sequence_output"].numpy(), atol=1e-5)


def test_config_validation_and_hf_reading():
    with pytest.raises(ValueError, match="hidden_size=100 is not divisible by num_heads=12"):
        bert.BertConfig(hidden_size=100)
    with pytest.raises(ValueError, match="activation must be one of"):
        bert.BertConfig(activation="swish")
    with pytest.raises(ValueError, match="Unknown BERT size"):
        bert.BertConfig.named("huge")
    config = bert.BertConfig.from_hf_config(bert.minilm_path())
    assert (config.hidden_size, config.num_layers, config.num_heads, config.intermediate_size) == (384, 6, 12, 1536)
    assert config.activation == "gelu"
    with pytest.raises(ValueError, match="Not a BERT config"):
        bert.BertConfig.from_hf_config({"model_type": "gpt2"})


def test_a_policy_pattern_that_matches_no_projection_is_refused():
    # Full match: "layer_0/ffn" names no projection, so nothing would be compressed.
    with pytest.raises(ValueError, match=r"layer_policy: pattern 'layer_\\\\d\+/ffn' matches no layer \(patterns "
                                         r"must match the whole name\)\. The projection layers are: layer_0/attention"):
        bert.build_encoder(CONFIG, layer_policy={r"layer_\d+/ffn": tr.LowRank(rank=2)})
    with pytest.raises(ValueError, match="share_layers=True the block projections are named 'shared/...'"):
        bert.build_encoder(CONFIG.replace(share_layers=True), layer_policy={r"layer_0/ffn/output": tr.LowRank(rank=2)})
    # Head projections are candidates of the networks that have those heads, and only of those.
    with pytest.raises(ValueError, match="pattern 'nsp/dense' matches no layer"):
        bert.build_encoder(CONFIG, layer_policy={"nsp/dense": tr.LowRank(rank=1)})
    network = bert.build_pretraining_network(CONFIG, layer_policy={"nsp/dense": tr.LowRank(rank=1)},
                                             max_predictions_per_seq=2)
    assert isinstance(network.get_layer("nsp/dense"), tr.LowRankDense)
    assert type(network.get_layer("mlm/transform")) is keras.layers.Dense


def test_a_callable_policy_sees_each_projection_as_the_dense_it_would_be():
    seen = {}

    def policy(layer):
        seen[layer.name] = (type(layer), layer.units)
        return tr.LowRank(rank=3) if layer.units == I else None

    model = bert.build_encoder(CONFIG, layer_policy=policy)
    assert seen["layer_1/ffn/intermediate"] == (keras.layers.Dense, I)
    assert seen["pooler/dense"] == (keras.layers.Dense, H) and len(seen) == 6 * L + 1
    assert [layer.name for layer in model.layers if isinstance(layer, tr.LowRankDense)] == [
        f"layer_{i}/ffn/intermediate" for i in range(L)]
