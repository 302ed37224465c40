"""A fine-tuned text classifier on disk (a *task model*): what `recipes.finetune` writes, what compression reads.

A task-model directory holds:

    model.keras        the classifier: token ids {input_word_ids, input_mask, input_type_ids} -> logits
                       (batch, classes); loads with keras.models.load_model after `import bert`
    labels.json        the label names, a JSON list in class-id order
    preprocessor.json  how to rebuild the `bert.Preprocessor` (seq_length, lower_case, ...; the
                       vocabulary is `vocab.txt` next to it) and the text columns it was trained on
    vocab.txt          the WordPiece vocabulary
    metrics.json       (optional) what the fine-tune measured on its eval set

    import recipes.task_model as task_model
    tm = task_model.load("runs/finetune")
    tm.predict(["a short haircut with hairs standing up like a brush"])   # -> ["noun.body"]

`load` also reads a Hugging Face `BertForSequenceClassification` directory
(labels from its config.json `id2label`, weights through
`bert.load_hf(dir, head="classifier")`, vocab.txt for the preprocessor).
`load` refuses, in one line, a directory that is not a classifier (a missing
file, a plain BERT encoder, label names that do not match the logits).
Inference pads each batch only to its longest example (`TaskModel.logits`),
which the attention mask makes exact and which is several times faster on
short texts than padding every example to `seq_length`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
PREPROCESSOR_FILE = "preprocessor.json"
VOCAB_FILE = "vocab.txt"
METRICS_FILE = "metrics.json"
REQUIRED_FILES = (MODEL_FILE, LABELS_FILE, PREPROCESSOR_FILE, VOCAB_FILE)
INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")
# Preprocessor settings kept in preprocessor.json (the vocabulary goes to vocab.txt).
_PREPROCESSOR_KEYS = ("seq_length", "lower_case", "strip_accents", "tokenize_chinese_chars", "max_chars_per_word",
                      "special_tokens", "split_special_tokens")
_LAYOUT = (f"a task model (a recipes.finetune --output_dir) has {', '.join(REQUIRED_FILES)}"
           f" (and optionally {METRICS_FILE})")


@dataclasses.dataclass
class TaskModel:
    """A classifier with its label names and preprocessor.

    `model` maps the three BERT token inputs to logits (batch, num_classes);
    `preprocessor` turns raw strings (or pairs) into those inputs;
    `text_fields` are the columns it was trained on (one, or two for pairs).
    """

    model: object  # tf_keras.Model
    label_names: list
    preprocessor: object  # bert.Preprocessor
    text_fields: list = dataclasses.field(default_factory=lambda: ["text"])
    metrics: Optional[dict] = None
    directory: Optional[str] = None
    source: str = "keras"  # "keras": a recipes.finetune directory; "hf": a Hugging Face classifier

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def seq_length(self) -> int:
        return int(self.preprocessor.seq_length)

    def features(self, texts, batch_size: int = 512) -> dict:
        """Token inputs (int32 arrays (n, seq_length)) of `texts`: strings, or tuples of one or two strings."""
        return encode(self.preprocessor, texts, batch_size)

    def logits(self, texts_or_features, batch_size: int = 64) -> np.ndarray:
        """Logits (n, num_classes) of raw texts or of `features`, in batches padded to their longest example."""
        features = texts_or_features if isinstance(texts_or_features, dict) else self.features(texts_or_features)
        return predict_logits(self.model, features, batch_size)

    def predict(self, texts, batch_size: int = 64) -> list:
        """The label name of each text."""
        return [self.label_names[i] for i in np.argmax(self.logits(texts, batch_size), axis=-1)]


# -- metrics --------------------------------------------------------------------------


def f1_per_class(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """F1 of each class (0 where a class is neither predicted nor present)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    scores = np.zeros(num_classes)
    for c in range(num_classes):
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        scores[c] = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
    return scores


def classification_metrics(labels, predictions, num_classes: int) -> dict:
    """accuracy, macro_f1 (mean F1 over all classes) and f1 (binary F1 of class 1 for two classes, else macro)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    per_class = f1_per_class(labels, predictions, num_classes)
    macro = float(np.mean(per_class))
    return {"accuracy": float(np.mean(labels == predictions)), "macro_f1": macro,
            "f1": float(per_class[1]) if num_classes == 2 else macro}


# -- batching ---------------------------------------------------------------------------


def encode(preprocessor, texts, batch_size: int = 512) -> dict:
    """`preprocessor` over `texts` (strings, or tuples of one or two strings): dict of int32 numpy arrays."""
    import tensorflow as tf

    texts = list(texts)
    if not texts:
        raise ValueError("No texts to encode.")
    rows = [(t,) if isinstance(t, str) else tuple(t) for t in texts]
    width = len(rows[0])
    if width not in (1, 2) or any(len(r) != width for r in rows):
        raise ValueError("Texts must all be strings, or all tuples of one or two strings (sentence pairs).")
    parts = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        columns = [tf.constant([r[i] for r in chunk]) for i in range(width)]
        parts.append(preprocessor(columns if width == 2 else columns[0]))
    return {k: np.concatenate([p[k].numpy() for p in parts]).astype(np.int32) for k in parts[0]}


def trimmed_length(mask, multiple: int = 8):
    """The batch's longest example (from its 0/1 mask), rounded up to `multiple`, at most the padded length."""
    import tensorflow as tf

    longest = tf.reduce_max(tf.reduce_sum(tf.cast(mask, tf.int32), axis=1))
    rounded = (longest + multiple - 1) // multiple * multiple
    return tf.maximum(1, tf.minimum(rounded, tf.shape(mask)[1]))


def trim_batch(features: dict, multiple: int = 8) -> dict:
    """Drops the padding columns no example of the batch uses (BERT's attention mask makes this exact)."""
    length = trimmed_length(features["input_mask"], multiple)
    return {k: v[:, :length] for k, v in features.items()}


def training_dataset(features: dict, labels, batch_size: int, seed: int = 0):
    """Shuffled (features, labels) batches, each padded only to its longest example."""
    import tensorflow as tf

    n = len(labels)
    dataset = tf.data.Dataset.from_tensor_slices((features, np.asarray(labels)))
    dataset = dataset.shuffle(n, seed=seed).batch(batch_size)
    return dataset.map(lambda x, y: (trim_batch(x), y)).prefetch(2)


def predict_logits(model, features: dict, batch_size: int = 64, progress=None) -> np.ndarray:
    """`model`'s outputs over `features` in inference mode; batches group similar lengths and are trimmed.

    `progress(examples done)` is called after each batch.
    """
    import tensorflow as tf

    names = [name for name in INPUT_NAMES if name in features]
    lengths = features["input_mask"].sum(axis=1)
    order = np.argsort(-lengths, kind="stable")
    specs = {name: tf.TensorSpec([None, None], tf.int32, name=name) for name in names}

    @tf.function(input_signature=[specs], reduce_retracing=True)
    def forward(batch):
        return model(batch, training=False)

    outputs = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(1, int(lengths[rows].max()))
        outputs.append(forward({name: tf.constant(features[name][rows, :width], tf.int32) for name in names}).numpy())
        if progress is not None:
            progress(start + len(rows))
    result = np.empty((len(order),) + outputs[0].shape[1:], outputs[0].dtype)
    result[order] = np.concatenate(outputs)
    return result


# -- saving and loading ---------------------------------------------------------------------


def save(directory: str, model, label_names: Sequence[str], preprocessor, metrics: Optional[dict] = None,
         text_fields: Sequence[str] = ("text",)) -> str:
    """Writes the task-model directory (see the module docstring); returns its path.

    `model` is saved without optimizer state (an uncompiled view of the same layers).
    """
    import tf_keras as keras

    _check_classifier(model, len(label_names), directory)
    os.makedirs(directory, exist_ok=True)
    keras.Model(model.inputs, model.output, name=model.name).save(os.path.join(directory, MODEL_FILE))
    _write_json(os.path.join(directory, LABELS_FILE), [str(name) for name in label_names])
    config = preprocessor.get_config()
    settings = {key: config[key] for key in _PREPROCESSOR_KEYS}
    settings.update(vocab=VOCAB_FILE, text_fields=list(text_fields))
    _write_json(os.path.join(directory, PREPROCESSOR_FILE), settings)
    with open(os.path.join(directory, VOCAB_FILE), "w", encoding="utf-8") as f:
        f.write("".join(f"{token}\n" for token in preprocessor.vocab))
    if metrics is not None:
        _write_json(os.path.join(directory, METRICS_FILE), metrics)
    return directory


def load(directory: str) -> TaskModel:
    """The task model in `directory`: a `recipes.finetune` output or a Hugging Face classifier directory.

    Raises ValueError with a one-line reason when `directory` is not a classifier.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"{directory!r} is not a task model: no such directory.")
    if os.path.isfile(os.path.join(directory, MODEL_FILE)):
        return _load_keras_task_model(directory)
    if os.path.isfile(os.path.join(directory, "config.json")):
        return _load_hf_classifier(directory)
    present = sorted(os.listdir(directory))[:8]
    raise ValueError(f"{directory!r} is not a task model: it has no {MODEL_FILE}; {_LAYOUT}. "
                     f"It holds {present or 'nothing'}.")


def _load_keras_task_model(directory: str) -> TaskModel:
    import tf_keras as keras

    import bert
    import tfreparam.layers  # noqa: F401  registers the reparameterized layers a compressed classifier uses

    missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise ValueError(f"{directory!r} is not a complete task model: it has no {', '.join(missing)}; {_LAYOUT}.")
    labels = _read_json(directory, LABELS_FILE)
    if (not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(n, str) for n in labels)
            or len(set(labels)) != len(labels)):
        raise ValueError(f"{os.path.join(directory, LABELS_FILE)} must be a JSON list of two or more distinct "
                         f"label names (in class-id order); got {str(labels)[:80]}.")
    settings = _read_json(directory, PREPROCESSOR_FILE)
    if not isinstance(settings, dict) or "seq_length" not in settings:
        raise ValueError(f"{os.path.join(directory, PREPROCESSOR_FILE)} must be a JSON object with seq_length and "
                         f"the other bert.Preprocessor settings; got {str(settings)[:80]}.")
    settings = dict(settings)
    text_fields = list(settings.pop("text_fields", ["text"]))
    vocab = os.path.join(directory, settings.pop("vocab", VOCAB_FILE))
    unknown = sorted(set(settings) - set(_PREPROCESSOR_KEYS))
    if unknown:
        raise ValueError(f"{os.path.join(directory, PREPROCESSOR_FILE)} has unknown settings {unknown}; "
                         f"expected some of {list(_PREPROCESSOR_KEYS)}, vocab and text_fields.")
    preprocessor = bert.Preprocessor(bert.load_vocab(vocab), **settings)
    path = os.path.join(directory, MODEL_FILE)
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # a damaged archive, or a layer class nothing registered
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} could not be loaded as a Keras model: {first[:300]}") from None
    _check_classifier(model, len(labels), directory)
    metrics = _read_json(directory, METRICS_FILE) if os.path.isfile(os.path.join(directory, METRICS_FILE)) else None
    return TaskModel(model, labels, preprocessor, text_fields, metrics, directory, "keras")


def _check_classifier(model, num_labels: int, directory: str) -> None:
    """One-line errors for a model that is not a classifier of `num_labels` classes on BERT token inputs."""
    where = f"{directory!r}" if directory else "the model"
    if isinstance(model.output, (dict, list, tuple)):
        outputs = sorted(model.output) if isinstance(model.output, dict) else f"{len(model.output)} tensors"
        raise ValueError(f"{where} is not a classifier: its model outputs {outputs} (a BERT encoder?), not one "
                         "logits tensor (batch, classes); fine-tune it with python -m recipes.finetune first.")
    shape = tuple(model.output.shape)
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(f"{where} is not a classifier: its output has shape {shape}, not (batch, classes).")
    if int(shape[-1]) != num_labels:
        raise ValueError(f"{where}: {num_labels} label names but the model outputs {int(shape[-1])} logits; "
                         f"{LABELS_FILE} and {MODEL_FILE} come from different models.")
    names = [tensor.name.split(":")[0] for tensor in model.inputs]
    if not set(names) <= set(INPUT_NAMES) or "input_word_ids" not in names:
        raise ValueError(f"{where} is not a BERT classifier: its inputs are {names}; expected some of "
                         f"{list(INPUT_NAMES)} including input_word_ids.")


# -- Hugging Face classifiers ----------------------------------------------------------------
# A Hugging Face BertForSequenceClassification directory (config.json with id2label, model.safetensors with
# bert.* and classifier.weight / classifier.bias, vocab.txt) loads through bert.load_hf(head="classifier"):
# the same flat classifier bert.build_classifier builds, with the checkpoint's pooler and classifier.


def _hf_classifier_model(directory: str, num_labels: int):
    import bert

    model = bert.load_hf(directory, head="classifier").model
    if int(model.output.shape[-1]) != num_labels:  # load_hf counts id2label too; kept as a guard
        raise ValueError(f"{directory!r}: id2label names {num_labels} classes but the classifier has "
                         f"{int(model.output.shape[-1])} outputs.")
    return model


def _load_hf_classifier(directory: str) -> TaskModel:
    import bert

    config = _read_json(directory, "config.json")
    if not isinstance(config, dict):
        raise ValueError(f"{os.path.join(directory, 'config.json')} is not a JSON object.")
    architectures = config.get("architectures") or []
    is_classifier = any(str(a).endswith("ForSequenceClassification") for a in architectures)
    if not is_classifier and not _has_classifier_tensors(directory):
        raise ValueError(f"{directory!r} is not a classifier: it is a Hugging Face encoder "
                         f"({', '.join(map(str, architectures)) or 'no architectures listed'}) without "
                         f"classifier.* weights; fine-tune it first: python -m recipes.finetune "
                         f"--model={directory} --output_dir=DIR, then pass DIR.")
    id2label = config.get("id2label") or {}
    try:
        labels = [str(id2label[key]) for key in sorted(id2label, key=int)]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{os.path.join(directory, 'config.json')}: id2label must map class ids to names "
                         f"({error}).") from None
    if len(labels) < 2 or [int(k) for k in sorted(id2label, key=int)] != list(range(len(labels))):
        raise ValueError(f"{os.path.join(directory, 'config.json')}: id2label must name classes 0..n-1 (n >= 2); "
                         f"got {str(id2label)[:80]}.")
    preprocessor = bert.Preprocessor.from_pretrained(directory, seq_length=128)
    model = _hf_classifier_model(directory, len(labels))
    _check_classifier(model, len(labels), directory)
    return TaskModel(model, labels, preprocessor, ["text"], None, directory, "hf")


def _has_classifier_tensors(directory: str) -> bool:
    path = os.path.join(directory, "model.safetensors")
    if not os.path.isfile(path):
        return False
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        return any(key.startswith("classifier.") for key in f.keys())


# -- helpers --------------------------------------------------------------------------------------


def _write_json(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def _read_json(directory: str, name: str):
    path = os.path.join(directory, name)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from None

