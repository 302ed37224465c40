"""Checkpoint loading: Google TF1 naming, broken checkpoints, heads, policies."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file, save_file

import bert
import tfreparam as tr

TOKENS = [np.array([[101, 7592, 2088, 1010, 2023, 2003, 1037, 3231, 102, 0]], "int32")]


def _inputs():
    ids = TOKENS[0]
    return [ids, (ids > 0).astype("int32"), np.zeros_like(ids)]


@pytest.fixture(scope="module")
def minilm():
    return bert.load_hf("minilm")


def _google_names(hf_name):
    """HF tensor name -> the original Google BERT name, written out independently."""
    n = hf_name
    replacements = [
        ("embeddings.word_embeddings.weight", "bert/embeddings/word_embeddings"),
        ("embeddings.position_embeddings.weight", "bert/embeddings/position_embeddings"),
        ("embeddings.token_type_embeddings.weight", "bert/embeddings/token_type_embeddings"),
    ]
    for old, new in replacements:
        if n == old:
            return new, False
    n = n.replace("encoder.layer.", "bert/encoder/layer_").replace("pooler.", "bert/pooler/")
    n = n.replace("embeddings.LayerNorm", "bert/embeddings/LayerNorm")
    n = n.replace(".", "/")
    transpose = n.endswith("/weight") and "LayerNorm" not in n
    n = n.replace("LayerNorm/weight", "LayerNorm/gamma").replace("LayerNorm/bias", "LayerNorm/beta")
    n = n.replace("/weight", "/kernel")
    return n, transpose


def _write_google_checkpoint(prefix):
    tensors = load_file(f"{bert.minilm_path()}/model.safetensors")
    with tf.Graph().as_default():
        for name, value in tensors.items():
            if name == "embeddings.position_ids":
                continue
            google, transpose = _google_names(name)
            tf.compat.v1.get_variable(google, initializer=value.T if transpose else value)
        tf.compat.v1.get_variable("global_step", initializer=np.int64(1000))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return saver.save(session, prefix)


@pytest.fixture(scope="module")
def google_prefix(tmp_path_factory):
    return _write_google_checkpoint(str(tmp_path_factory.mktemp("google") / "bert_model.ckpt"))


def test_google_checkpoint_equals_hf_loading(minilm, google_prefix):
    prefix = google_prefix
    names = {name for name, _ in tf.train.list_variables(prefix)}
    assert "bert/encoder/layer_3/attention/self/query/kernel" in names
    loaded = bert.load_google_checkpoint(prefix, minilm.config)
    np.testing.assert_array_equal(
        loaded.model(_inputs())["sequence_output"].numpy(), minilm.model(_inputs())["sequence_output"].numpy()
    )


def test_google_checkpoint_with_wrong_config(minilm, google_prefix, tmp_path):
    prefix = google_prefix
    with pytest.raises(ValueError, match=r"mis-shaped tensors: \['bert/encoder/layer_0/intermediate/dense/kernel"):
        bert.load_google_checkpoint(prefix, minilm.config.replace(intermediate_size=1024))
    with pytest.raises(ValueError, match=r"missing tensors: \['bert/encoder/layer_6/"):
        bert.load_google_checkpoint(prefix, minilm.config.replace(num_layers=7))
    with pytest.raises(ValueError, match="Cannot read the TF checkpoint"):
        bert.load_google_checkpoint(str(tmp_path / "nothing"), minilm.config)


def _copy_minilm(tmp_path, edit):
    target = tmp_path / "ckpt"
    target.mkdir()
    shutil.copy(f"{bert.minilm_path()}/config.json", target / "config.json")
    tensors = load_file(f"{bert.minilm_path()}/model.safetensors")
    edit(tensors)
    save_file(tensors, str(target / "model.safetensors"))
    return str(target)


def test_missing_and_extra_tensors_are_listed(tmp_path):
    path = _copy_minilm(tmp_path, lambda t: (t.pop("encoder.layer.2.output.dense.bias"),
                                             t.update({"extra.thing": np.zeros(3, np.float32)})))
    with pytest.raises(ValueError) as error:
        bert.load_hf(path)
    message = str(error.value)
    assert "missing tensors: ['encoder.layer.2.output.dense.bias']" in message
    assert "unexpected tensors: ['extra.thing']" in message


def test_a_config_that_disagrees_with_the_weights_gets_a_short_diagnosis(tmp_path):
    path = _copy_minilm(tmp_path, lambda t: None)
    with open(f"{path}/config.json") as f:
        config = json.load(f)
    with open(f"{path}/config.json", "w") as f:
        json.dump({**config, "hidden_size": 256, "num_attention_heads": 8}, f)
    with pytest.raises(ValueError) as error:
        bert.load_hf(path)
    message = str(error.value)
    # Every tensor with a hidden-width axis: 3 embedding tables + LayerNorm (2) + pooler (2), and per layer
    # q/k/v/output (8), the FFN's intermediate kernel, output kernel and bias (3), two LayerNorms (4): 97.
    assert "mis-shaped tensors: ['embeddings.word_embeddings.weight': checkpoint (30522, 384), model (30522, 256)" in message
    assert "(97 in all)" in message
    assert "Likely cause: its config.json says hidden_size=256 but the checkpoint's tensors are 384 wide" in message
    assert "strict=False" not in message and "\n" not in message and len(message) < 600, message


def test_wrong_config_field_is_named(google_prefix):
    config = bert.load_hf("minilm").config
    with pytest.raises(ValueError, match=r"\(18 in all\)\. Likely cause: the BertConfig says intermediate_size=1024 "
                                         r"but the checkpoint's tensors are 1536 wide"):
        bert.load_google_checkpoint(google_prefix, config.replace(intermediate_size=1024))
    with pytest.raises(ValueError, match="Likely cause: the BertConfig says num_layers=7 but the checkpoint has 6 layers"):
        bert.load_google_checkpoint(google_prefix, config.replace(num_layers=7))
    with pytest.raises(ValueError, match=r"missing tensors: \['cls\..*\. To initialise the absent pretraining "
                                         r"heads and ignore extra tensors, pass strict=False\.$"):
        bert.load_hf("minilm", with_heads=True)


def test_heads_absent_from_checkpoint(minilm):
    with pytest.raises(ValueError, match=r"missing tensors: \['cls.predictions.transform.dense.weight"):
        bert.load_hf("minilm", with_heads=True)
    loaded = bert.load_hf("minilm", with_heads=True, strict=False)
    assert loaded.fresh_heads == ["mlm", "nsp"]
    # The encoder part is still the pretrained one.
    np.testing.assert_array_equal(
        loaded.model.get_layer("layer_0/attention/query").kernel.numpy(),
        minilm.model.get_layer("layer_0/attention/query").kernel.numpy(),
    )


def test_heads_loaded_when_present(tmp_path):
    rng = np.random.default_rng(0)
    heads = {
        "cls.predictions.transform.dense.weight": rng.normal(size=(384, 384)).astype(np.float32),
        "cls.predictions.transform.dense.bias": rng.normal(size=384).astype(np.float32),
        "cls.predictions.transform.LayerNorm.weight": np.ones(384, np.float32),
        "cls.predictions.transform.LayerNorm.bias": np.zeros(384, np.float32),
        "cls.predictions.bias": rng.normal(size=30522).astype(np.float32),
        "cls.seq_relationship.weight": rng.normal(size=(2, 384)).astype(np.float32),
        "cls.seq_relationship.bias": np.array([0.5, -0.5], np.float32),
    }
    path = _copy_minilm(tmp_path, lambda t: t.update(heads))
    loaded = bert.load_hf(path, with_heads=True)
    assert loaded.fresh_heads == []
    np.testing.assert_array_equal(loaded.model.get_layer("nsp/dense").kernel.numpy(), heads["cls.seq_relationship.weight"].T)
    np.testing.assert_array_equal(loaded.model.get_layer("mlm/output_bias").bias.numpy(), heads["cls.predictions.bias"])


def test_load_with_policy_reparameterizes_pretrained_weights(minilm):
    loaded = bert.load_hf("minilm", layer_policy={r"layer_\d+/ffn/.*": tr.LowRank(rank=384)})
    assert isinstance(loaded.model.get_layer("layer_0/ffn/intermediate"), tr.LowRankDense)
    # Rank 384 = min(in, out) of every FFN projection: exact.
    np.testing.assert_allclose(
        loaded.model(_inputs())["sequence_output"].numpy(),
        minilm.model(_inputs())["sequence_output"].numpy(), atol=1e-4,
    )


def test_config_mismatch_in_hf_directory(tmp_path):
    path = _copy_minilm(tmp_path, lambda t: None)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["hidden_size"] = 768
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mis-shaped tensors"):
        bert.load_hf(path)
