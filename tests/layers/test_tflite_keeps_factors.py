"""The TFLite converter keeps every layer factored: no weight-only subgraph gets folded into W.

A layer that computed `x·(U·V)` would convert to a file holding the full
(in, units) matrix; ours must stay within a few KB of its own parameter bytes.
"""

import numpy as np
import pytest
import tf_keras as keras

from tests.layers.registry import WIDE, layer_params, randomize_lora
from tfreparam.export.model_io import input_names
from tfreparam.export.runners import TFLiteRunner
from tfreparam.export.flatbuffer import op_names, weight_buffers
from tfreparam.export.tflite import convert

_FLATBUFFER_OVERHEAD = 16 * 1024  # op/tensor tables of a one-layer model


@pytest.mark.parametrize("case", layer_params())
def test_tflite_file_holds_factors_not_the_dense_kernel(case):
    inputs = keras.Input((WIDE,))
    layer = case.make_wide()
    model = keras.Model(inputs, layer(inputs))
    randomize_lora(layer)
    # The exporters' own conversion (Keras -> SavedModel -> converter, builtin ops checked).
    flatbuffer = convert(model, "fp32", seq_length=None)
    param_bytes = 4 * model.count_params()
    dense_bytes = 4 * (WIDE * WIDE + WIDE)
    if case.name != "lora_dense":  # a LoRA over a full Dense is not a compression
        assert param_bytes < 0.5 * dense_bytes
    assert len(flatbuffer) <= param_bytes + _FLATBUFFER_OVERHEAD, (len(flatbuffer), param_bytes)

    # No constant in the file is as large as the dense kernel.
    largest = max(buffer.size for buffer in weight_buffers(flatbuffer))
    if case.name != "lora_dense":
        assert largest < WIDE * WIDE, largest
    ops = op_names(flatbuffer)
    assert not [op for op in ops if op.startswith(("Flex", "CUSTOM"))], ops
    x = np.random.default_rng(0).normal(size=(3, WIDE)).astype("float32")
    y = TFLiteRunner(flatbuffer).run({input_names(model)[0]: x})["output_0"]
    np.testing.assert_allclose(y, model(x).numpy(), atol=1e-4)
