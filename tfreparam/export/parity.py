"""`check_parity`: run an exported artifact and compare it with the Keras model.

Runners: the LiteRT interpreter (`ai_edge_litert`) for `.tflite`,
onnxruntime for `.onnx`, `tf.saved_model.load` for a SavedModel directory.
Each output gets its max-abs difference and its per-example cosine
similarity (each example flattened; the minimum over the batch is what
tolerances check). For a BERT encoder the report adds the mean-pooled
sentence embedding (mean of `sequence_output` over real tokens, the
sentence-transformers pooling), which is what the int8 tolerance is about.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional

import numpy as np

from tfreparam.export import model_io, runners
from tfreparam.export.artifacts import artifact_format

SENTENCE_EMBEDDING = "sentence_embedding"


class ParityError(ValueError):
    """An exported artifact's outputs differ from the Keras model's beyond the tolerance."""


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Pass if every output's max-abs diff <= `max_abs` and its min cosine >= `min_cosine`.

    With `cosine_output` set, the cosine bound applies to that output only
    (e.g. the sentence embedding of an int8 BERT; hidden states of padding
    positions carry no meaning and quantize worst).
    """

    max_abs: Optional[float] = None
    min_cosine: Optional[float] = None
    cosine_output: Optional[str] = None

    def __str__(self):
        parts = []
        if self.max_abs is not None:
            parts.append(f"max-abs <= {self.max_abs:g}")
        if self.min_cosine is not None:
            where = f" ({self.cosine_output})" if self.cosine_output else ""
            parts.append(f"cosine >= {self.min_cosine:g}{where}")
        return ", ".join(parts) or "none"


# Per-mode defaults (the numbers: fp32 formats <= 1e-4 abs, fp16 <= 1e-2,
# quantized: cosine >= 0.99 on sentence embeddings).
_DEFAULTS = {
    "fp32": Tolerance(max_abs=1e-4),
    "fp16": Tolerance(max_abs=1e-2),
    "dynamic": Tolerance(min_cosine=0.99),
    "int8": Tolerance(min_cosine=0.99),
    "int16x8": Tolerance(min_cosine=0.99),
    "qat": Tolerance(min_cosine=0.99),
}


def default_tolerance(mode: str, model=None) -> Tolerance:
    if mode not in _DEFAULTS:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {sorted(_DEFAULTS)}.")
    tolerance = _DEFAULTS[mode]
    if tolerance.min_cosine is not None and model is not None and _pools_sentences(model):
        tolerance = dataclasses.replace(tolerance, cosine_output=SENTENCE_EMBEDDING)
    return tolerance


@dataclasses.dataclass(frozen=True)
class OutputParity:
    name: str
    shape: tuple
    max_abs: float
    mean_abs: float
    reference_max_abs: float  # scale of the reference, to read max_abs against
    cosine_min: float
    cosine_mean: float


@dataclasses.dataclass(frozen=True)
class ParityReport:
    artifact: str
    format: str
    tolerance: Tolerance
    outputs: dict  # name -> OutputParity

    @property
    def failures(self) -> list[str]:
        tol, problems = self.tolerance, []
        for name, out in self.outputs.items():
            if tol.max_abs is not None and not out.max_abs <= tol.max_abs:
                problems.append(f"{name}: max-abs {out.max_abs:.3g} > {tol.max_abs:g}")
            checks_cosine = tol.cosine_output is None or tol.cosine_output == name
            if tol.min_cosine is not None and checks_cosine and not out.cosine_min >= tol.min_cosine:
                problems.append(f"{name}: cosine {out.cosine_min:.5f} < {tol.min_cosine:g}")
        if tol.cosine_output is not None and tol.cosine_output not in self.outputs:
            problems.append(f"no output named {tol.cosine_output!r} to check the cosine on")
        return problems

    @property
    def passed(self) -> bool:
        return not self.failures

    def raise_if_failed(self):
        if self.failures:
            raise ParityError(
                f"{self.format} artifact {self.artifact} does not match the Keras model "
                f"({'; '.join(self.failures)}).\n{self}\nIf the loss is expected (e.g. int8 on an "
                "unrepresentative calibration set), pass a looser tolerance= or check=False."
            )
        return self

    def __str__(self):
        lines = [f"parity of {self.format} {self.artifact} (tolerance: {self.tolerance}): "
                 f"{'PASS' if self.passed else 'FAIL'}",
                 f"  {'output':<20} {'shape':<16} {'max-abs':>10} {'mean-abs':>10} {'ref max':>9} "
                 f"{'cos min':>9} {'cos mean':>9}"]
        for out in self.outputs.values():
            lines.append(f"  {out.name:<20} {str(out.shape):<16} {out.max_abs:>10.3g} {out.mean_abs:>10.3g} "
                         f"{out.reference_max_abs:>9.3g} {out.cosine_min:>9.6f} {out.cosine_mean:>9.6f}")
        return "\n".join(lines)


def compare(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> dict:
    """Per-output `OutputParity` of `actual` against `reference` (same names and shapes)."""
    missing = sorted(set(reference) - set(actual))
    if missing:
        raise ValueError(f"The artifact has no outputs {missing}; it returned {sorted(actual)}.")
    result = {}
    for name, ref in reference.items():
        ref = np.asarray(ref, np.float64)
        out = np.asarray(actual[name], np.float64)
        if ref.shape != out.shape:
            raise ValueError(f"Output {name!r} has shape {out.shape} in the artifact, {ref.shape} in Keras.")
        diff = np.abs(out - ref)
        cosines = _row_cosines(ref.reshape(len(ref), -1), out.reshape(len(out), -1))
        result[name] = OutputParity(
            name, ref.shape, float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0,
            float(np.abs(ref).max(initial=0.0)), float(cosines.min()), float(cosines.mean()),
        )
    return result


def _row_cosines(a, b):
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    # Two all-zero rows are identical; one zero row against a non-zero one is not.
    same_zero = (norms == 0) & np.all(a == b, axis=1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(same_zero, 1.0, 0.0))


def _pools_sentences(model) -> bool:
    return "input_mask" in model_io.input_names(model) and "sequence_output" in model_io.output_names(model)


def mean_pool(sequence_output: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over real tokens (mask 1) of (batch, seq, hidden) -> (batch, hidden)."""
    mask = np.asarray(mask, np.float64)[..., None]
    return (np.asarray(sequence_output, np.float64) * mask).sum(1) / np.maximum(mask.sum(1), 1.0)


def _with_sentence_embedding(outputs, inputs):
    outputs = dict(outputs)
    outputs[SENTENCE_EMBEDDING] = mean_pool(outputs["sequence_output"], inputs["input_mask"])
    return outputs


def check_parity(model, artifact: str, inputs: Mapping[str, np.ndarray], tolerance: Tolerance | None = None,
                 mode: str = "fp32", signature: str = "serving_default", runner=None) -> ParityReport:
    """Runs `artifact` and `model` on `inputs` and compares every output.

    Args:
      model: the tf_keras model the artifact was exported from.
      artifact: a `.tflite` / `.onnx` path or a SavedModel directory.
      inputs: dict of input name -> numpy array (the model's input names).
      tolerance: a `Tolerance`; default: the one of `mode`.
      mode: "fp32", "fp16", "dynamic", "int8", "int16x8" or "qat" (picks the default tolerance).
      signature: SavedModel / TFLite signature to run.
      runner: an already loaded `runners.*Runner` of the artifact (saves reloading it).

    Returns a `ParityReport` (call `.raise_if_failed()` to enforce it).
    """
    if not isinstance(inputs, Mapping):
        raise TypeError(
            f"inputs must be a dict of input name -> array (names {model_io.input_names(model)}); "
            f"got {type(inputs).__name__}."
        )
    tolerance = tolerance or default_tolerance(mode, model)
    inputs = {name: np.asarray(value) for name, value in inputs.items()}
    reference = model_io.run_keras(model, inputs)
    if runner is None:
        actual = runners.run_artifact(os.fspath(artifact), inputs, signature)
    else:
        actual = runner.run(inputs)
    if _pools_sentences(model):
        reference = _with_sentence_embedding(reference, inputs)
        actual = _with_sentence_embedding(actual, inputs)
    return ParityReport(os.fspath(artifact), artifact_format(artifact), tolerance, compare(reference, actual))
