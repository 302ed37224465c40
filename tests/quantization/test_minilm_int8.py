"""The bundled MiniLM under QAT and as a fully-integer int8 TFLite: how closely each stage agrees.

To stay within the test budget the encoder keeps the checkpoint's embeddings
and first transformer block only (real weights, real outlier dimensions);
sentences are stdlib docstrings at sequence length 32. The full 6-block
numbers are in the quantization notes (`/tmp/h11` scripts in the report).
"""

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import bert
from bert.sentences import mean_pooled_embeddings, tokenize_batches
from recipes import corpus
from tfreparam import quantization as tq
from tfreparam.quantization import convert

_SEQ, _BLOCKS = 32, 1


def _cosines(a, b):
    return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _truncated_minilm(full, blocks):
    encoder = bert.build_encoder(bert.BertConfig.named("minilm", num_layers=blocks))
    for layer in encoder.layers:
        if layer.weights:
            layer.set_weights(full.get_layer(layer.name).get_weights())
    return encoder


class _TFLiteEncoder:
    """The int8 model behind the encoder's call convention (dict in, {"sequence_output"} out)."""

    def __init__(self, flatbuffer):
        self._run = Interpreter(model_content=flatbuffer).get_signature_runner()

    def __call__(self, inputs, training=False):
        outputs = self._run(**{name: np.asarray(value) for name, value in inputs.items()})
        return {"sequence_output": tf.constant(outputs["sequence_output"])}


@pytest.fixture(scope="module")
def minilm(minilm_encoder):
    encoder = _truncated_minilm(minilm_encoder, _BLOCKS)
    preprocessor = bert.Preprocessor.from_pretrained("minilm", seq_length=_SEQ)
    sentences = corpus.stdlib_sentences(limit=48)
    calibration = [{k: v.numpy() for k, v in batch.items()}
                   for batch in tokenize_batches(preprocessor, sentences[:16], batch_size=16)]
    held_out = tokenize_batches(preprocessor, sentences[16:48], batch_size=32)
    qat = tq.quantize_model(encoder, calibration_data=calibration)
    flatbuffer = convert.int8_tflite(qat, calibration, seq_length=_SEQ)
    embeddings = {
        "float": mean_pooled_embeddings(encoder, held_out),
        "qat": mean_pooled_embeddings(qat, held_out),
        "int8": mean_pooled_embeddings(_TFLiteEncoder(flatbuffer), held_out),
    }
    return flatbuffer, held_out, embeddings


def test_int8_model_is_fully_integer(minilm):
    flatbuffer, _, _ = minilm
    # The int32 mask's cast to float (then QUANTIZE) is the only op touching float32.
    assert convert.float_ops(flatbuffer) == {"CAST": 1}


def test_int8_model_ignores_padding(minilm):
    """Padded positions must not change real tokens' outputs (the int8 mask arithmetic used to drop the mask)."""
    flatbuffer, held_out, _ = minilm
    run = _TFLiteEncoder(flatbuffer)
    batch = {k: v.numpy()[:4] for k, v in held_out[0].items()}
    mask = batch["input_mask"] == 1
    assert not mask.all(), "the held-out batch needs padding for this check"
    scrambled = dict(batch)
    scrambled["input_word_ids"] = np.where(mask, batch["input_word_ids"], 1000 + np.arange(_SEQ)).astype(np.int32)
    original = run(batch)["sequence_output"].numpy()[mask]
    changed = run(scrambled)["sequence_output"].numpy()[mask]
    np.testing.assert_array_equal(original, changed)


def test_sentence_embeddings_agree_across_stages(minilm):
    _, _, emb = minilm
    int8_vs_qat = _cosines(emb["int8"], emb["qat"])
    qat_vs_float = _cosines(emb["qat"], emb["float"])
    int8_vs_float = _cosines(emb["int8"], emb["float"])
    assert int8_vs_qat.mean() > THRESHOLDS["int8_vs_qat"], int8_vs_qat.mean()
    assert qat_vs_float.mean() > THRESHOLDS["qat_vs_float"], qat_vs_float.mean()
    assert int8_vs_float.mean() > THRESHOLDS["int8_vs_float"], int8_vs_float.mean()


# Mean cosines measured on this setup: int8 vs QAT 0.955, QAT vs float 0.930, int8 vs float 0.919.
THRESHOLDS = {"int8_vs_qat": 0.95, "qat_vs_float": 0.92, "int8_vs_float": 0.91}
