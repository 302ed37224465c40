"""The whole tiny BERT under QAT, PQAT / CQAT preservation, and the clear refusals."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot
from ai_edge_litert.interpreter import Interpreter
from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper

import bert
import tfreparam as tr
from tfreparam import quantization as tq
from tfreparam.export import model_io
from tfreparam.quantization import convert

_BATCH, _SEQ = 8, 16


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    config = bert.BertConfig.named("tiny")
    encoder = bert.build_encoder(config, layer_policy={r"layer_0/ffn/.*": tr.LowRank(rank=8)})
    rng = np.random.default_rng(0)
    mask = np.ones((_BATCH, _SEQ), "int32")
    mask[:, 11:] = 0
    inputs = {
        "input_word_ids": rng.integers(0, config.vocab_size, (_BATCH, _SEQ)).astype("int32"),
        "input_mask": mask,
        "input_type_ids": np.zeros((_BATCH, _SEQ), "int32"),
    }
    return encoder, tq.quantize_model(encoder, calibration_data=inputs), inputs


def test_every_bert_layer_is_quantized(tiny):
    encoder, qat, _ = tiny
    assert tq.unquantized_layers(qat) == []
    wrapped = {layer.layer.name: layer.quantize_config for layer in qat.layers
               if isinstance(layer, quantize_wrapper.QuantizeWrapper)}
    expected = {layer.name for layer in encoder.layers if not isinstance(layer, keras.layers.InputLayer)}
    assert set(wrapped) == expected
    # Registered by bert.quantization, which quantize_model imported on first use.
    from bert.quantization import AttentionMathQuantizeConfig

    assert isinstance(wrapped["layer_0/attention/math"], AttentionMathQuantizeConfig)
    assert isinstance(wrapped["layer_0/ffn/intermediate"], tq.ReparameterizedDenseQuantizeConfig)
    assert isinstance(wrapped["embeddings/layer_norm"], tq.LayerNormQuantizeConfig)


def test_qat_replaces_no_method_of_a_layer_instance(tiny):
    """The configs hand quantizers to documented hooks (TFMOT's QuantizeConfig pattern): no instance patching."""
    _, qat, _ = tiny
    for wrapper in qat.layers:
        if isinstance(wrapper, quantize_wrapper.QuantizeWrapper):
            patched = {name for name, value in vars(wrapper.layer).items() if callable(value) and hasattr(value, "__self__")
                       and value.__self__ is wrapper.layer}
            assert not patched, (wrapper.name, patched)
    root = pathlib.Path(__file__).resolve().parents[2]
    sources = [path for package in ("tfreparam", "bert") for path in sorted((root / package).rglob("*.py"))]
    assert sources and not [str(path) for path in sources if "MethodType" in path.read_text()]


def test_bert_qat_is_close_to_float_and_trains(tiny):
    encoder, qat, inputs = tiny
    mask = inputs["input_mask"] == 1
    reference = encoder(inputs)["sequence_output"].numpy()[mask]
    quantized = qat(inputs, training=False)["sequence_output"].numpy()[mask]
    cosine = np.sum(reference * quantized, -1) / np.linalg.norm(reference, axis=-1) / np.linalg.norm(quantized, axis=-1)
    assert cosine.min() > 0.99, cosine.min()
    classifier = keras.Model(qat.inputs, keras.layers.Dense(2)(qat.output["pooled_output"]))
    classifier.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = classifier.fit(inputs, np.arange(_BATCH) % 2, epochs=2, batch_size=4, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_bert_int8_tflite_is_integer_and_matches_qat(tiny):
    _, qat, inputs = tiny
    flatbuffer = convert.int8_tflite(qat, inputs, seq_length=_SEQ)
    # Only the int32 mask -> float cast at the input edge is not an integer op.
    assert set(convert.float_ops(flatbuffer)) <= {"CAST"}
    runner = Interpreter(model_content=flatbuffer).get_signature_runner()
    mask = inputs["input_mask"] == 1
    lite = runner(**inputs)["sequence_output"][mask]
    keras_out = qat(inputs, training=False)["sequence_output"].numpy()[mask]
    cosine = np.sum(lite * keras_out, -1) / np.linalg.norm(lite, axis=-1) / np.linalg.norm(keras_out, axis=-1)
    assert cosine.min() > 0.99, cosine.min()


def _low_rank_model(u_values=None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,), name="x")
    layer = tr.LowRankDense(8, rank=4, name="projection")
    model = keras.Model(inputs, layer(inputs))
    if u_values is not None:
        layer.set_factors({"u": u_values, "v": layer.get_factors()["v"]})
    return model


def _fit(qat, steps=6):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 16)).astype("float32")
    qat.compile(keras.optimizers.Adam(1e-2), "mse")
    qat.fit(x, rng.normal(size=(32, 8)).astype("float32"), batch_size=32 // 2, epochs=steps // 2, verbose=0)


def _factor(qat, name):
    return qat.get_layer("quant_projection").layer.factor_weights[name].numpy()


def test_pqat_keeps_zeros_and_default_qat_does_not():
    u = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    u[::2] = 0.0  # half the rows pruned
    for scheme, stays_zero in (("pqat", True), ("default_8bit", False)):
        qat = tq.quantize_model(_low_rank_model(u), scheme=scheme)
        _fit(qat)
        trained = _factor(qat, "u")
        assert np.all(trained[::2] == 0.0) == stays_zero, scheme
        assert not np.allclose(trained[1::2], u[1::2])  # the kept weights did train


def test_cqat_keeps_unique_value_count():
    rng = np.random.default_rng(0)
    centroids = np.array([-0.6, -0.2, 0.3, 0.7], "float32")
    u = centroids[rng.integers(0, 4, size=(16, 4))]
    qat = tq.quantize_model(_low_rank_model(u), scheme="cqat")
    _fit(qat)
    trained = _factor(qat, "u")
    assert len(np.unique(trained)) == 4
    assert not np.allclose(np.sort(np.unique(trained)), centroids)  # the centroids trained
    plain = tq.quantize_model(_low_rank_model(u))
    _fit(plain)
    assert len(np.unique(_factor(plain, "u"))) > 4


def test_collaborative_schemes_refuse_lora_clearly():
    inputs = keras.Input((16,))
    model = keras.Model(inputs, tr.LoRADense(keras.layers.Dense(8), rank=2)(inputs))
    with pytest.raises(ValueError, match=r"cannot be quantized with scheme='pqat'.*merged kernel"):
        tq.quantize_model(model, scheme="pqat")


def test_mixed_precision_is_refused_with_a_clear_message():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((16,))
        model = keras.Model(inputs, keras.layers.Dense(8)(inputs))
        # Plain TFMOT fails deep inside its fake-quant ops with a dtype error.
        with pytest.raises(Exception) as raw:
            tfmot.quantization.keras.quantize_model(model)
        assert "float32 compute" not in str(raw.value)
        with pytest.raises(ValueError, match=r"needs float32 compute.*'mixed_float16'"):
            tq.quantize_model(model)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_unknown_layers_subclassed_and_nested_models_are_refused():
    class Custom(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match=r"no QuantizeConfig.*register_quantize_config"):
        tq.quantize_model(keras.Model(inputs, Custom(name="custom")(inputs)))
    inner = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    outer_in = keras.Input((4,))
    with pytest.raises(ValueError, match=r"nests models"):
        tq.quantize_model(keras.Model(outer_in, inner(outer_in)))
    with pytest.raises(ValueError, match=r"Unknown QAT scheme"):
        tq.quantize_model(inner, scheme="int4")
    with pytest.raises(TypeError, match=r"tf_keras Layer subclass"):
        tq.register_quantize_config(object, lambda layer: None)


def test_layer_norm_qat_matches_numpy_layer_norm():
    """The L2-normalize decomposition equals LayerNorm up to the int8 rounding of its steps."""
    rng = np.random.default_rng(3)
    layer = keras.layers.LayerNormalization(epsilon=1e-6)
    model = keras.Sequential([keras.Input((5, 64)), layer])
    gamma, beta = rng.normal(1.0, 0.3, 64).astype("float32"), rng.normal(0.0, 0.3, 64).astype("float32")
    layer.set_weights([gamma, beta])
    x = (rng.normal(size=(8, 5, 64)) * rng.uniform(0.5, 3.0, (8, 5, 1))).astype("float32")
    # QAT wraps the same LayerNorm with a hook (a subclass: Keras' own has no place for fake-quants).
    same = tq.QuantizableLayerNormalization.from_config(layer.get_config())
    same.build(x.shape)
    same.set_weights(layer.get_weights())
    np.testing.assert_array_equal(same(x).numpy(), layer(x).numpy())  # bit for bit, hooks unset
    qat = tq.quantize_model(model, calibration_data=x)
    assert isinstance(qat.layers[-1].quantize_config, tq.LayerNormQuantizeConfig)
    assert isinstance(qat.layers[-1].layer, tq.QuantizableLayerNormalization)
    assert type(layer) is keras.layers.LayerNormalization  # the float model is not touched
    centered = x - x.mean(-1, keepdims=True)
    expected = centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-6) * gamma + beta
    got = qat(x, training=False).numpy()
    # 8-bit steps: the unit vector at 1/128 (entries ~1/8), the output at (range / 255).
    assert np.abs(got - expected).max() < 0.25, np.abs(got - expected).max()
    cosine = np.sum(got * expected, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(expected, axis=-1)
    assert cosine.min() > 0.995, cosine.min()


def test_collaborative_schemes_refuse_only_layers_that_carry_structure():
    inputs = keras.Input((4,), dtype="int32")
    hidden = keras.layers.Embedding(50, 8, name="embedding")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(8)(hidden))
    # An unpruned embedding has nothing to preserve: PQAT quantizes it plainly.
    tq.quantize_model(model, scheme="pqat")
    table = model.get_layer("embedding").get_weights()[0]
    table[:, :4] = 0.0
    model.get_layer("embedding").set_weights([table])
    with pytest.raises(ValueError, match=r"'embedding'.*cannot be quantized with scheme='pqat'"):
        tq.quantize_model(model, scheme="pqat")


# -- calibrated QAT of a BERT factorized everywhere, to int8 TFLite ------------


@pytest.fixture(scope="module")
def low_rank_int8(tmp_path_factory):
    """The issue's path: every projection LowRank, calibrated QAT, a few fit steps, int8 export."""
    keras.utils.set_random_seed(0)
    encoder = bert.build_encoder(bert.BertConfig.named("tiny", vocab_size=512), layer_policy={".*": tr.LowRank(rank=16)})
    batches = [model_io.sample_inputs(encoder, batch_size=16, seq_length=_SEQ, seed=s) for s in range(2)]
    qat = tq.quantize_model(encoder, calibration_data=batches)
    inputs = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    targets = encoder.predict(inputs, verbose=0)  # distil towards the float encoder
    qat.compile(keras.optimizers.Adam(1e-4), loss={name: "mse" for name in targets})
    qat.fit(inputs, targets, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path_factory.mktemp("low_rank_int8") / "model.tflite")
    tr.export.tflite(qat, path, mode="int8", seq_length=_SEQ, representative_data=batches, check=False)
    return qat, path, inputs


def test_calibrated_low_rank_bert_int8_matches_its_qat_model(low_rank_int8):
    qat, path, inputs = low_rank_int8
    report = tr.export.check_parity(qat, path, inputs, mode="qat")
    assert report.outputs["sentence_embedding"].cosine_min >= 0.99, report
    assert report.outputs["sequence_output"].cosine_min >= 0.99, report
    assert set(convert.float_ops(open(path, "rb").read())) <= {"CAST"}


def test_qat_bert_converts_fully_integer_without_representative_data(low_rank_int8, tmp_path):
    """Every tensor of the QAT BERT has a trained range, the 3-input embedding sum's running sum included.

    That sum used to have none and stayed two float ADDs without representative data.
    """
    qat, _, inputs = low_rank_int8
    embedding_sum = qat.get_layer("quant_embeddings/add")
    assert isinstance(embedding_sum.layer, tq.PartialSumAdd) and embedding_sum.layer.num_inputs == 3
    path = tmp_path / "m.tflite"
    report = tr.export.tflite(qat, str(path), mode="int8", seq_length=_SEQ, sample_inputs=inputs)
    assert set(convert.float_ops(path.read_bytes())) <= {"CAST"}
    assert report.outputs["sentence_embedding"].cosine_min >= 0.99, report


def _three_way_sum():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), name="x")
    branches = [keras.layers.Dense(8, name=f"branch_{i}")(inputs) for i in range(3)]
    return keras.Model(inputs, keras.layers.Add(name="sum")(branches))


def test_partial_sums_of_a_multi_input_add_get_ranges(tmp_path):
    """A PartialSumAdd is the Add (same sum, same order) plus one fake-quant per running sum."""
    model = _three_way_sum()
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    same = tq.PartialSumAdd(num_inputs=3)
    parts = [model.get_layer(f"branch_{i}")(x) for i in range(3)]
    np.testing.assert_array_equal(same(parts).numpy(), model(x).numpy())  # bit for bit, hooks unset
    with pytest.raises(ValueError, match=r"sums 3 inputs, so it takes 1 partial-sum hooks; got 2"):
        same.set_quantize_hooks([tf.identity, tf.identity])

    qat = tq.quantize_model(model, calibration_data=x)
    wrapper = qat.get_layer("quant_sum")
    assert isinstance(wrapper.quantize_config, tq.AddQuantizeConfig)
    partial = wrapper._quantize_activations[0]._post_activation_vars
    # Calibration set the running sum's range to what it observed: branch_0 + branch_1 (int8 branches,
    # so within a few percent of the float sum's range).
    first_two = (parts[0] + parts[1]).numpy()
    np.testing.assert_allclose([partial["min_var"].numpy(), partial["max_var"].numpy()],
                               [min(first_two.min(), 0.0), max(first_two.max(), 0.0)], rtol=0.05)
    report = tr.export.tflite(qat, str(tmp_path / "ours.tflite"), mode="int8", seq_length=None,
                              sample_inputs={"x": x})
    assert convert.float_ops((tmp_path / "ours.tflite").read_bytes()) == {}
    assert report.outputs["output_0"].cosine_min >= 0.99, report

    # TFMOT's own QAT quantizes only the Add's output: without data the running sum stays a float ADD,
    # and the exporter refuses the file rather than pass it off as integer.
    plain = tfmot.quantization.keras.quantize_model(model)
    with pytest.raises(tr.export.NotFullyIntegerError, match=r"float ops: .*ADD x\d.*pass representative_data="):
        tr.export.tflite(plain, str(tmp_path / "plain.tflite"), mode="int8", seq_length=None)


def test_int8_attention_ignores_padding(low_rank_int8):
    """Padded tokens get no attention: changing them leaves every real token's output as it was.

    LiteRT's broadcasting int8 ADD overflowed on the mask (scale ~1000x the
    logits'), so padding got the *largest* logit instead of the smallest.
    """
    _, path, inputs = low_rank_int8
    padded = (inputs["input_mask"] == 0).any(axis=1)
    assert padded.sum() >= 8
    inputs = {name: value[padded] for name, value in inputs.items()}
    mask = inputs["input_mask"].astype(bool)
    other = dict(inputs, input_word_ids=np.where(mask, inputs["input_word_ids"], 7).astype("int32"))
    first = tr.export.run_artifact(path, inputs)["sequence_output"]
    second = tr.export.run_artifact(path, other)["sequence_output"]
    assert not np.array_equal(inputs["input_word_ids"], other["input_word_ids"])
    np.testing.assert_array_equal(first[mask], second[mask])


@pytest.mark.parametrize("center", [True, False])
def test_layer_norm_without_beta_before_a_reshape_converts(center, tmp_path):
    """A LayerNorm whose β is all zero (freshly built) or absent, feeding a factorized layer.

    The converter drops `+ 0`; the LayerNorm's two fake-quants then sat back to
    back with different calibrated ranges and the factorized layer's RESHAPE
    failed: "quantization parameters violate the same scale constraint".
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input((_SEQ, 32), name="x")
    hidden = keras.layers.Dense(32, name="dense")(inputs)
    hidden = keras.layers.LayerNormalization(center=center, name="layer_norm")(hidden)
    model = keras.Model(inputs, tr.LowRankDense(8, rank=4, name="projection")(hidden))
    rng = np.random.default_rng(1)
    # Two batches of different spread, as real data has: the two ranges then differ.
    batches = [{"x": rng.normal(size=(8, _SEQ, 32)).astype("float32") * spread} for spread in (1.0, 3.0)]
    qat = tq.quantize_model(model, calibration_data=batches)
    x = {"x": np.concatenate([b["x"] for b in batches])}
    report = tr.export.tflite(qat, str(tmp_path / "m.tflite"), mode="int8", seq_length=None, sample_inputs=x)
    assert report.outputs["output_0"].cosine_min >= 0.99, report
