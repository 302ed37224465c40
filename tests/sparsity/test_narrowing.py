"""Narrowed attention heads: exact where the heads' products have that rank, Eckart–Young in whitened norm."""

import numpy as np
import pytest
import tf_keras as keras

import bert
import tfreparam as tr
from tfreparam import export
from tfreparam.sparsity import narrowing, structured

from tests.sparsity.tiny_bert import CONFIG, HEAD, INPUTS, MASK, SEQ
QK_RANK, VO_RANK = 2, 3


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(2)
    return bert.build_encoder(CONFIG)


@pytest.fixture(scope="module")
def low_rank_encoder(encoder):
    """The encoder with every head's [W_q; b_q] of rank 2 and [W_v; b_v] of rank 3 (columns zeroed, biases too).

    Query and key kernels are scaled up from the 0.02 initialisation, so that the attention is far from uniform
    and an error in its logits shows in the output.
    """
    model = tr.fold(encoder)
    for block in range(CONFIG.num_layers):
        layer = model.get_layer(f"layer_{block}/attention/key")
        layer.set_weights([layer.get_weights()[0] * 20, layer.get_weights()[1]])
        for part, rank in (("query", QK_RANK), ("value", VO_RANK)):
            layer = model.get_layer(f"layer_{block}/attention/{part}")
            kernel, bias = (w.copy() for w in layer.get_weights())
            kernel *= 20 if part == "query" else 1
            for h in range(CONFIG.num_heads):
                kernel[:, h * HEAD + rank:(h + 1) * HEAD] = 0
                bias[h * HEAD + rank:(h + 1) * HEAD] = 0
                bias[h * HEAD:h * HEAD + rank] += 0.5  # biases that matter: they must ride along exactly
            layer.set_weights([kernel, bias])
    return model


def _outputs(model):
    return model(INPUTS, training=False)["sequence_output"].numpy()


def _moments(model):
    return narrowing.attention_input_moments(model, [INPUTS])


def test_narrowing_to_the_heads_own_rank_is_exact(low_rank_encoder):
    moments = _moments(low_rank_encoder)
    narrowed = narrowing.narrow_heads(low_rank_encoder, QK_RANK, VO_RANK, moments)
    assert narrowing.head_widths(narrowed) == {b: (QK_RANK, VO_RANK) for b in range(CONFIG.num_layers)}
    assert narrowed.get_layer("layer_0/attention/query").units == CONFIG.num_heads * QK_RANK
    assert narrowed.get_layer("layer_0/attention/value").units == CONFIG.num_heads * VO_RANK
    np.testing.assert_allclose(_outputs(narrowed), _outputs(low_rank_encoder), atol=2e-5)
    # The plain SVD (no moments) is exact too at the heads' own rank.
    np.testing.assert_allclose(_outputs(narrowing.narrow_heads(low_rank_encoder, QK_RANK, VO_RANK)),
                               _outputs(low_rank_encoder), atol=2e-5)
    # One rank less is not.
    fewer = narrowing.narrow_heads(low_rank_encoder, QK_RANK - 1, VO_RANK, moments)
    assert np.max(np.abs(_outputs(fewer) - _outputs(low_rank_encoder))) > 1e-3


def _augmented(layer):
    kernel, bias = layer.get_weights()
    return np.vstack([kernel, bias]).astype(np.float64)


def test_the_logits_form_is_the_eckart_young_optimum_in_the_inputs_norm(encoder):
    moments = _moments(encoder)
    rank = 3
    narrowed = narrowing.narrow_heads(encoder, rank, HEAD, moments)
    plain = narrowing.narrow_heads(encoder, rank, HEAD)
    c = moments[0]
    values, vectors = np.linalg.eigh(c)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    q, k = (_augmented(encoder.get_layer(f"layer_0/attention/{p}")) for p in ("query", "key"))
    for h in range(CONFIG.num_heads):
        cols = slice(h * HEAD, (h + 1) * HEAD)
        target = q[:, cols] @ k[:, cols].T / np.sqrt(HEAD)  # the logits' bilinear form, scale included

        def form(model):
            nq, nk = (_augmented(model.get_layer(f"layer_0/attention/{p}")) for p in ("query", "key"))
            c2 = slice(h * rank, (h + 1) * rank)
            return nq[:, c2] @ nk[:, c2].T / np.sqrt(rank)

        def error(m):
            return np.linalg.norm(root @ (m - target) @ root) ** 2

        tail = np.linalg.svd(root @ target @ root, compute_uv=False)[rank:]
        assert error(form(narrowed)) == pytest.approx(np.sum(tail ** 2), rel=1e-3)
        assert error(form(plain)) >= error(form(narrowed)) * (1 - 1e-6)


def test_the_value_output_product_is_the_eckart_young_optimum(encoder):
    moments = _moments(encoder)
    rank = 2
    narrowed = narrowing.narrow_heads(encoder, HEAD, rank, moments)
    values, vectors = np.linalg.eigh(moments[1])
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    v = _augmented(encoder.get_layer("layer_1/attention/value"))
    o = encoder.get_layer("layer_1/attention/output").get_weights()[0].astype(np.float64)
    nv = _augmented(narrowed.get_layer("layer_1/attention/value"))
    no = narrowed.get_layer("layer_1/attention/output").get_weights()[0].astype(np.float64)
    for h in range(CONFIG.num_heads):
        target = v[:, h * HEAD:(h + 1) * HEAD] @ o[h * HEAD:(h + 1) * HEAD]
        approx = nv[:, h * rank:(h + 1) * rank] @ no[h * rank:(h + 1) * rank]
        tail = np.linalg.svd(root @ target, compute_uv=False)[rank:]
        assert np.linalg.norm(root @ (approx - target)) ** 2 == pytest.approx(np.sum(tail ** 2), rel=1e-3)


def test_moments_are_of_the_real_tokens_attention_inputs(encoder):
    moments = _moments(encoder)
    # Block 0's attention input is the embeddings' LayerNorm output.
    x = keras.Model(encoder.inputs, encoder.get_layer("layer_0/attention/query").input)(INPUTS).numpy()
    rows = x[MASK.astype(bool)].astype(np.float64)
    np.testing.assert_allclose(moments[0][:-1, :-1], rows.T @ rows / len(rows), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moments[0][:-1, -1], rows.mean(0), rtol=1e-5, atol=1e-6)
    assert moments[0][-1, -1] == pytest.approx(1.0)


def test_removing_heads_and_neurons_from_a_narrowed_model_matches_zeroing_them(low_rank_encoder):
    narrowed = narrowing.narrow_heads(low_rank_encoder, QK_RANK, VO_RANK, _moments(low_rank_encoder))
    pruned = structured.remove_heads_and_neurons(narrowed, heads={0: [1, 3]}, neurons={1: [0, 7]}, seq_length=SEQ)
    reference = tr.fold(narrowed)
    layer = reference.get_layer("layer_0/attention/output")
    kernel, bias = layer.get_weights()
    for h in (1, 3):
        kernel[h * VO_RANK:(h + 1) * VO_RANK] = 0
    layer.set_weights([kernel, bias])
    layer = reference.get_layer("layer_1/ffn/output")
    kernel, bias = layer.get_weights()
    kernel[[0, 7]] = 0
    layer.set_weights([kernel, bias])
    np.testing.assert_allclose(_outputs(pruned.model), _outputs(reference), atol=2e-5)
    # FLOPs per token of a block's attention: q and k at the query width, v at its own, the output's rows,
    # biases, then QKᵀ and PV at their widths; of its FFN: two kernels and biases.
    h, n = CONFIG.hidden_size, CONFIG.intermediate_size

    def attention(kept, qk, vo):
        return SEQ * (2 * h * kept * (2 * qk + 2 * vo) + kept * (2 * qk + vo) + h) + 2 * SEQ * SEQ * kept * (qk + vo)

    def ffn(kept):
        return SEQ * (4 * h * kept + kept + h)

    heads = CONFIG.num_heads
    assert structured.encoder_flops(low_rank_encoder, SEQ) - structured.encoder_flops(narrowed, SEQ) == \
        CONFIG.num_layers * (attention(heads, HEAD, HEAD) - attention(heads, QK_RANK, VO_RANK))
    assert pruned.flops_before - pruned.flops_after == \
        attention(heads, QK_RANK, VO_RANK) - attention(heads - 2, QK_RANK, VO_RANK) + ffn(n) - ffn(n - 2)


def test_a_narrowed_model_saves_loads_and_converts(tmp_path, low_rank_encoder):
    narrowed = narrowing.narrow_heads(low_rank_encoder, QK_RANK, VO_RANK)
    path = str(tmp_path / "narrowed.keras")
    narrowed.save(path)
    np.testing.assert_allclose(_outputs(keras.models.load_model(path)), _outputs(narrowed), atol=1e-6)
    view = keras.Model(narrowed.inputs, narrowed.output["sequence_output"])
    file = str(tmp_path / "narrowed.tflite")
    export.tflite(view, file, "fp32", seq_length=SEQ, check=False)
    out = next(iter(export.run_artifact(file, INPUTS).values()))
    np.testing.assert_allclose(out, _outputs(narrowed), atol=1e-4)


def test_a_narrowed_model_trains_quantization_aware_and_its_int8_file_matches(low_rank_encoder):
    """QAT (TFMOT, our BERT configs) sees query/key and value projections of different widths: close to the float
    model, trainable, and its full-integer TFLite file computes what the QAT model does."""
    from ai_edge_litert.interpreter import Interpreter

    from tfreparam import quantization
    from tfreparam.quantization import convert

    narrowed = narrowing.narrow_heads(low_rank_encoder, QK_RANK, VO_RANK)
    qat = quantization.quantize_model(narrowed, calibration_data=INPUTS)
    assert quantization.unquantized_layers(qat) == []
    real = MASK == 1

    def cosine(a, b):
        return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)

    quantized = qat(INPUTS, training=False)["sequence_output"].numpy()[real]
    assert cosine(quantized, _outputs(narrowed)[real]).min() > 0.99
    qat.compile(keras.optimizers.Adam(1e-3), loss={"sequence_output": "mse"})
    history = qat.fit(INPUTS, {"sequence_output": _outputs(low_rank_encoder)}, epochs=2, batch_size=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    runner = Interpreter(model_content=convert.int8_tflite(qat, INPUTS, seq_length=SEQ)).get_signature_runner()
    lite = runner(**INPUTS)["sequence_output"][real]
    assert cosine(lite, qat(INPUTS, training=False)["sequence_output"].numpy()[real]).min() > 0.99


@pytest.mark.parametrize("qk, vo, message", [
    (0, 4, "qk_width of block 0 must be an integer from 1 to the head's present width 8; got 0"),
    (9, 4, "qk_width of block 0 must be an integer from 1 to the head's present width 8; got 9"),
    (2.5, 4, "qk_width of block 0 must be an integer"),
    (4, {7: 2}, "vo_width: no blocks \\[7\\]"),
])
def test_impossible_widths_are_refused(encoder, qk, vo, message):
    with pytest.raises(ValueError, match=message):
        narrowing.narrow_heads(encoder, qk, vo)


def test_bad_moments_and_layers_are_refused(encoder):
    with pytest.raises(ValueError, match="moments of block 0 must be a finite \\(33, 33\\) matrix"):
        narrowing.narrow_heads(encoder, 2, 2, {b: np.full((33, 33), np.nan) for b in range(CONFIG.num_layers)})
    with pytest.raises(ValueError, match="No input moments for block 1"):
        narrowing.narrow_heads(encoder, 2, 2, {0: np.eye(33)})
    with pytest.raises(ValueError, match="Calibration batches need 'input_mask'"):
        narrowing.attention_input_moments(encoder, [{k: v for k, v in INPUTS.items() if k != "input_mask"}])
    factorized = tr.reparameterize(encoder, {r"layer_0/attention/query": tr.LowRank(rank=4)})
    with pytest.raises(ValueError, match="'layer_0/attention/query' is a LowRankDense.*tfreparam.fold"):
        narrowing.narrow_heads(factorized, 2, 2)
