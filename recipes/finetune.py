r"""Sequence classification (single texts or pairs) on `model.fit`, from a pretrained or compressed BERT.

    python -m recipes.finetune --train_file=train.csv --eval_file=dev.csv --text_fields=sentence
    python -m recipes.finetune --train_file=pairs.jsonl --text_fields=premise,hypothesis \
        --model=reports/demo/compressed_encoder.keras
    python -m recipes.finetune --tfds=glue/sst2        # when TFDS and the dataset are on the machine

Files: CSV, TSV (by extension) with a header row, or JSONL (one object per
line), read by `recipes.labelled_data` (bad rows are refused up front, numeric
labels such as 1 and 1.0 are one class). `--text_fields` names one column
(single texts) or two (pairs); `--label_field` the label column.

`--output_dir` becomes a task-model directory (`recipes.task_model`): the whole
classifier (`model.keras`), `labels.json`, `preprocessor.json` + `vocab.txt`,
and `metrics.json` with the eval set's accuracy, macro F1 and F1 (binary F1 of
class 1 for two classes, macro F1 otherwise), its size and the seconds spent.
`recipes.task_model.load(DIR)` gives the classifier back, ready to predict or
to compress. Batches are padded only to their longest example (exact under the
attention mask), so short texts train several times faster than at
`--seq_length`, which is the length the saved preprocessor pads to.
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags

from recipes import cli, task_model
from recipes.labelled_data import label_ids, read_examples

# Each recipe has its own flag set, so several recipes can be imported in one process (tests, sweep).
FLAGS = flags.FlagValues()


def _flag(kind, *args, **kwargs):
    return getattr(flags, f"DEFINE_{kind}")(*args, flag_values=FLAGS, **kwargs)


_flag("string", "train_file", None, "CSV / TSV / JSONL training examples.")
_flag("string", "eval_file", None, "CSV / TSV / JSONL evaluation examples (default: 10 % of the training file).")
_flag("string", "tfds", None, "A TFDS dataset name (e.g. glue/sst2) instead of files, if TFDS has it locally.")
_flag("list", "text_fields", ["sentence"], "One text column, or two for sentence pairs.")
_flag("string", "label_field", "label", "Label column.")
_flag("string", "model", "minilm", "HF BERT directory, 'minilm', or a saved encoder (.keras, e.g. from recipes.compress).")
_flag("string", "vocab", "minilm", "Tokenizer checkpoint directory (vocab.txt) or 'minilm'.")
_flag("integer", "seq_length", 128, "Tokens per example.")
_flag("integer", "batch_size", 32, "Batch size.")
_flag("integer", "epochs", 3, "Epochs.")
_flag("float", "learning_rate", 2e-5, "Peak learning rate (warm-up 10 %, linear decay).")
_flag("string", "output_dir", "runs/finetune",
      "Task-model directory to write: model.keras, labels.json, preprocessor.json, vocab.txt, metrics.json.")
_flag("integer", "seed", 0, "Seed.")


def f1_score(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Binary F1 of class 1 for two classes; macro F1 otherwise."""
    return task_model.classification_metrics(labels, predictions, num_classes)["f1"]


def _tfds_examples(name, text_fields, label_field):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError("--tfds needs tensorflow_datasets, which is not installed; use --train_file instead.") from None
    try:
        splits = tfds.load(name, download=False)
    except Exception as error:  # not prepared locally
        raise ValueError(f"TFDS dataset {name!r} is not available on this machine ({error}).") from None
    eval_split = "validation" if "validation" in splits else "test"

    def convert(ds):
        texts, labels = [], []
        for ex in tfds.as_numpy(ds):
            texts.append(tuple(ex[c].decode() for c in text_fields))
            labels.append(int(ex[label_field]))
        return texts, labels

    return convert(splits["train"]), convert(splits[eval_split])


def load_encoder(model: str):
    import tf_keras as keras

    import bert
    import tfreparam.layers  # noqa: F401  registers the reparameterized layers

    if model.endswith(".keras"):
        if not os.path.isfile(model):
            raise ValueError(f"--model: {model!r} does not exist.")
        encoder = keras.models.load_model(model, compile=False)
        if not isinstance(encoder.output, dict) or "pooled_output" not in encoder.output:
            raise ValueError(f"--model: {model!r} is not a BERT encoder (it has no pooled_output output).")
        return encoder
    return bert.load_hf(model).model


def check_flags(f) -> dict:
    if not (f.train_file or f.tfds):
        raise app.UsageError("Give --train_file (CSV / TSV / JSONL) or --tfds.")
    fields = [c.strip() for c in f.text_fields if c.strip()]
    if len(fields) not in (1, 2):
        raise app.UsageError(f"--text_fields takes one column or two (a pair); got {f.text_fields}.")
    for name in ("seq_length", "batch_size", "epochs"):
        if getattr(f, name) < 1:
            raise app.UsageError(f"--{name} must be >= 1, got {getattr(f, name)}.")
    try:
        if f.tfds:
            (train, train_y), (dev, dev_y) = _tfds_examples(f.tfds, fields, f.label_field)
        else:
            train, train_y = read_examples(f.train_file, fields, f.label_field)
            if f.eval_file:
                dev, dev_y = read_examples(f.eval_file, fields, f.label_field)
            else:
                cut = max(1, len(train) // 10)
                train, dev, train_y, dev_y = train[cut:], train[:cut], train_y[cut:], train_y[:cut]
        names, train_ids, dev_ids = label_ids(train_y, dev_y)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    if len(names) < 2:
        raise app.UsageError(f"Classification needs at least two labels; the training data has only {names}.")
    try:
        output_dir = cli.check_output_dir(f.output_dir, "--output_dir")
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    return dict(text_fields=fields, train=train, dev=dev, train_labels=train_ids, dev_labels=dev_ids, label_names=names,
                model=f.model, vocab=f.vocab, seq_length=f.seq_length, batch_size=f.batch_size, epochs=f.epochs,
                learning_rate=f.learning_rate, output_dir=output_dir, seed=f.seed)


def run(s: dict) -> dict:
    import tf_keras as keras

    import bert
    from recipes import optim

    start = time.perf_counter()
    keras.utils.set_random_seed(s["seed"])
    preprocessor = bert.Preprocessor.from_pretrained(s["vocab"], seq_length=s["seq_length"])
    train_features = task_model.encode(preprocessor, s["train"])
    dev_features = task_model.encode(preprocessor, s["dev"])

    encoder = load_encoder(s["model"])
    classifier = bert.build_classifier(encoder, num_classes=len(s["label_names"]))
    steps = s["epochs"] * -(-len(s["train"]) // s["batch_size"])
    optimizer = optim.bert_optimizer("adamw", s["learning_rate"], steps, max(1, steps // 10))
    classifier.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"])
    train = task_model.training_dataset(train_features, s["train_labels"], s["batch_size"], seed=s["seed"])
    fit_start = time.perf_counter()
    classifier.fit(train, epochs=s["epochs"], verbose=2)
    train_seconds = time.perf_counter() - fit_start

    eval_start = time.perf_counter()
    logits = task_model.predict_logits(classifier, dev_features, batch_size=max(s["batch_size"], 64))
    eval_seconds = time.perf_counter() - eval_start
    labels = s["dev_labels"]
    metrics = task_model.classification_metrics(labels, np.argmax(logits, axis=-1), len(s["label_names"]))
    metrics.update(eval_examples=int(len(labels)), train_examples=int(len(s["train"])),
                   num_classes=len(s["label_names"]), seq_length=s["seq_length"], epochs=s["epochs"],
                   batch_size=s["batch_size"], learning_rate=s["learning_rate"], model=s["model"],
                   seconds={"train": round(train_seconds, 2), "eval": round(eval_seconds, 2),
                            "total": round(time.perf_counter() - start, 2)})
    task_model.save(s["output_dir"], classifier, s["label_names"], preprocessor, metrics,
                    text_fields=s.get("text_fields", ["text"]))
    print(f"[finetune] accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} on {len(labels)} "
          f"examples ({train_seconds:.0f} s training); task model written to {s['output_dir']}", flush=True)
    return metrics


main = cli.main(FLAGS, check_flags, run)
parse_flags = cli.flags_parser(FLAGS)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
