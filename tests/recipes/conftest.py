"""Shared fixtures of the recipe tests: a two-block MiniLM checkpoint (real weights, a third of the work)."""

import json
import shutil

import pytest
from safetensors.numpy import load_file, save_file

import bert


@pytest.fixture(scope="session")
def two_block_minilm(tmp_path_factory):
    source = bert.minilm_path()
    target = tmp_path_factory.mktemp("minilm2")
    tensors = load_file(f"{source}/model.safetensors")
    keep = {k: v for k, v in tensors.items() if not any(f"layer.{i}." in k for i in range(2, 12))}
    save_file(keep, str(target / "model.safetensors"))
    with open(f"{source}/config.json") as f:
        config = json.load(f)
    config["num_hidden_layers"] = 2
    (target / "config.json").write_text(json.dumps(config))
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        try:
            shutil.copy(f"{source}/{name}", target / name)
        except FileNotFoundError:
            pass
    return str(target)


TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 64, "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
        "model_type": "bert", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A random 2-block BERT (hidden 32, 4 heads) with MiniLM's vocabulary, as a Hugging Face directory."""
    import numpy as np

    source = bert.minilm_path()
    target = tmp_path_factory.mktemp("tiny_bert")
    shutil.copy(f"{source}/vocab.txt", target / "vocab.txt")
    with open(f"{source}/vocab.txt") as f:
        vocab = sum(1 for _ in f)
    config = dict(TINY, vocab_size=vocab)
    (target / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    h, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape):
        return (0.2 * rng.standard_normal(shape)).astype("float32")

    tensors = {"embeddings.word_embeddings.weight": normal(vocab, h),
               "embeddings.position_embeddings.weight": normal(config["max_position_embeddings"], h),
               "embeddings.token_type_embeddings.weight": normal(2, h),
               "embeddings.LayerNorm.weight": np.ones(h, "float32"), "embeddings.LayerNorm.bias": np.zeros(h, "float32"),
               "pooler.dense.weight": normal(h, h), "pooler.dense.bias": np.zeros(h, "float32")}
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        for name, (out, inp) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                                 "attention.self.value": (h, h), "attention.output.dense": (h, h),
                                 "intermediate.dense": (inner, h), "output.dense": (h, inner)}.items():
            tensors[f"{p}.{name}.weight"] = normal(out, inp) / np.sqrt(inp / 4)
            tensors[f"{p}.{name}.bias"] = normal(out) * 0.1
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            tensors[f"{p}.{name}.weight"] = np.ones(h, "float32")
            tensors[f"{p}.{name}.bias"] = np.zeros(h, "float32")
    save_file(tensors, str(target / "model.safetensors"))
    return str(target)
