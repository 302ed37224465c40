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
def minilm(minilm_checkpoint):
    return minilm_checkpoint  # `bert.load_hf("minilm")`, loaded once per worker (tests/conftest.py)


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


def test_wrong_config_field_is_named(google_prefix, minilm):
    config = minilm.config
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


# -- Hugging Face BertForSequenceClassification directories (issue 15) --------------------------


def _two_block_tensors():
    tensors = load_file(f"{bert.minilm_path()}/model.safetensors")
    return {k: v for k, v in tensors.items() if not any(f"layer.{i}." in k for i in range(2, 12))}


def _write_hf(directory, tensors, **config_changes):
    directory.mkdir()
    with open(f"{bert.minilm_path()}/config.json") as f:
        config = json.load(f)
    config.update(num_hidden_layers=2, **config_changes)
    (directory / "config.json").write_text(json.dumps(config))
    shutil.copy(f"{bert.minilm_path()}/vocab.txt", directory / "vocab.txt")
    save_file(tensors, str(directory / "model.safetensors"))
    return str(directory)


@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory):
    """A two-block MiniLM as BertForSequenceClassification (HF names), random pooler and 3-way classifier."""
    rng = np.random.default_rng(1)
    encoder = _two_block_tensors()
    head = {"pooler.dense.weight": (0.05 * rng.standard_normal((384, 384))).astype(np.float32),
            "pooler.dense.bias": (0.1 * rng.standard_normal(384)).astype(np.float32),
            "classifier.weight": rng.standard_normal((3, 384)).astype(np.float32),
            "classifier.bias": rng.standard_normal(3).astype(np.float32)}
    tensors = {f"bert.{k}": v for k, v in encoder.items() if not k.startswith("pooler.")}
    tensors.update({f"bert.{k}": v for k, v in head.items() if k.startswith("pooler.")})
    tensors.update({k: v for k, v in head.items() if k.startswith("classifier.")})
    root = tmp_path_factory.mktemp("hf_classifier")
    path = _write_hf(root / "classifier", tensors, architectures=["BertForSequenceClassification"],
                     id2label={"0": "neg", "1": "neutral", "2": "pos"}, label2id={"neg": 0, "neutral": 1, "pos": 2})
    encoder_path = _write_hf(root / "encoder", encoder)
    return path, encoder_path, head


def test_hf_classifier_logits_equal_a_numpy_pooler_and_classifier(hf_classifier):
    path, encoder_path, head = hf_classifier
    model = bert.load_hf(path, head="classifier").model
    assert model.name == "bert_classifier" and model.output.shape[-1] == 3
    assert model.get_layer("classifier/dropout").rate == pytest.approx(0.1)  # hidden_dropout_prob
    ids = np.array([[101, 7592, 2088, 1010, 2023, 2003, 102, 0, 0], [101, 2023, 102, 0, 0, 0, 0, 0, 0]], "int32")
    inputs = [ids, (ids > 0).astype("int32"), np.zeros_like(ids)]
    # Our encoder alone (plain HF names, no classifier) gives the [CLS] state; the head is numpy, HF's formula:
    # logits = classifier(dropout(tanh(pooler(h[CLS])))) with dropout off at inference.
    cls = bert.load_hf(encoder_path).model(inputs)["sequence_output"].numpy()[:, 0].astype(np.float64)
    pooled = np.tanh(cls @ head["pooler.dense.weight"].T.astype(np.float64) + head["pooler.dense.bias"])
    expected = pooled @ head["classifier.weight"].T.astype(np.float64) + head["classifier.bias"]
    np.testing.assert_allclose(model(inputs, training=False).numpy(), expected, atol=2e-4, rtol=1e-4)


def test_hf_classifier_mismatches_are_reported_in_one_line(hf_classifier, tmp_path):
    path, encoder_path, _ = hf_classifier
    # id2label names 2 classes, classifier.weight has 3 rows.
    wrong = tmp_path / "wrong"
    shutil.copytree(path, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config.update(id2label={"0": "neg", "1": "pos"}, label2id={"neg": 0, "pos": 1})
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        bert.load_hf(str(wrong), head="classifier")
    message = str(error.value)
    assert "mis-shaped tensors: ['classifier.weight': checkpoint (3, 384), model (2, 384)" in message
    assert "Likely cause: its config.json says num_labels=2 (its id2label) but the checkpoint's classifier has 3 " \
           "outputs" in message
    assert "\n" not in message and len(message) < 600, message
    # num_labels and id2label that disagree.
    config.update(num_labels=5)
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"num_labels=5 but id2label names 2 classes"):
        bert.load_hf(str(wrong), head="classifier")
    # A classifier checkpoint read as an encoder names the option to use.
    with pytest.raises(ValueError, match=r"unexpected tensors: \['classifier.bias', 'classifier.weight'\]\. It is a "
                                         r"BertForSequenceClassification checkpoint: load it with head='classifier'"):
        bert.load_hf(path)
    assert bert.load_hf(path, strict=False).model.name == "bert_encoder"
    # An encoder read as a classifier: no classifier tensors.
    with pytest.raises(ValueError, match=r"missing tensors: \['classifier.weight', 'classifier.bias'\]\. It has no "
                                         r"classifier\.\* tensors"):
        bert.load_hf(encoder_path, head="classifier")
    assert bert.load_hf(encoder_path, head="classifier", strict=False).fresh_heads == ["classifier"]
    with pytest.raises(ValueError, match=r"head must be None \(the encoder\) or one of \['classifier'\]"):
        bert.load_hf(path, head="regression")
