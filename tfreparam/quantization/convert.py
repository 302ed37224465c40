"""A fully-integer int8 TFLite converter for QAT models (private: `tfreparam.export` will take it over).

`tfreparam.export.tflite(mode="int8")` converts a QAT model from its trained
ranges alone; tensors no fake-quant covers (LayerNorm's inner mean / variance /
rsqrt, the attention-mask arithmetic) then stay float, with DEQUANTIZE /
QUANTIZE around them. Here the converter also gets representative inputs:
fake-quant ranges are kept where QAT set them, the rest are calibrated, and
`TFLITE_BUILTINS_INT8` makes any op without an int8 kernel a conversion error.
"""

from __future__ import annotations

import tempfile
import warnings

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfreparam.export import model_io
from tfreparam.export.tflite import _representative_fn, check_builtin_only


def int8_tflite(qat_model: keras.Model, representative_data, seq_length: int | None = 128) -> bytes:
    """The full-integer int8 `.tflite` flatbuffer of a QAT model; float32 inputs / outputs at the edges.

    `representative_data`: a dict of input name -> array (a batch) or an
    iterable of such dicts, from real inputs. Raises `UnsupportedOpsError`
    for Flex / custom ops.
    """
    if representative_data is None:
        raise ValueError(
            "int8_tflite needs representative_data (dicts of input name -> array) to calibrate the tensors "
            "QAT leaves without ranges (LayerNorm statistics, the attention mask)."
        )
    specs = model_io.input_specs(qat_model, seq_length=seq_length)
    with tempfile.TemporaryDirectory(prefix="tfreparam_qat_tflite_") as tmp:
        model_io.save_token_signature(qat_model, tmp, specs)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_fn(representative_data, specs)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.allow_custom_ops = False
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            flatbuffer = converter.convert()
    check_builtin_only(flatbuffer)
    return flatbuffer


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
