"""`recipes.task_model`: the classifier directory `recipes.finetune` writes, loaded back, and what it refuses."""

import json
import os
import shutil

import numpy as np
import pytest

import bert
from recipes import finetune, task_model

TINY = bert.BertConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=64)
LABELS = ["animal", "food", "tool"]
WORDS = {"animal": ["cat", "dog", "horse", "sheep"], "food": ["bread", "soup", "apple", "rice"],
         "tool": ["hammer", "saw", "drill", "wrench"]}


def _examples(count, offset=0):
    rows = []
    for i in range(offset, offset + count):
        label = LABELS[i % 3]
        word = WORDS[label][i % 4]
        rows.append((f"the {word} " + "and more words " * (i % 5), label))  # lengths 2..12 words
    return rows


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    path = str(tmp_path_factory.mktemp("tiny") / "encoder.keras")
    bert.build_encoder(TINY).save(path)
    return path


@pytest.fixture(scope="module")
def preprocessor():
    return bert.Preprocessor.from_pretrained("minilm", seq_length=32)


@pytest.fixture(scope="module")
def finetuned(tiny_encoder, tmp_path_factory):
    """One tiny fine-tune: its settings, returned metrics and output directory."""
    data = tmp_path_factory.mktemp("data")
    for name, rows in (("train.csv", _examples(30)), ("eval.csv", _examples(9, offset=30))):
        (data / name).write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))
    out = str(tmp_path_factory.mktemp("run") / "task")
    finetune.FLAGS.unparse_flags()
    finetune.FLAGS(["finetune", f"--train_file={data / 'train.csv'}", f"--eval_file={data / 'eval.csv'}",
                    "--text_fields=text", f"--model={tiny_encoder}", "--vocab=minilm", "--seq_length=32",
                    "--batch_size=8", "--epochs=1", "--learning_rate=1e-3", f"--output_dir={out}"])
    settings = finetune.check_flags(finetune.FLAGS)
    return settings, finetune.run(settings), out


def _reference_logits(model, preprocessor, texts):
    """Every example padded to the full seq_length, one batch: no trimming, no reordering."""
    import tensorflow as tf

    return model(preprocessor(tf.constant(texts)), training=False).numpy()


def test_finetune_writes_a_task_model_directory(finetuned):
    settings, metrics, out = finetuned
    assert sorted(os.listdir(out)) == ["labels.json", "metrics.json", "model.keras", "preprocessor.json", "vocab.txt"]
    assert json.loads(open(os.path.join(out, "labels.json")).read()) == LABELS
    written = json.loads(open(os.path.join(out, "metrics.json")).read())
    assert written["eval_examples"] == 9 and written["train_examples"] == 30 and written["num_classes"] == 3
    assert set(written["seconds"]) == {"train", "eval", "total"} and written["seconds"]["total"] > 0
    assert written["accuracy"] == pytest.approx(metrics["accuracy"]) and 0.0 <= written["macro_f1"] <= 1.0
    assert written["f1"] == written["macro_f1"]  # more than two classes: F1 is macro F1
    settings_file = json.loads(open(os.path.join(out, "preprocessor.json")).read())
    assert settings_file["seq_length"] == 32 and settings_file["lower_case"] is True
    assert settings_file["vocab"] == "vocab.txt" and settings_file["text_fields"] == ["text"]
    assert open(os.path.join(out, "vocab.txt")).read().splitlines() == bert.load_vocab(
        os.path.join(bert.minilm_path(), "vocab.txt"))


def test_loaded_task_model_reproduces_the_eval_metrics(finetuned):
    settings, metrics, out = finetuned
    loaded = task_model.load(out)
    assert loaded.label_names == LABELS and loaded.seq_length == 32 and loaded.source == "keras"
    assert loaded.text_fields == ["text"] and loaded.metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    texts = [t[0] for t in settings["dev"]]
    reference = _reference_logits(loaded.model, loaded.preprocessor, texts)
    predicted = [LABELS.index(name) for name in loaded.predict(texts)]
    np.testing.assert_array_equal(predicted, np.argmax(reference, axis=-1))
    assert np.mean(np.array(predicted) == settings["dev_labels"]) == pytest.approx(metrics["accuracy"])


def test_save_and_load_give_the_in_memory_classifiers_logits(tiny_encoder, preprocessor, tmp_path):
    import tf_keras as keras

    keras.utils.set_random_seed(1)
    classifier = bert.build_classifier(keras.models.load_model(tiny_encoder, compile=False), num_classes=3)
    texts = [t for t, _ in _examples(11)]
    expected = _reference_logits(classifier, preprocessor, texts)
    task_model.save(str(tmp_path / "tm"), classifier, LABELS, preprocessor, text_fields=["text"])
    assert not (tmp_path / "tm" / "metrics.json").exists()
    loaded = task_model.load(str(tmp_path / "tm"))
    assert loaded.metrics is None
    # Batches of 4, each padded only to its longest example, in length order: the same logits.
    np.testing.assert_allclose(loaded.logits(texts, batch_size=4), expected, rtol=1e-5, atol=1e-5)
    settings = [{k: v for k, v in p.get_config().items() if k != "name"} for p in (loaded.preprocessor, preprocessor)]
    assert settings[0] == settings[1]


def test_macro_f1_and_binary_f1():
    labels, predicted = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0])
    metrics = task_model.classification_metrics(labels, predicted, 2)
    # class 1: tp=2, fp=1, fn=1 -> 2/3; class 0: tp=2, fp=1, fn=1 -> 2/3.
    assert metrics == pytest.approx({"accuracy": 4 / 6, "f1": 2 / 3, "macro_f1": 2 / 3})
    metrics = task_model.classification_metrics(np.array([0, 1, 2, 2, 3]), np.array([0, 2, 2, 2, 0]), 4)
    # F1: class 0 2/3 (tp 1, fp 1), class 1 0, class 2 0.8 (tp 2, fp 1), class 3 0 (never predicted).
    assert metrics["macro_f1"] == pytest.approx(np.mean([2 / 3, 0.0, 0.8, 0.0])) == metrics["f1"]
    assert metrics["accuracy"] == pytest.approx(3 / 5)


def _copy(source, target, drop=()):
    shutil.copytree(source, target)
    for name in drop:
        os.remove(os.path.join(target, name))
    return str(target)


def test_directories_that_are_not_task_models_are_refused(finetuned, tiny_encoder, preprocessor, tmp_path):
    _, _, out = finetuned
    with pytest.raises(ValueError, match=r"is not a task model: no such directory"):
        task_model.load(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"is not a task model: it has no model\.keras; .* holds nothing"):
        task_model.load(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"has no vocab\.txt"):
        task_model.load(_copy(out, tmp_path / "novocab", drop=["vocab.txt"]))
    # A plain encoder saved where the classifier belongs.
    encoder_dir = _copy(out, tmp_path / "encoder")
    shutil.copy(tiny_encoder, os.path.join(encoder_dir, "model.keras"))
    with pytest.raises(ValueError, match=r"is not a classifier: its model outputs \['pooled_output', "
                                         r"'sequence_output'\]"):
        task_model.load(encoder_dir)
    # Label names that do not match the logits.
    mismatch = _copy(out, tmp_path / "mismatch")
    with open(os.path.join(mismatch, "labels.json"), "w") as f:
        json.dump(["a", "b"], f)
    with pytest.raises(ValueError, match=r"2 label names but the model outputs 3 logits"):
        task_model.load(mismatch)
    with open(os.path.join(mismatch, "labels.json"), "w") as f:
        f.write("[not json")
    with pytest.raises(ValueError, match=r"labels\.json is not valid JSON"):
        task_model.load(mismatch)
    # A Hugging Face encoder directory (the bundled MiniLM) has no classifier.
    with pytest.raises(ValueError, match=r"is not a classifier: it is a Hugging Face encoder \(BertModel\)"):
        task_model.load(bert.minilm_path())
    # Saving refuses an encoder too.
    with pytest.raises(ValueError, match=r"is not a classifier"):
        import tf_keras as keras

        task_model.save(str(tmp_path / "never"), keras.models.load_model(tiny_encoder, compile=False), LABELS,
                        preprocessor)
    assert not (tmp_path / "never").exists()


def test_hugging_face_classifier_directories_load(two_block_minilm, tmp_path):
    """A BertForSequenceClassification directory: labels from id2label, weights via bert.load_hf(head=...)."""
    from safetensors.numpy import load_file, save_file

    tensors = {f"bert.{k}": v for k, v in load_file(os.path.join(two_block_minilm, "model.safetensors")).items()}
    rng = np.random.default_rng(0)
    tensors.update({"classifier.weight": rng.standard_normal((2, 384)).astype(np.float32),
                    "classifier.bias": np.array([0.5, -0.5], np.float32)})
    save_file(tensors, str(tmp_path / "model.safetensors"))
    config = json.loads(open(os.path.join(two_block_minilm, "config.json")).read())
    config.update(architectures=["BertForSequenceClassification"], id2label={"0": "neg", "1": "pos"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(os.path.join(two_block_minilm, "vocab.txt"), tmp_path / "vocab.txt")
    tm = task_model.load(str(tmp_path))
    assert tm.source == "hf" and tm.label_names == ["neg", "pos"] and tm.num_classes == 2
    texts = ["a quiet afternoon", "the parser rejects malformed input"]
    reference = bert.load_hf(str(tmp_path), head="classifier").model
    features = tm.features(texts)
    np.testing.assert_allclose(tm.logits(texts), reference(features, training=False).numpy(), atol=1e-5)
    assert tm.predict(texts) == [["neg", "pos"][i] for i in np.argmax(tm.logits(texts), axis=-1)]
