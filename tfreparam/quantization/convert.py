"""Fully-integer int8 TFLite of a QAT model (kept for callers; `tfreparam.export.tflite` does the work).

`tfreparam.export.tflite(qat_model, path, mode="int8", representative_data=...)`
keeps the ranges QAT trained, calibrates the tensors no fake-quant covers
(LayerNorm statistics, the attention mask) on the representative inputs, and
allows only `TFLITE_BUILTINS_INT8`, so any op without an int8 kernel is a
conversion error rather than a float island.
"""

from __future__ import annotations

import tf_keras as keras

from tfreparam.export.flatbuffer import float_ops  # noqa: F401  (re-exported)
from tfreparam.export.tflite import convert


def int8_tflite(qat_model: keras.Model, representative_data, seq_length="auto") -> bytes:
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
    return convert(qat_model, "int8", representative_data, seq_length, integer_io=False)
