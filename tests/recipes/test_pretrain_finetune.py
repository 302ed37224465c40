"""`recipes.pretrain` and `recipes.finetune` smoke runs on tiny models, their metrics and flag errors."""

import json
import os

import numpy as np
import pytest
from absl import app

from recipes import finetune, optim, pretrain, task_model

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "pretraining_sample.txt")


def _parse(module, *argv):
    module.FLAGS.unparse_flags()
    module.FLAGS([module.__name__, *argv])
    return module.check_flags(module.FLAGS)


def test_pretrain_writes_checkpoints_backup_and_logs(tmp_path):
    settings = _parse(pretrain, f"--train_files={SAMPLE}", "--config=tiny", "--seq_length=32",
                      "--max_predictions=5", "--batch_size=4", "--steps=2", "--steps_per_epoch=1",
                      f"--model_dir={tmp_path}")
    metrics = pretrain.run(settings)
    assert metrics["steps"] == 2 and np.isfinite(metrics["loss"])
    assert 0.0 <= metrics["mlm_accuracy"] <= 1.0
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["epoch_0001.weights.h5", "epoch_0002.weights.h5"]
    assert os.path.isdir(tmp_path / "logs") and (tmp_path / "final.weights.h5").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["hidden_size"] == 128


@pytest.mark.parametrize("argv, replicas, dtypes", [
    (["--unit_scaling"], 1, ["float32"]),
    (["--strategy=mirrored", "--precision=mixed_bfloat16", "--optimizer=lamb"], 1, ["bfloat16"]),
    (["--jit_compile", "--precision=mixed_float16"], 1, ["float16"]),
])
def test_pretrain_scale_flags(argv, replicas, dtypes, tmp_path):
    """--unit_scaling / --strategy / --precision / --optimizer / --jit_compile reach the model and train."""
    settings = _parse(pretrain, f"--train_files={SAMPLE}", "--config=tiny", "--seq_length=32",
                      "--max_predictions=5", "--batch_size=4", "--steps=2", "--steps_per_epoch=2",
                      f"--model_dir={tmp_path}", *argv)
    metrics = pretrain.run(settings)
    assert np.isfinite(metrics["loss"]), metrics
    assert metrics["replicas"] == replicas
    # Under a mixed policy every layer with weights computes in 16 bits (their variables stay float32).
    assert metrics["compute_dtypes"] == dtypes
    assert metrics["config"]["unit_scaled"] == ("--unit_scaling" in argv)


@pytest.mark.parametrize("argv, message", [
    ([], "--train_files is required"),
    ([f"--train_files={SAMPLE}", "--config=gigantic"], "Unknown BERT size 'gigantic'"),
    ([f"--train_files={SAMPLE}", "--config=/no/such.json"], "does not exist"),
    ([f"--train_files={SAMPLE}", "--max_predictions=40", "--seq_length=32"], "must be below --seq_length"),
])
def test_pretrain_bad_flags(argv, message):
    with pytest.raises((app.UsageError, ValueError), match=message.replace("(", r"\(")):
        _parse(pretrain, *argv)


def test_warmup_linear_decay_schedule_values():
    schedule = optim.WarmupLinearDecay(1.0, total_steps=10, warmup_steps=4)
    values = [float(schedule(step)) for step in range(12)]
    np.testing.assert_allclose(values, [0.25, 0.5, 0.75, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0, 0.0],
                               atol=1e-6)


def _numpy_lamb(w, grads, lr, b1=0.9, b2=0.999, eps=1e-6, decay=0.01):
    """LAMB (You et al. 2020, Algorithm 2) with the per-tensor trust ratio ||w|| / ||update||."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        update = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) + decay * w
        w = w - lr * np.linalg.norm(w) / np.linalg.norm(update) * update
    return w


@pytest.mark.parametrize("sparse", [False, True])
def test_lamb_matches_numpy(sparse):
    """Two steps against a numpy LAMB; embedding-style IndexedSlices gradients act like their dense form."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(6, 3))
    grads = [rng.normal(size=(6, 3)) for _ in range(2)]
    if sparse:  # rows 1 and 4 only
        for g in grads:
            g[[0, 2, 3, 5]] = 0.0
    variable = tf.Variable(w0.astype("float32"))
    optimizer = optim.Lamb(learning_rate=0.1, weight_decay_rate=0.01)
    for g in grads:
        gradient = tf.constant(g.astype("float32"))
        if sparse:
            rows = tf.constant([1, 4])
            gradient = tf.IndexedSlices(tf.gather(gradient, rows), rows, tf.constant([6, 3]))
        optimizer.apply_gradients([(gradient, variable)])
    np.testing.assert_allclose(variable.numpy(), _numpy_lamb(w0, grads, lr=0.1), rtol=1e-5, atol=1e-6)


def test_weight_decay_skips_layer_norm_and_bias():
    import tensorflow as tf
    import tf_keras as keras

    for name in ("adamw", "lamb"):
        inputs = keras.Input((3,))
        x = keras.layers.Dense(3, name="dense")(inputs)
        model = keras.Model(inputs, keras.layers.LayerNormalization(name="layer_norm")(x))
        optimizer = optim.bert_optimizer(name, 0.1, 10, 0, weight_decay=0.5)
        before = {v.name: v.numpy().copy() for v in model.trainable_variables}
        zeros = [tf.zeros_like(v) for v in model.trainable_variables]
        optimizer.apply_gradients(zip(zeros, model.trainable_variables))
        for v in model.trainable_variables:  # zero gradients: only weight decay can move a variable
            moved = not np.allclose(v.numpy(), before[v.name])
            assert moved == ("kernel" in v.name), (name, v.name)


def test_f1_and_accuracy_match_hand_counts():
    labels = np.array([1, 1, 0, 0, 1, 0])
    predicted = np.array([1, 0, 0, 1, 1, 0])
    # tp=2, fp=1, fn=1 -> F1 = 4 / 6.
    assert finetune.f1_score(labels, predicted, 2) == pytest.approx(2 / 3)
    three = finetune.f1_score(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2]), 3)
    assert three == pytest.approx(np.mean([1.0, 0.0, 0.8]))


@pytest.fixture
def pairs(tmp_path):
    rows = [{"premise": f"The cat number {i} sat on the mat.", "hypothesis": "A cat sat." if i % 2 else "Dogs bark.",
             "label": "yes" if i % 2 else "no"} for i in range(12)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_finetune_on_sentence_pairs_from_a_compressed_or_pretrained_encoder(two_block_minilm, pairs, tmp_path):
    settings = _parse(finetune, f"--train_file={pairs}", "--text_fields=premise,hypothesis", "--seq_length=24",
                      "--batch_size=4", "--epochs=1", f"--model={two_block_minilm}", f"--vocab={two_block_minilm}",
                      f"--output_dir={tmp_path / 'out'}")
    assert settings["label_names"] == ["no", "yes"] and len(settings["dev"]) == 1
    metrics = finetune.run(settings)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["eval_examples"] == 1
    assert 0.0 <= metrics["macro_f1"] <= 1.0
    loaded = task_model.load(str(tmp_path / "out"))  # a task-model directory that predicts pairs
    assert loaded.text_fields == ["premise", "hypothesis"] and loaded.label_names == ["no", "yes"]
    assert loaded.predict([settings["dev"][0]])[0] in ("no", "yes")


def test_finetune_bad_files(tmp_path, pairs):
    csv = tmp_path / "train.csv"
    csv.write_text("text,label\nhello there,1\nhi again,1\nand once more,1\n")
    with pytest.raises(app.UsageError, match=r"has no column\(s\) \['sentence'\]"):
        _parse(finetune, f"--train_file={csv}")
    with pytest.raises(app.UsageError, match="use a .csv, .tsv or .jsonl file"):
        _parse(finetune, f"--train_file={tmp_path / 'x.parquet'}".replace("x.parquet", "train.csv") + "x")
    with pytest.raises(app.UsageError, match="at least two labels"):
        _parse(finetune, f"--train_file={csv}", "--text_fields=text")
    with pytest.raises(app.UsageError, match="Give --train_file"):
        _parse(finetune)
