r"""Sequence classification (single texts or pairs) on `model.fit`, from a pretrained or compressed BERT.

    python -m recipes.finetune --train_file=train.csv --eval_file=dev.csv --text_fields=sentence
    python -m recipes.finetune --train_file=pairs.jsonl --text_fields=premise,hypothesis \
        --model=reports/demo/compressed_encoder.keras
    python -m recipes.finetune --tfds=glue/sst2        # when TFDS and the dataset are on the machine

Files: CSV, TSV (by extension) with a header row, or JSONL (one object per
line). `--text_fields` names one column (single texts) or two (pairs);
`--label_field` the label column (ints or strings). Reports accuracy and F1
(binary F1 of class 1 for two classes, macro F1 otherwise) on the eval set.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
from absl import app, flags

from recipes import cli

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
_flag("string", "output_dir", "runs/finetune", "Where metrics.json and the fine-tuned weights go.")
_flag("integer", "seed", 0, "Seed.")


def read_examples(path: str, text_fields, label_field: str) -> tuple[list[tuple[str, ...]], list]:
    """(texts, labels) of a CSV / TSV / JSONL file; clear errors for missing files and columns."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".jsonl", ".json", ".csv", ".tsv"):
        raise ValueError(f"{path!r}: use a .csv, .tsv or .jsonl file (got {extension or 'no extension'}).")
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        if extension in (".jsonl", ".json"):
            rows = []
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{number} is not a JSON object ({error}).") from None
        elif extension in (".csv", ".tsv"):
            rows = list(csv.DictReader(f, delimiter="\t" if extension == ".tsv" else ","))
        else:
            raise ValueError(f"{path!r}: use a .csv, .tsv or .jsonl file (got {extension or 'no extension'}).")
    if not rows:
        raise ValueError(f"{path!r} has no examples.")
    missing = [c for c in (*text_fields, label_field) if c not in rows[0]]
    if missing:
        raise ValueError(f"{path!r} has no column(s) {missing}; its columns are {sorted(rows[0])}.")
    return [tuple(str(r[c]) for c in text_fields) for r in rows], [r[label_field] for r in rows]


def label_ids(train_labels, eval_labels):
    names = sorted({str(l) for l in train_labels})
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({str(l) for l in eval_labels} - set(index))
    if unknown:
        raise ValueError(f"Eval labels {unknown} never occur in the training data.")
    return names, np.array([index[str(l)] for l in train_labels]), np.array([index[str(l)] for l in eval_labels])


def f1_score(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Binary F1 of class 1 for two classes; macro F1 otherwise."""
    def f1(c):
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)

    if num_classes == 2:
        return float(f1(1))
    return float(np.mean([f1(c) for c in range(num_classes)]))


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
    import tfreparam  # noqa: F401  registers the reparameterized layers

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
    return dict(train=train, dev=dev, train_labels=train_ids, dev_labels=dev_ids, label_names=names,
                model=f.model, vocab=f.vocab, seq_length=f.seq_length, batch_size=f.batch_size, epochs=f.epochs,
                learning_rate=f.learning_rate, output_dir=f.output_dir, seed=f.seed)


def run(s: dict) -> dict:
    import tensorflow as tf
    import tf_keras as keras

    import bert
    from recipes import optim

    keras.utils.set_random_seed(s["seed"])
    preprocessor = bert.Preprocessor.from_pretrained(s["vocab"], seq_length=s["seq_length"])

    def features(texts):
        columns = [tf.constant([t[i] for t in texts]) for i in range(len(texts[0]))]
        return {k: np.asarray(v) for k, v in preprocessor(columns if len(columns) == 2 else columns[0]).items()}

    encoder = load_encoder(s["model"])
    classifier = bert.build_classifier(encoder, num_classes=len(s["label_names"]))
    steps = s["epochs"] * -(-len(s["train"]) // s["batch_size"])
    optimizer = optim.bert_optimizer("adamw", s["learning_rate"], steps, max(1, steps // 10))
    classifier.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       metrics=["accuracy"])
    train = tf.data.Dataset.from_tensor_slices((features(s["train"]), s["train_labels"]))
    train = train.shuffle(len(s["train"]), seed=s["seed"]).batch(s["batch_size"])
    classifier.fit(train, epochs=s["epochs"], verbose=2)
    logits = classifier.predict(features(s["dev"]), batch_size=s["batch_size"], verbose=0)
    predicted = np.argmax(logits, axis=-1)
    labels = s["dev_labels"]
    metrics = {"accuracy": float(np.mean(predicted == labels)),
               "f1": f1_score(labels, predicted, len(s["label_names"])),
               "eval_examples": int(len(labels)), "labels": s["label_names"]}
    os.makedirs(s["output_dir"], exist_ok=True)
    classifier.save_weights(os.path.join(s["output_dir"], "classifier.weights.h5"))
    with open(os.path.join(s["output_dir"], "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"[finetune] accuracy {metrics['accuracy']:.4f}, F1 {metrics['f1']:.4f} on {len(labels)} examples; "
          f"written to {os.path.abspath(s['output_dir'])}", flush=True)
    return metrics


main = cli.main(FLAGS, check_flags, run)
parse_flags = cli.flags_parser(FLAGS)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
