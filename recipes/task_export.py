"""The deployable files of the task path, and the task metric measured on them.

- `probabilities_view(classifier)`: the same layers with one output,
  `probabilities` (softmax of the logits), which every exported file returns.
- `tflite_file`: TFLite taking token ids (`input_word_ids`, `input_mask`,
  `input_type_ids`, int32, batch dynamic, sequence fixed) in fp32 or an
  int8 mode of `recipes.exports.INT8_MODES`.
- `saved_model_dir`: a SavedModel with the signatures `serving_default` /
  `token_ids` (token ids, dynamic batch and length) and `strings` /
  `string_pairs` (raw text, tokenized in the graph by tensorflow-text with
  the teacher's preprocessor), each returning `probabilities`; every
  signature is checked against the Keras model when written.
- `tflite_probabilities`: a `.tflite` file's probabilities over features, one
  example per call (batch 1, what a deployed file sees), for the int8 rows.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np


def probabilities_view(classifier, name: Optional[str] = None):
    """`classifier`'s layers with the output {"probabilities": softmax(logits)}."""
    import tf_keras as keras

    probabilities = keras.layers.Softmax(name="probabilities")(classifier.output)
    return keras.Model(classifier.inputs, {"probabilities": probabilities}, name=name or classifier.name)


def tflite_file(classifier, path: str, int8: Optional[str], seq_length: int, representative=None) -> int:
    """Writes the probabilities `.tflite` of `classifier` (fp32 for int8=None); returns its size in bytes."""
    from recipes import exports
    import importlib

    tflite = importlib.import_module("tfreparam.export.tflite")  # the package's `tflite` is the function

    mode = "fp32" if int8 is None else exports.INT8_MODES[int8]
    data = exports.calibration_data(int8, representative)
    content = tflite.convert(probabilities_view(classifier), mode, representative_data=data, seq_length=seq_length,
                             integer_io=False if mode == "int8" else None)
    exports.write(path, content)
    return os.path.getsize(path)


def saved_model_dir(classifier, path: str, preprocessor, sample_texts) -> dict:
    """Writes the SavedModel (token-id and string signatures -> probabilities); returns the parity figures."""
    import importlib

    saved_model = importlib.import_module("tfreparam.export.saved_model")  # the package's name is the function
    texts = [t if isinstance(t, str) else t[0] for t in sample_texts]
    report = saved_model.saved_model(probabilities_view(classifier), path, signatures=("token_ids", "strings"),
                                     preprocessor=preprocessor, sample_texts=texts)
    return {name: {"max_abs": float(o.max_abs), "cosine_min": float(o.cosine_min)}
            for name, o in report.outputs.items()}


def tflite_probabilities(path: str, features: dict, seq_length: int, threads: int = 2,
                         progress=None) -> np.ndarray:
    """Probabilities (n, classes) of a `.tflite` file, one example per call, each padded to `seq_length`."""
    from recipes import latency

    run = latency.tflite_runner(path, threads)
    n = len(features["input_mask"])
    out = []
    for i in range(n):
        feed = {k: np.ascontiguousarray(_padded(v[i:i + 1], seq_length), np.int32) for k, v in features.items()}
        out.append(np.asarray(run(feed)["probabilities"], np.float32)[0])
        if progress is not None and ((i + 1) % 100 == 0 or i + 1 == n):
            progress(i + 1)
    return np.stack(out)


def _padded(array: np.ndarray, length: int) -> np.ndarray:
    if array.shape[1] >= length:
        return array[:, :length]
    return np.pad(array, ((0, 0), (0, length - array.shape[1])))


def keras_probabilities(classifier, features: dict, batch_size: int = 64) -> np.ndarray:
    """Softmax of the Keras classifier's logits (batches grouped by length and trimmed: exact)."""
    from recipes import task_model

    logits = task_model.predict_logits(classifier, features, batch_size)
    return softmax(logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def representative_batches(features: dict, seq_length: int, batches: int = 8, batch_size: int = 8,
                           seed: int = 0) -> list[dict]:
    """A few training batches padded to `seq_length`: calibration data of the full-integer int8 modes."""
    rng = np.random.default_rng(seed)
    n = len(features["input_mask"])
    rows = rng.choice(n, min(n, batches * batch_size), replace=False)
    return [{k: _padded(v[rows[i:i + batch_size]], seq_length).astype(np.int32) for k, v in features.items()}
            for i in range(0, len(rows), batch_size)]
