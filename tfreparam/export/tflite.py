"""`tflite`: Keras -> `.tflite` with builtin ops only, in five numeric modes.

The route is Model Garden's: the model is traced into one serving function,
saved as a SavedModel and converted from there (`from_saved_model` keeps the
signature's input/output names, which the LiteRT signature runner uses).
Sequence axes are fixed to `seq_length` (TFLite kernels are fastest with
static shapes; default: 128, or the model's max_position_embeddings if
smaller); the batch axis stays dynamic.

Modes:
  fp32     no optimisation.
  fp16     float16 weights, float32 compute.
  dynamic  int8 weights, activations quantized on the fly.
  int8     full integer: int8 weights and activations, calibrated on
           `representative_data` (a TFMOT quantization-aware model needs none:
           its ranges come from training).
  int16x8  int16 activations, int8 weights, calibrated like int8; fully
           integer too (LayerNorm is rewritten to ops with int16 kernels,
           see `int16_layer_norm`). The mode for models whose activations
           have outliers per-tensor int8 cannot hold (MiniLM: cosine 0.998
           vs float, where full int8 gives 0.42). For integer-only
           accelerators: LiteRT's int16 CPU kernels are unoptimised (MiniLM
           runs ~35x slower than fp32).

Representative data is checked before conversion (`representative`). Every
converted model's op list is read from the flatbuffer (`flatbuffer`): a Flex
(SELECT_TF) or custom op raises `UnsupportedOpsError` naming it, and an int8
/ int16x8 file that kept float ops raises `NotFullyIntegerError` naming them.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from typing import Mapping, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfreparam.export import flatbuffer, int16_layer_norm, model_io, parity, representative
from tfreparam.export.flatbuffer import UnsupportedOpsError

MODES = ("fp32", "fp16", "dynamic", "int8", "int16x8")
_FULL_INTEGER = ("int8", "int16x8")


class NotFullyIntegerError(ValueError):
    """A full-integer (int8 / int16x8) conversion kept float ops."""

    def __init__(self, mode, ops, uncalibrated_qat=False):
        self.ops = dict(ops)
        listed = ", ".join(f"{name} x{count}" for name, count in sorted(self.ops.items()))
        if uncalibrated_qat:
            remedy = ("This quantization-aware model leaves some tensors without a fake-quant range (e.g. the "
                      "running sum of a 3-input Add): pass representative_data=... (a few real batches) so the "
                      "converter calibrates them.")
        else:
            remedy = ("An op with no integer kernel, or a tensor without a usable calibrated range, stays float: "
                      "replace those ops or calibrate on more representative data, or export with mode='dynamic'.")
        super().__init__(
            f"mode={mode!r} asks for a fully integer file, but the converter left float ops: {listed}. {remedy}")


def convert(model: keras.Model, mode: str = "fp32", representative_data=None, seq_length="auto",
            batch_size: int | None = None, integer_io: bool | None = None) -> bytes:
    """The `.tflite` flatbuffer of `model` in `mode` (see the module docstring); builtin ops only.

    `seq_length` fixes unknown non-batch input axes ("auto": 128, or the
    model's max_position_embeddings if smaller; None: keep them dynamic).
    `representative_data`: see `tfreparam.export.representative`.
    `integer_io` (int8 only; default: True for quantization-aware models):
    float inputs and outputs become int8 tensors with the file's scales
    (integer inputs such as token ids stay as they are).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown TFLite mode {mode!r}; expected one of {MODES}.")
    model = model_io.prepare(model)
    qat = model_io.is_quantization_aware(model)
    if qat and mode not in ("int8", "dynamic"):
        raise ValueError(
            f"Model {model.name!r} is quantization-aware (TFMOT fake-quant layers): export it with "
            f"mode='int8' (its trained ranges become the int8 scales); got mode={mode!r}."
        )
    needs_data = mode in _FULL_INTEGER and not qat
    # A QAT model given representative inputs converts fully-integer: trained
    # fake-quant ranges are kept, tensors QAT leaves without ranges (LayerNorm
    # statistics, mask arithmetic) are calibrated instead of staying float.
    calibrate_qat = qat and mode == "int8" and representative_data is not None
    if needs_data and representative_data is None:
        raise ValueError(
            f"mode={mode!r} calibrates activation ranges and needs representative_data: dicts of input "
            "name -> array drawn from real inputs (for BERT, tokenized sentences, e.g. "
            "tfreparam.export.representative_text_batches(preprocessor, sentences))."
        )
    specs = model_io.input_specs(model, seq_length=model_io.resolve_seq_length(model, seq_length),
                                 batch_size=batch_size)
    feeds = representative.checked_feeds(representative_data, specs) if needs_data or calibrate_qat else None
    if mode == "int16x8":
        model = int16_layer_norm.with_int16_layer_norm(model)
    with tempfile.TemporaryDirectory(prefix="tfreparam_tflite_") as tmp:
        model_io.save_token_signature(model, tmp, specs)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.allow_custom_ops = False
        if mode != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        elif feeds is not None:
            converter.representative_dataset = representative.converter_dataset(feeds, specs)
            if mode == "int8":
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            else:
                # Ops without a 16x8 kernel may stay float builtins; `non_integer_ops` reports them.
                converter.target_spec.supported_ops = [
                    tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                    tf.lite.OpsSet.TFLITE_BUILTINS]
        if mode == "int8" and (qat if integer_io is None else integer_io):
            if all(spec.dtype.is_floating for spec in specs.values()):
                converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        try:
            with warnings.catch_warnings():
                # The calibrator uses the deprecated tf.lite.Interpreter internally.
                warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
                content = converter.convert()
        except Exception as error:  # ConverterError; its message lists the ops
            ops = _ops_from_converter_error(str(error))
            if ops:
                raise UnsupportedOpsError(ops, _short(str(error))) from error
            raise ValueError(f"TFLite conversion ({mode}) of model {model.name!r} failed: {_short(str(error))}") from error
    flatbuffer.check_builtin_only(content)
    if mode == "int16x8":
        missing = flatbuffer.int16_ops_without_kernel(content)
        if missing:
            raise ValueError(
                f"int16x8 quantized {missing} to int16, but the LiteRT runtime has no int16 kernel for "
                f"{'it' if len(missing) == 1 else 'them'}, so the model could not run. Top-level last-axis "
                "LayerNormalization layers are rewritten without it; this one is elsewhere (a LayerNorm over "
                "another axis, inside a nested or subclassed model, or tf.math.squared_difference in a layer). "
                "Export this model with mode='dynamic' or 'int8' instead."
            )
    if mode in _FULL_INTEGER:
        left_float = flatbuffer.non_integer_ops(content)
        if left_float:
            raise NotFullyIntegerError(mode, left_float, uncalibrated_qat=qat and feeds is None)
    return content


_OP_PATTERN = re.compile(r"'?(tf\.[A-Za-z0-9_]+)'?")


def _ops_from_converter_error(message: str) -> list[str]:
    if "not supported" not in message and "Flex" not in message and "legalize" not in message:
        return []
    return sorted({match.group(1) for match in _OP_PATTERN.finditer(message)})


def _short(message: str, limit: int = 1500) -> str:
    lines = [line for line in message.splitlines() if line.strip()]
    text = "\n".join(lines[:12])
    return text[:limit]


def tflite(model: keras.Model, path: str, mode: str = "fp32", representative_data=None, seq_length="auto",
           sample_inputs: Optional[Mapping[str, np.ndarray]] = None, check: bool = True,
           tolerance: Optional[parity.Tolerance] = None,
           integer_io: Optional[bool] = None) -> parity.ParityReport | None:
    """Writes `model` as a `.tflite` file at `path` and checks it against the Keras model.

    Args:
      model: a tf_keras Functional/Sequential model (factorized layers stay
        factorized; TFMOT pruning wrappers are stripped, zeros kept; a TFMOT
        quantization-aware model converts with mode="int8" and no data).
      path: output file (".tflite").
      mode: "fp32", "fp16", "dynamic", "int8" or "int16x8".
      representative_data: for int8/int16x8, from real inputs: a dict of input
        name -> array (a batch of examples), an iterable of such dicts, or a
        zero-argument callable returning one (the TFLite converter's
        `representative_dataset`). Checked before conversion: input names,
        shapes and finite values.
      seq_length: the fixed length of the sequence axes. "auto": 128, or the
        model's max_position_embeddings if smaller; None: dynamic.
      sample_inputs: inputs for the parity check (default: random valid
        inputs, batch 2).
      check: run `check_parity` and raise `ParityError` beyond `tolerance`
        (default: the mode's). The file is written either way.
      integer_io: int8 only: int8 input/output tensors instead of float ones
        (default: for quantization-aware models). The parity check quantizes
        and dequantizes with the file's scales.

    Returns the `ParityReport` (None with check=False).
    """
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"The TFLite path must end in .tflite; got {path!r}.")
    prepared = model_io.prepare(model)
    seq_length = model_io.resolve_seq_length(prepared, seq_length)
    content = convert(prepared, mode, representative_data, seq_length, integer_io=integer_io)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    if not check:
        return None
    if sample_inputs is None:
        sample_inputs = model_io.sample_inputs(prepared, seq_length=seq_length or 16)
    parity_mode = "qat" if model_io.is_quantization_aware(prepared) and mode == "int8" else mode
    report = parity.check_parity(prepared, path, sample_inputs, tolerance=tolerance, mode=parity_mode)
    return report.raise_if_failed()
