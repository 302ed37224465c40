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
