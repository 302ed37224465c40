"""`tflite`: Keras -> `.tflite` with builtin ops only, in five numeric modes.

The route is Model Garden's: the model is traced into one serving function,
saved as a SavedModel and converted from there (`from_saved_model` keeps the
signature's input/output names, which the LiteRT signature runner uses).
Sequence axes are fixed to `seq_length` (TFLite kernels are fastest with
static shapes); the batch axis stays dynamic.

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

Every converted model's op list is read from the flatbuffer; a Flex
(SELECT_TF) or custom op raises `UnsupportedOpsError` naming it.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from typing import Callable, Iterable, Mapping, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfreparam.export import int16_layer_norm, model_io, parity

MODES = ("fp32", "fp16", "dynamic", "int8", "int16x8")


class UnsupportedOpsError(ValueError):
    """The model uses TensorFlow ops that have no TFLite builtin kernel."""

    def __init__(self, ops, detail=""):
        self.ops = sorted(set(ops))
        super().__init__(
            f"The model uses ops with no TFLite builtin: {', '.join(self.ops) or '(see below)'}. TFLite "
            "exports here use builtin ops only (no Flex / SELECT_TF_OPS, which need the full TensorFlow "
            "runtime on the device). Rewrite the layer with builtin-friendly ops (e.g. keep string "
            "processing outside the model) or export to SavedModel/ONNX instead." + (f"\n{detail}" if detail else "")
        )


def op_names(flatbuffer: bytes) -> list[str]:
    """Sorted names of the operators in a `.tflite` flatbuffer (custom/Flex ops by their custom code)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    names = set()
    for code in model.operatorCodes:
        if code.customCode:
            name = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            names.add(name if name.startswith("Flex") else f"CUSTOM:{name}")
        else:
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            names.add(_builtin_name(builtin))
    return sorted(names)


def _builtin_name(code: int) -> str:
    from tensorflow.lite.python import schema_py_generated as schema

    for name, value in vars(schema.BuiltinOperator).items():
        if value == code and not name.startswith("_"):
            return name
    return f"BUILTIN_{code}"


def check_builtin_only(flatbuffer: bytes) -> list[str]:
    """The op names; raises `UnsupportedOpsError` if any is a Flex or custom op."""
    names = op_names(flatbuffer)
    bad = [name for name in names if name.startswith(("Flex", "CUSTOM"))]
    if bad:
        raise UnsupportedOpsError(bad)
    return names


# Ops the converter quantizes to int16 in 16x8 mode although the LiteRT runtime
# (ai-edge-litert 2.3) has no int16 kernel for them: SQUARED_DIFFERENCE (Keras'
# LayerNorm variance; see int16_layer_norm) fails to invoke, or aborts the process.
_NO_INT16_KERNEL = ("SQUARED_DIFFERENCE",)


def _int16_ops_without_kernel(flatbuffer: bytes) -> list[str]:
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    found = set()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = _builtin_name(max(code.builtinCode, code.deprecatedBuiltinCode))
            if name in _NO_INT16_KERNEL and any(
                    i >= 0 and subgraph.tensors[i].type == schema.TensorType.INT16 for i in op.inputs):
                found.add(name)
    return sorted(found)


def weight_buffers(flatbuffer: bytes) -> list[np.ndarray]:
    """The constant tensors stored in the file, decoded with their dtypes (for size and sparsity checks)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16,
              schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32,
              schema.TensorType.INT16: np.int16, schema.TensorType.INT64: np.int64,
              schema.TensorType.UINT8: np.uint8}
    result = []
    seen = set()
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            buffer = model.buffers[tensor.buffer]
            if tensor.buffer in seen or buffer.data is None or len(buffer.data) == 0:
                continue
            seen.add(tensor.buffer)
            dtype = dtypes.get(tensor.type)
            if dtype is not None:
                result.append(np.frombuffer(bytes(bytearray(buffer.data)), dtype=dtype))
    return result


def _representative_fn(data, specs) -> Callable:
    """Converter callback yielding named input dicts (a dict of arrays, or an iterable of dicts)."""
    if isinstance(data, Mapping):
        data = [data]

    def generate():
        count = 0
        for item in data:
            if not isinstance(item, Mapping):
                raise TypeError(
                    "representative_data must be dicts of input name -> array (one batch each); got "
                    f"{type(item).__name__}."
                )
            size = len(next(iter(item.values())))
            for row in range(size):  # one example at a time: the converter's convention
                yield {name: np.asarray(item[name][row:row + 1]).astype(spec.dtype.as_numpy_dtype)
                       for name, spec in specs.items()}
                count += 1
        if not count:
            raise ValueError("representative_data is empty.")

    return generate


def convert(model: keras.Model, mode: str = "fp32", representative_data=None, seq_length: int | None = 128,
            batch_size: int | None = None, integer_io: bool | None = None) -> bytes:
    """The `.tflite` flatbuffer of `model` in `mode` (see the module docstring); builtin ops only.

    `seq_length` fixes unknown non-batch input axes (None: keep them dynamic).
    `integer_io` (int8 only; default: True for quantization-aware models):
    float inputs and outputs become int8 tensors with the file's scales
    (integer inputs such as token ids stay as they are).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown TFLite mode {mode!r}; expected one of {MODES}.")
    model = model_io.prepare(model)
    qat = model_io.is_quantization_aware(model)
    if mode == "int16x8" and not qat:
        model = int16_layer_norm.with_int16_layer_norm(model)
    if qat and mode not in ("int8", "dynamic"):
        raise ValueError(
            f"Model {model.name!r} is quantization-aware (TFMOT fake-quant layers): export it with "
            f"mode='int8' (its trained ranges become the int8 scales); got mode={mode!r}."
        )
    needs_data = mode in ("int8", "int16x8") and not qat
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
    specs = model_io.input_specs(model, seq_length=seq_length, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="tfreparam_tflite_") as tmp:
        model_io.save_token_signature(model, tmp, specs)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.allow_custom_ops = False
        if mode != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        elif needs_data or calibrate_qat:
            converter.representative_dataset = _representative_fn(representative_data, specs)
            if mode == "int8":
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            else:
                # Ops without a 16x8 kernel (CAST, GATHER of int ids...) stay float builtins.
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
                flatbuffer = converter.convert()
        except Exception as error:  # ConverterError; its message lists the ops
            ops = _ops_from_converter_error(str(error))
            if ops:
                raise UnsupportedOpsError(ops, _short(str(error))) from error
            raise ValueError(f"TFLite conversion ({mode}) of model {model.name!r} failed: {_short(str(error))}") from error
    check_builtin_only(flatbuffer)
    if mode == "int16x8":
        missing = _int16_ops_without_kernel(flatbuffer)
        if missing:
            raise ValueError(
                f"int16x8 quantized {missing} to int16, but the LiteRT runtime has no int16 kernel for "
                f"{'it' if len(missing) == 1 else 'them'}, so the model could not run. Top-level last-axis "
                "LayerNormalization layers are rewritten without it; this one is elsewhere (a LayerNorm over "
                "another axis, inside a nested or subclassed model, or tf.math.squared_difference in a layer). "
                "Export this model with mode='dynamic' or 'int8' instead."
            )
    return flatbuffer


_OP_PATTERN = re.compile(r"'?(tf\.[A-Za-z0-9_]+)'?")


def _ops_from_converter_error(message: str) -> list[str]:
    if "not supported" not in message and "Flex" not in message and "legalize" not in message:
        return []
    return sorted({match.group(1) for match in _OP_PATTERN.finditer(message)})


def _short(message: str, limit: int = 1500) -> str:
    lines = [line for line in message.splitlines() if line.strip()]
    text = "\n".join(lines[:12])
    return text[:limit]


def tflite(model: keras.Model, path: str, mode: str = "fp32", representative_data=None, seq_length: int = 128,
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
      representative_data: for int8/int16x8: a dict of input name -> array
        (batch of examples) or an iterable of such dicts, from real inputs.
      seq_length: the fixed length of the sequence axes.
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
    flatbuffer = convert(prepared, mode, representative_data, seq_length, integer_io=integer_io)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(flatbuffer)
    if not check:
        return None
    if sample_inputs is None:
        sample_inputs = model_io.sample_inputs(prepared, seq_length=seq_length or 16)
    parity_mode = "qat" if model_io.is_quantization_aware(prepared) and mode == "int8" else mode
    report = parity.check_parity(prepared, path, sample_inputs, tolerance=tolerance, mode=parity_mode)
    return report.raise_if_failed()


def representative_text_batches(preprocessor, sentences: Iterable[str], batch_size: int = 16) -> list[dict]:
    """Tokenized batches (dicts of int32 arrays) of real `sentences`, for int8 calibration.

    `preprocessor` is a `bert.preprocessing.Preprocessor` (or any callable from
    a string tensor to the model-input dict); its `seq_length` must match the
    export's.
    """
    sentences = list(sentences)
    if not sentences:
        raise ValueError("representative_text_batches needs at least one sentence.")
    return [{name: value.numpy() for name, value in preprocessor(tf.constant(sentences[i:i + batch_size])).items()}
            for i in range(0, len(sentences), batch_size)]


def float_ops(flatbuffer: bytes) -> dict[str, int]:
    """Ops (name -> count) that read or write a float32 tensor, other than the edge QUANTIZE / DEQUANTIZE."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    counts: dict[str, int] = {}
    for op in interpreter._get_ops_details():
        indices = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if any(tensors[i]["dtype"] == np.float32 for i in indices):
            counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return counts
