"""BERT encoders through every exporter: a tiny random BERT × formats, and the real MiniLM.

MiniLM runs at sequence length 32 on real sentences (the stdlib-docstring
corpus), with int8 calibrated on other sentences of the same corpus; the
SavedModel is served in a child Python that cannot import tfreparam or bert.
The MiniLM ONNX file is converted by `tools/export.py` in a child Python:
tf2onnx holds ~3 GB while it converts MiniLM, which the pytest worker then
need not hold.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import bert
import tfreparam as tr
from bert.config import BertConfig
from bert.encoder import build_encoder
from recipes import corpus
from tests.export.standalone import serve_without_project
from tfreparam import export
from tfreparam.export import model_io
from tfreparam.export.flatbuffer import float_ops, op_names, weight_buffers
from tfreparam.export.runners import TFLiteRunner

SEQ = 32


# -- tiny BERT × formats --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert():
    config = BertConfig.named("tiny", vocab_size=512)
    return build_encoder(config, layer_policy={r"layer_\d+/ffn/.*": tr.LowRank(rank=16)})


@pytest.fixture(scope="module")
def tiny_inputs(tiny_bert):
    return model_io.sample_inputs(tiny_bert, batch_size=3, seq_length=16, seed=3)


@pytest.mark.parametrize("fmt", ["saved_model", "onnx", "fp32", "fp16", "dynamic", "int8", "int16x8"])
def test_tiny_bert_exports_with_parity(fmt, tiny_bert, tiny_inputs, tmp_path):
    if fmt == "saved_model":
        report = export.saved_model(tiny_bert, str(tmp_path / "sm"), sample_inputs=tiny_inputs)
    elif fmt == "onnx":
        report = export.onnx(tiny_bert, str(tmp_path / "m.onnx"), sample_inputs=tiny_inputs)
    else:
        representative = [model_io.sample_inputs(tiny_bert, batch_size=16, seq_length=16, seed=s) for s in range(2)]
        report = export.tflite(tiny_bert, str(tmp_path / "m.tflite"), mode=fmt, seq_length=16,
                               sample_inputs=tiny_inputs, representative_data=representative)
    assert report.passed
    assert set(report.outputs) == {"sequence_output", "pooled_output", "sentence_embedding"}
    if fmt in ("saved_model", "onnx", "fp32"):
        assert report.outputs["sequence_output"].max_abs <= 1e-4
    if fmt in ("dynamic", "int8", "int16x8"):
        assert report.tolerance.cosine_output == "sentence_embedding"
        assert report.outputs["sentence_embedding"].cosine_min >= 0.99


@pytest.mark.parametrize("mode", ["fp32", "dynamic"])
def test_tflite_outputs_do_not_depend_on_the_thread_count(mode, tiny_bert, tiny_inputs, tmp_path):
    # The compress recipe embeds its evaluation text with every core (runner_for(..., threads=)): that must not
    # change a single output bit, or int8 figures would depend on the machine's core count.
    from tfreparam.export import runners

    path = str(tmp_path / "m.tflite")
    export.tflite(tiny_bert, path, mode=mode, seq_length=16, check=False)
    one, two = (runners.runner_for(path, threads=t).run(tiny_inputs)["sequence_output"] for t in (1, 2))
    assert one.shape == (3, 16, tiny_bert.output["sequence_output"].shape[-1])
    np.testing.assert_array_equal(one, two)


def test_factorized_bert_tflite_shrinks_with_its_parameters(tiny_bert, tmp_path):
    """The file holds factors: its size tracks the parameter count, not the dense kernels'."""
    dense = build_encoder(BertConfig.named("tiny", vocab_size=512))
    sizes = {}
    for name, model in (("dense", dense), ("factorized", tiny_bert)):
        export.tflite(model, str(tmp_path / f"{name}.tflite"), seq_length=16, check=False)
        sizes[name] = (tmp_path / f"{name}.tflite").stat().st_size
    removed_params = dense.count_params() - tiny_bert.count_params()
    assert removed_params > 0.25 * dense.count_params()
    # fp32: every removed parameter removes 4 bytes (up to a little flatbuffer bookkeeping).
    assert sizes["dense"] - sizes["factorized"] == pytest.approx(4 * removed_params, rel=0.02)


def test_sequence_length_defaults_to_the_models_positions_and_is_checked(tmp_path, monkeypatch):
    """A BERT with 64 positions: the default length is 64, not 128; 100 is refused before conversion."""
    short = build_encoder(BertConfig.named("tiny", vocab_size=512, max_position_embeddings=64, num_layers=1))
    export.tflite(short, str(tmp_path / "m.tflite"), check=False)
    runner = TFLiteRunner(str(tmp_path / "m.tflite"))
    assert [list(d["shape_signature"]) for d in runner.input_details.values()] == [[-1, 64]] * 3

    def refuse(*args, **kwargs):
        raise AssertionError("the exporter started converting before checking seq_length")

    monkeypatch.setattr(model_io, "save_token_signature", refuse)
    with pytest.raises(ValueError, match=r"seq_length=100 exceeds the model's max_position_embeddings=64 .*"
                                         r"seq_length <= 64"):
        export.tflite(short, str(tmp_path / "long.tflite"), seq_length=100)
    assert model_io.max_positions(short) == 64
    # A model without a position table keeps the plain default.
    assert model_io.resolve_seq_length(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), "auto") == 128


# -- MiniLM ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(minilm_encoder):
    return minilm_encoder  # `bert.load_pretrained("minilm")`, loaded once per worker (tests/conftest.py)


@pytest.fixture(scope="module")
def preprocessor():
    return bert.preprocessing.Preprocessor.from_pretrained("minilm", seq_length=SEQ)


@pytest.fixture(scope="module")
def sentences():
    parts = corpus.split(corpus.stdlib_sentences(), {"calibration": 0.5, "heldout": 0.5})
    return {"calibration": parts["calibration"][:16], "heldout": parts["heldout"][:6]}


@pytest.fixture(scope="module")
def minilm_inputs(preprocessor, sentences):
    return {k: v.numpy() for k, v in preprocessor(tf.constant(sentences["heldout"])).items()}


@pytest.fixture(scope="module")
def minilm_saved_model(minilm, preprocessor, minilm_inputs, tmp_path_factory):
    path = tmp_path_factory.mktemp("minilm") / "saved_model"
    report = export.saved_model(minilm, str(path), preprocessor=preprocessor, sample_inputs=minilm_inputs)
    return path, report


def test_minilm_saved_model_parity_on_both_signatures(minilm_saved_model):
    _, report = minilm_saved_model
    for name in ("sequence_output", "pooled_output", "strings/sentence_embedding",
                 "string_pairs/sequence_output", "strings/sequence_output"):
        assert report.outputs[name].max_abs <= 1e-4, report


def test_minilm_saved_model_serves_without_tfreparam(minilm, preprocessor, minilm_saved_model, sentences,
                                                     minilm_inputs, tmp_path):
    path, _ = minilm_saved_model
    texts = np.array(sentences["heldout"][:3], dtype=object)
    feeds = {
        "serving_default": minilm_inputs,
        "strings": {"text": texts},
        "string_pairs": {"text_a": texts[:2], "text_b": texts[1:3]},
    }
    served, child = serve_without_project(path, feeds, tmp_path, strings=True)
    assert child["blocked"] == {"tfreparam": True, "bert": True}
    assert child["modules"] == []
    assert {"serving_default", "token_ids", "strings", "string_pairs"} <= set(child["signatures"])

    expected = model_io.run_keras(minilm, minilm_inputs)
    np.testing.assert_allclose(served["serving_default/sequence_output"], expected["sequence_output"], atol=1e-4)
    # Strings: the child's in-graph tokenizer + encoder against Keras on this process's tokenization.
    single = {k: v.numpy() for k, v in preprocessor(tf.constant(list(texts))).items()}
    hidden = model_io.run_keras(minilm, single)["sequence_output"]
    mask = single["input_mask"][..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(served["strings/sentence_embedding"], pooled, atol=1e-4)
    pairs = {k: v.numpy() for k, v in preprocessor([tf.constant(list(texts[:2])), tf.constant(list(texts[1:3]))]).items()}
    np.testing.assert_allclose(served["string_pairs/pooled_output"],
                               model_io.run_keras(minilm, pairs)["pooled_output"], atol=1e-4)


@pytest.mark.parametrize("mode", ["fp32", "fp16", "dynamic"])
def test_minilm_tflite(mode, minilm, minilm_inputs, tmp_path):
    path = tmp_path / f"minilm_{mode}.tflite"
    report = export.tflite(minilm, str(path), mode=mode, seq_length=SEQ, sample_inputs=minilm_inputs)
    assert report.passed, report
    if mode in ("fp32", "fp16"):
        assert report.outputs["sequence_output"].max_abs <= (1e-4 if mode == "fp32" else 1e-2)
    else:
        assert report.outputs["sentence_embedding"].cosine_min >= 0.99
    ops = op_names(path.read_bytes())
    assert not [op for op in ops if op.startswith(("Flex", "CUSTOM"))], ops
    if mode == "dynamic":
        # Quantized weights: int8 buffers hold nearly all of the file's constant bytes.
        buffers = weight_buffers(path.read_bytes())
        int8_bytes = sum(b.nbytes for b in buffers if b.dtype == np.int8)
        assert int8_bytes > 0.9 * sum(b.nbytes for b in buffers)


def test_minilm_full_integer_int8_is_refused_by_its_parity_check(minilm, preprocessor, sentences, minilm_inputs,
                                                                  tmp_path):
    """Known limit: per-tensor int8 activations lose MiniLM (outlier activations; cosine far below 0.99).

    The exporter must say so rather than hand out the file as if it were fine.
    The converted file itself is full-integer and builtin-only.
    """
    representative = export.representative_text_batches(preprocessor, sentences["calibration"])
    path = tmp_path / "minilm_int8.tflite"
    with pytest.raises(export.ParityError, match=r"sentence_embedding: cosine 0\.\d+ < 0\.99"):
        export.tflite(minilm, str(path), mode="int8", seq_length=SEQ, sample_inputs=minilm_inputs,
                      representative_data=representative)
    ops = op_names(path.read_bytes())
    assert not [op for op in ops if op.startswith(("Flex", "CUSTOM"))], ops
    buffers = weight_buffers(path.read_bytes())
    assert sum(b.nbytes for b in buffers if b.dtype == np.int8) > 0.9 * sum(b.nbytes for b in buffers)


def test_minilm_int16x8_is_fully_integer_and_faithful(minilm, preprocessor, sentences, minilm_inputs, tmp_path):
    """16-bit activations hold the outliers int8 cannot: fully integer, cosine >= 0.99 (measured 0.998)."""
    representative = export.representative_text_batches(preprocessor, sentences["calibration"])
    path = tmp_path / "minilm_int16x8.tflite"
    report = export.tflite(minilm, str(path), mode="int16x8", seq_length=SEQ, sample_inputs=minilm_inputs,
                           representative_data=representative)
    assert report.passed, report
    assert report.outputs["sentence_embedding"].cosine_min >= 0.99
    flatbuffer = path.read_bytes()
    # The int32 attention mask's cast to float is the only op touching float32.
    assert float_ops(flatbuffer) == {"CAST": 1}
    assert "SQUARED_DIFFERENCE" not in op_names(flatbuffer)


def test_minilm_onnx(minilm, minilm_inputs, tmp_path):
    path = tmp_path / "minilm.onnx"
    child = subprocess.run([sys.executable, "-m", "tools.export", "--model=minilm", "--format=onnx", f"--out={path}",
                            f"--seq_length={SEQ}", "--parity_sentences=6", "--repeats=1"],
                           cwd=pathlib.Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=900)
    assert child.returncode == 0, child.stderr[-4000:]
    report = json.loads(next(line for line in child.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert report["passed"] and report["outputs"]["sequence_output"]["max_abs"] <= 1e-4, report
    # Against this process's Keras MiniLM on other sentences.
    np.testing.assert_allclose(export.run_artifact(str(path), minilm_inputs)["sequence_output"],
                               model_io.run_keras(minilm, minilm_inputs)["sequence_output"], atol=1e-4)
    # Dynamic axes: another batch size and sequence length on the same file.
    shorter = {k: v[:2, :20] for k, v in minilm_inputs.items()}
    np.testing.assert_allclose(export.run_artifact(str(path), shorter)["sequence_output"],
                               model_io.run_keras(minilm, shorter)["sequence_output"], atol=1e-4)
