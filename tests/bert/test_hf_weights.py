"""Reading Hugging Face checkpoints: the bundled MiniLM and broken directories."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from bert import read_hf_checkpoint


def test_minilm_projection_kernels_are_transposed_linear_weights():
    checkpoint = read_hf_checkpoint("minilm")
    kernels = checkpoint.projection_kernels()
    assert len(kernels) == 6 * 6
    kernel, bias = kernels["layer_0/ffn/intermediate"]
    assert kernel.shape == (384, 1536) and bias.shape == (1536,)
    weight = checkpoint.tensors["encoder.layer.0.intermediate.dense.weight"]
    np.testing.assert_array_equal(kernel, weight.T)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_hf_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=r"lacks \['config.json', 'model.safetensors'\]"):
        read_hf_checkpoint(str(tmp_path))


def test_corrupt_safetensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 1}))
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="could not be read .*corrupt"):
        read_hf_checkpoint(str(tmp_path))


def test_checkpoint_without_bert_tensors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 1}))
    save_file({"classifier.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="no tensor 'encoder.layer.0.attention.self.query.weight'; is it a BERT"):
        read_hf_checkpoint(str(tmp_path)).projection_kernels()
