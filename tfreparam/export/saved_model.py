"""`saved_model`: a self-contained SavedModel with token-id and raw-string serving signatures.

The SavedModel is a plain `tf.Module` holding the model's variables and
traced functions, not a Keras SavedModel: loading it needs TensorFlow only
(plus `tensorflow_text` for the string signatures, whose tokenizer ops live
there) and no tfreparam, bert or Keras code.

Signatures:
  serving_default / token_ids  the model's own inputs (int32 ids, mask, type
                               ids for BERT) with dynamic batch and sequence
                               length -> the model's named outputs.
  strings                      `text`: a 1-D batch of strings, tokenized in
                               the graph by the given preprocessor.
  string_pairs                 `text_a`, `text_b`: sentence pairs.
String signatures return the model outputs plus, for an encoder with a
`sequence_output`, `sentence_embedding` (mean over real tokens).
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfreparam.export import model_io, parity, runners

_SIGNATURE_GROUPS = ("token_ids", "strings")

# Texts for the string signatures' parity check when none are given.
_SAMPLE_TEXTS = (
    "Return the number of items in a container.",
    "The quick brown fox jumps over the lazy dog, twice!",
    "Ünïcödé text, CJK 中文 and numbers 12345 are tokenized in the graph.",
)


def _mean_pool(sequence_output, mask):
    mask = tf.cast(mask, sequence_output.dtype)[..., tf.newaxis]
    return tf.reduce_sum(sequence_output * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def _string_functions(model, preprocessor, token_fn):
    pools = "sequence_output" in model_io.output_names(model) and "input_mask" in model_io.input_names(model)

    def finish(features):
        outputs = dict(token_fn(**features))
        if pools:
            outputs["sentence_embedding"] = tf.identity(
                _mean_pool(outputs["sequence_output"], features["input_mask"]), name="sentence_embedding")
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def strings(text):
        return finish(_features(preprocessor(text), model))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text_a"),
                                  tf.TensorSpec([None], tf.string, name="text_b")])
    def string_pairs(text_a, text_b):
        return finish(_features(preprocessor([text_a, text_b]), model))

    return strings, string_pairs


def _features(preprocessed, model):
    names = model_io.input_names(model)
    missing = sorted(set(names) - set(preprocessed))
    if missing:
        raise ValueError(
            f"The preprocessor returns {sorted(preprocessed)} but the model also needs {missing}."
        )
    return {name: preprocessed[name] for name in names}


def saved_model(model: keras.Model, path: str, signatures: Optional[Sequence[str]] = None, preprocessor=None,
                seq_length: Optional[int] = None, sample_inputs: Optional[Mapping[str, np.ndarray]] = None,
                sample_texts: Optional[Sequence[str]] = None, check: bool = True,
                tolerance: Optional[parity.Tolerance] = None) -> parity.ParityReport | None:
    """Saves `model` as a SavedModel directory at `path` and checks every signature against Keras.

    Args:
      model: a tf_keras model (TFMOT pruning wrappers are stripped first).
      path: output directory.
      signatures: any of "token_ids" and "strings" (the latter adds the
        `strings` and `string_pairs` signatures). Default: "token_ids", plus
        "strings" when a preprocessor is given.
      preprocessor: raw strings -> model inputs in the graph, e.g.
        `bert.preprocessing.Preprocessor.from_pretrained("minilm", seq_length=128)`.
      seq_length: sequence length of the generated sample inputs (default:
        the preprocessor's, else 16). Token-id signatures stay dynamic.
      sample_inputs / sample_texts: inputs of the parity check (default:
        random valid token ids and a few built-in sentences).
      check: compare every signature with the Keras model and raise
        `ParityError` beyond `tolerance` (default fp32: max-abs <= 1e-4).

    Returns the `ParityReport` (outputs of the string signatures are
    prefixed `strings/` and `string_pairs/`), or None with check=False.
    """
    path = os.fspath(path)
    if signatures is None:
        signatures = ("token_ids", "strings") if preprocessor is not None else ("token_ids",)
    if isinstance(signatures, str):
        signatures = (signatures,)
    unknown = sorted(set(signatures) - set(_SIGNATURE_GROUPS))
    if unknown or not signatures:
        raise ValueError(f"Unknown signatures {unknown or list(signatures)}; choose from {_SIGNATURE_GROUPS}.")
    if "strings" in signatures and preprocessor is None:
        raise ValueError(
            "The 'strings' signature tokenizes in the graph and needs preprocessor=..., e.g. "
            "bert.preprocessing.Preprocessor.from_pretrained('minilm', seq_length=128)."
        )
    model = model_io.prepare(model)
    specs = model_io.input_specs(model)
    token_fn = model_io.serving_fn(model, specs)
    functions = {"serving_default": token_fn}
    if "token_ids" in signatures:
        functions["token_ids"] = token_fn
    if "strings" in signatures:
        strings, pairs = _string_functions(model, preprocessor, token_fn)
        functions["strings"] = strings.get_concrete_function()
        functions["string_pairs"] = pairs.get_concrete_function()
    module = model_io.ExportModule(model)
    if preprocessor is not None:
        # Tracked so that the tokenizer's lookup resources (if any) are saved with it.
        module.preprocessor_resources = _trackable_parts(preprocessor)
    tf.saved_model.save(module, path, signatures=functions)
    if not check:
        return None

    if seq_length is None:
        seq_length = getattr(preprocessor, "seq_length", None) or 16
    if sample_inputs is None:
        sample_inputs = model_io.sample_inputs(model, seq_length=seq_length)
    loaded = tf.saved_model.load(path)  # once, for every signature's check
    report = parity.check_parity(model, path, sample_inputs, tolerance=tolerance, mode="fp32",
                                 runner=runners.SavedModelRunner(loaded))
    outputs = dict(report.outputs)
    if "strings" in signatures:
        outputs.update(_string_parity(model, loaded, preprocessor, list(sample_texts or _SAMPLE_TEXTS)))
    report = parity.ParityReport(report.artifact, report.format, report.tolerance, outputs)
    return report.raise_if_failed()


def _trackable_parts(preprocessor):
    return [value for value in vars(preprocessor).values() if isinstance(value, tf.Module)]


def _string_parity(model, loaded, preprocessor, texts):
    half = max(1, len(texts) // 2)
    cases = {
        "strings": ({"text": np.array(texts, dtype=object)}, preprocessor(tf.constant(texts))),
        "string_pairs": (
            {"text_a": np.array(texts[:half], dtype=object), "text_b": np.array(texts[-half:], dtype=object)},
            preprocessor([tf.constant(texts[:half]), tf.constant(texts[-half:])]),
        ),
    }
    result = {}
    for signature, (raw, features) in cases.items():
        features = {name: value.numpy() for name, value in features.items()}
        reference = model_io.run_keras(model, features)
        if "sequence_output" in reference and "input_mask" in features:
            reference["sentence_embedding"] = parity.mean_pool(reference["sequence_output"], features["input_mask"])
        actual = runners.SavedModelRunner(loaded, signature).run(raw)
        for name, value in parity.compare(reference, actual).items():
            result[f"{signature}/{name}"] = value
    return result
