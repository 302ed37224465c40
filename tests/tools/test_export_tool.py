"""tools/export.py as a user runs it: parity report, file size and latency on stdout."""

import json
import subprocess
import sys

import pytest

import tfreparam as tr
from bert.config import BertConfig
from bert.encoder import build_encoder


def _run(*args):
    return subprocess.run([sys.executable, "-m", "tools.export", *args], capture_output=True, text=True, timeout=300)


def _result(stdout):
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def tiny_bert_file(tmp_path_factory):
    """A factorized tiny BERT with the MiniLM vocabulary, saved as .keras (so the tool tokenizes real text)."""
    encoder = build_encoder(BertConfig.named("tiny"), layer_policy={r"layer_\d+/ffn/.*": tr.LowRank(rank=16)})
    path = tmp_path_factory.mktemp("tool") / "tiny_bert.keras"
    encoder.save(path)
    return path


def test_int8_tflite_of_a_saved_bert(tiny_bert_file, tmp_path):
    out = tmp_path / "tiny_int8.tflite"
    result = _run(f"--model={tiny_bert_file}", "--format=tflite", "--mode=int8", f"--out={out}", "--seq_length=16",
                  "--parity_sentences=4", "--calibration_sentences=16", "--repeats=3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parity of tflite" in result.stdout and "PASS" in result.stdout
    assert "latency (LiteRT, batch 1, input shape (16,))" in result.stdout
    summary = _result(result.stdout)
    assert summary["bytes"] == out.stat().st_size
    assert summary["passed"] and summary["outputs"]["sentence_embedding"]["cosine_min"] >= 0.99
    assert summary["latency"]["median_ms"] > 0


def test_usage_errors(tmp_path):
    result = _run("--model=minilm", "--format=onnx", "--mode=int8", f"--out={tmp_path / 'm.onnx'}")
    assert result.returncode != 0
    assert "--mode=int8 is a TFLite mode; onnx exports are fp32" in result.stderr
    result = _run(f"--model={tmp_path / 'nope.keras'}", f"--out={tmp_path / 'm.tflite'}")
    assert result.returncode != 0
    assert "No model at" in result.stderr


def test_sequence_longer_than_the_models_positions_is_a_usage_error(tiny_bert_file, tmp_path):
    result = _run(f"--model={tiny_bert_file}", f"--out={tmp_path / 'm.tflite'}", "--seq_length=1000")
    assert result.returncode != 0
    assert "--seq_length: seq_length=1000 exceeds the model's max_position_embeddings=512" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.tflite").exists()
