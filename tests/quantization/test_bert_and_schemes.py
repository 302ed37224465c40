"""The whole tiny BERT under QAT, PQAT / CQAT preservation, and the clear refusals."""

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
    qat = tq.quantize_model(model, calibration_data=x)
    assert isinstance(qat.layers[-1].quantize_config, tq.LayerNormQuantizeConfig)
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
