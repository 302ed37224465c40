"""The task path of `recipes.compress` (issue 15), end to end on a tiny classifier, and its bad-input refusals.

One run (module fixture) of `python -m recipes.compress --task_model=...` on 60 training and 30 eval WordNet
glosses; every figure it reports is recomputed here from the files it wrote, with ai_edge_litert, TensorFlow and
numpy, not with the recipe's own helpers.
"""

import csv
import json
import os

import numpy as np
import pytest
from absl import app

import bert
from recipes import compress
from tests.recipes import task_setup

ROLES = ("teacher_fp32", "teacher_int8", "student_fp32", "student_int8")
# A high learning rate moves the student away from the teacher, so that the four rows differ.
SMALL = ["--latency_rounds=5", "--batch_size=8", "--task_epochs=2", "--speedup_margin=0", "--learning_rate=3e-3"]
INTERCEPT, SLOPE = task_setup.FIXED_LATENCY


def _settings(*argv):
    compress.FLAGS.unparse_flags()
    compress.FLAGS(["compress", *argv])
    return compress.check_flags(compress.FLAGS)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return task_setup.write_task(str(tmp_path_factory.mktemp("task")))


@pytest.fixture(scope="module")
def finished(task, tmp_path_factory):
    report = str(tmp_path_factory.mktemp("task_report"))
    settings = _settings(f"--task_model={task['teacher']}", f"--train_files={task['train']}",
                         f"--eval_files={task['eval']}", "--text_fields=text", "--label_field=label",
                         "--target_speedup=1.5", f"--report_dir={report}", *SMALL)
    with pytest.MonkeyPatch.context() as patch:
        task_setup.fixed_latency(patch)
        metrics = compress.run(settings)
    return settings, metrics, report


# -- independent references ----------------------------------------------------------------------------------


def _eval_rows(task):
    with open(task["eval"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(task["teacher"], "labels.json")) as f:
        names = json.load(f)
    return [r["text"] for r in rows], np.array([names.index(r["label"]) for r in rows])


def _features(task, texts):
    from recipes import task_model

    return task_model.load(task["teacher"]).features(texts)  # padded to the teacher's 32 tokens


def _tflite(path, features):
    """Probabilities of a .tflite file, one example per call, through ai_edge_litert's signature runner."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    runner = interpreter.get_signature_runner()
    rows = [runner(**{k: v[i:i + 1].astype(np.int32) for k, v in features.items()})["probabilities"][0]
            for i in range(len(features["input_mask"]))]
    return np.array(rows, np.float64)


def _keras_probabilities(path, features):
    import tensorflow as tf
    import tf_keras as keras

    import bert  # noqa: F401  registers the BERT layers
    import tfreparam.layers  # noqa: F401

    logits = keras.models.load_model(path, compile=False)(features, training=False)
    return tf.nn.softmax(tf.cast(logits, tf.float64)).numpy()


def _accuracy_and_macro_f1(labels, predictions, classes):
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    tp = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(1), confusion.sum(0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(classes), where=tp > 0)
    return tp.sum() / len(labels), f1.mean()


def _files(report):
    export = os.path.join(report, "stages", "export")
    return {"teacher_fp32": os.path.join(export, "teacher_fp32_32.tflite"),
            "teacher_int8": os.path.join(export, "teacher_int8_32.tflite"),
            "student_fp32": os.path.join(report, "student_fp32.tflite"),
            "student_int8": os.path.join(report, "student_int8.tflite")}


# -- the run ----------------------------------------------------------------------------------------------------


def test_metrics_json_has_the_issue_keys(finished):
    _, metrics, report = finished
    with open(os.path.join(report, "metrics.json")) as f:
        stored = json.load(f)
    assert stored["task"] == metrics["task"]
    for key in ("accuracy", "macro_f1"):
        assert set(stored["task"][key]) == set(ROLES) and all(0 <= v <= 1 for v in stored["task"][key].values())
    assert set(stored["latency_ms"]) == set(ROLES) and all(v > 0 for v in stored["latency_ms"].values())
    # The issue's lengths (128, 64) that fit the 64 positions of the teacher; its own 32 is the eval length.
    assert list(stored["latency_ms_by_seq"]) == ["64"] and stored["latency_ms"] == stored["latency_ms_by_seq"]["64"]
    assert stored["seq_length"] == task_setup.SEQ_LENGTH
    sizes = {role: os.path.getsize(path) for role, path in _files(report).items()}
    assert stored["bytes"] == sizes
    assert sizes["student_int8"] < sizes["student_fp32"] and sizes["teacher_int8"] < sizes["teacher_fp32"]
    assert stored["data"]["train_examples"] == task_setup.TRAIN and stored["data"]["eval_examples"] == task_setup.EVAL


def test_accuracy_and_macro_f1_equal_a_recount_from_the_files(finished, task):
    _, metrics, report = finished
    texts, labels = _eval_rows(task)
    features = _features(task, texts)
    classes = len(task_setup.CLASSES)
    probabilities = {role: _tflite(path, features) for role, path in _files(report).items() if role.endswith("int8")}
    # The fp32 rows are the Keras models' (the teacher as given, the distilled student as saved).
    probabilities["teacher_fp32"] = _keras_probabilities(os.path.join(task["teacher"], "model.keras"), features)
    probabilities["student_fp32"] = _keras_probabilities(
        os.path.join(report, "stages", "distil", "student.keras"), features)
    for role in ROLES:
        predictions = np.argmax(probabilities[role], axis=-1)
        accuracy, macro_f1 = _accuracy_and_macro_f1(labels, predictions, classes)
        assert metrics["task"]["accuracy"][role] == pytest.approx(accuracy, abs=1e-12), role
        assert metrics["task"]["macro_f1"][role] == pytest.approx(macro_f1, abs=1e-12), role
    # The recount tells the rows apart: the teacher predicts more than one class, the student differs from it.
    assert len(set(np.argmax(probabilities["teacher_fp32"], axis=-1))) > 1
    assert np.any(np.argmax(probabilities["student_fp32"], -1) != np.argmax(probabilities["teacher_fp32"], -1))


def test_student_is_the_pruned_structure_and_its_fp32_file_is_the_keras_student(finished, task):
    settings, metrics, report = finished
    student = metrics["student"]
    # The least pruning predicted at 1.5x by the fixed line: 1 / (0.2 + 0.8 r) >= 1.5.
    assert student["predicted_speedup"] == pytest.approx(1 / (INTERCEPT + SLOPE * student["flops_ratio"]), rel=1e-4)
    assert student["predicted_speedup"] >= settings.target_speedup - 1e-6
    assert student["params"]["student"] < student["params"]["teacher"]
    texts, _ = _eval_rows(task)
    features = _features(task, texts)
    keras_probabilities = _keras_probabilities(os.path.join(report, "stages", "distil", "student.keras"), features)
    lite = _tflite(_files(report)["student_fp32"], features)
    np.testing.assert_allclose(lite, keras_probabilities, atol=1e-4)
    np.testing.assert_allclose(lite.sum(axis=-1), 1.0, atol=1e-5)


def test_saved_model_strings_signature_equals_the_token_ids_one(finished, task):
    import tensorflow as tf

    _, metrics, report = finished
    texts, _ = _eval_rows(task)
    texts = texts[:8]
    features = _features(task, texts)
    loaded = tf.saved_model.load(os.path.join(report, "saved_model"))
    from_strings = loaded.signatures["strings"](text=tf.constant(texts))["probabilities"].numpy()
    from_ids = loaded.signatures["token_ids"](**{k: tf.constant(v) for k, v in features.items()})["probabilities"]
    np.testing.assert_allclose(from_strings, from_ids.numpy(), atol=1e-6)
    keras_probabilities = _keras_probabilities(os.path.join(report, "stages", "distil", "student.keras"), features)
    np.testing.assert_allclose(from_strings, keras_probabilities, atol=1e-4)
    assert metrics["files"]["saved_model"] == os.path.join(report, "saved_model")


def test_report_has_the_four_rows(finished):
    _, metrics, report = finished
    text = open(os.path.join(report, "report.md"), encoding="utf-8").read()
    for role in ROLES:
        rows = [line for line in text.splitlines() if line.startswith(f"| {role} |")]
        assert len(rows) == 1, role
        assert f"| {metrics['task']['accuracy'][role]:.4f} | {metrics['task']['macro_f1'][role]:.4f} |" in rows[0]
    assert open(os.path.join(report, "accuracy_vs_latency.png"), "rb").read(4) == b"\x89PNG"


# -- bad input: one line, before any long work ------------------------------------------------------------------


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def bad_files(task, tmp_path):
    header = "text,label\n"
    good = open(task["train"], encoding="utf-8").read()
    return {
        "no_label": _write(tmp_path / "no_label.csv", good + "a slow swimming fish,\n"),
        "ragged": _write(tmp_path / "ragged.csv", good + "a slow, swimming fish,noun.animal\n"),
        "jsonl": _write(tmp_path / "rows.jsonl", '{"text": "a fish", "label": "noun.animal"}\n{"text": "a pear"}\n'),
        "unseen": _write(tmp_path / "unseen.csv", header + "a tall tree,noun.plant\na fish,noun.animal\n"),
        "unknown": _write(tmp_path / "unknown.csv", header + "a tall tree,noun.plant\na fish,noun.animal\n"),
        "encoder": bert.minilm_path(),
    }


@pytest.mark.parametrize("flags, message", [
    (["--train_files={no_label}"], "no_label.csv:62: no label (column 'label' is empty)"),
    (["--train_files={ragged}"], "ragged.csv:62: 3 fields where the header has 2"),
    (["--train_files={jsonl}"], "rows.jsonl:2: no label (field 'label' is missing or empty)"),
    (["--text_fields=sentence"], "has no column(s) ['sentence']; its columns are ['label', 'text']"),
    (["--task_model={encoder}"], "is not a classifier: it is a Hugging Face encoder (BertModel)"),
    (["--eval_files={unseen}"], "Eval labels ['noun.plant'] never occur in the training files"),
    (["--train_files={unknown}", "--eval_files={unknown}"], "Labels ['noun.plant'] of the data are not classes of "
                                                            "the teacher"),
    (["--task_epochs=0"], "--task_epochs must be >= 1, got 0"),
    (["--hidden_weight=0.5"], "with --task_model use --task_hidden_weight"),
])
def test_bad_input_is_one_line_before_any_work(task, bad_files, tmp_path, flags, message):
    given = {f.split("=")[0] for f in flags}
    defaults = {"--task_model": task["teacher"], "--train_files": task["train"], "--eval_files": task["eval"]}
    argv = [f"{k}={v}" for k, v in defaults.items() if k not in given] + [f.format(**bad_files) for f in flags]
    report = tmp_path / "report"
    with pytest.raises(app.UsageError) as error:
        compress.run(_settings(*argv, f"--report_dir={report}"))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not report.exists()  # refused before the first stage


def test_labels_one_and_one_point_zero_are_one_class(tmp_path):
    from recipes import task_data

    train = _write(tmp_path / "train.csv", "text,label\na,1\nb,1.0\nc,0\nd,0.0\n")
    evaluation = _write(tmp_path / "eval.jsonl", '{"text": "e", "label": 1}\n{"text": "f", "label": 0.0}\n')
    for teacher_labels in (["0", "1"], ["0.0", "1.0"]):
        data = task_data.load(train, evaluation, ["text"], "label", teacher_labels)
        np.testing.assert_array_equal(data.train_labels, [1, 1, 0, 0])
        np.testing.assert_array_equal(data.eval_labels, [1, 0])
    # A Hugging Face classifier's default names: the labels are class ids.
    data = task_data.load(train, evaluation, ["text"], "label", ["LABEL_0", "LABEL_1"])
    assert data.mapping == "id"
    np.testing.assert_array_equal(data.train_labels, [1, 1, 0, 0])
