"""The TFLite converter keeps every layer factored: no weight-only subgraph gets folded into W.

A layer that computed `x·(U·V)` would convert to a file holding the full
(in, units) matrix; ours must stay within a few KB of its own parameter bytes.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter

from tests.layers.registry import WIDE, layer_params, randomize_lora

_FLATBUFFER_OVERHEAD = 16 * 1024  # op/tensor tables of a one-layer model


def _convert(model):
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _op_names(interpreter):
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


@pytest.mark.parametrize("case", layer_params())
def test_tflite_file_holds_factors_not_the_dense_kernel(case):
    inputs = keras.Input((WIDE,))
    layer = case.make_wide()
    model = keras.Model(inputs, layer(inputs))
    randomize_lora(layer)
    flatbuffer = _convert(model)
    param_bytes = 4 * model.count_params()
    dense_bytes = 4 * (WIDE * WIDE + WIDE)
    if case.name != "lora_dense":  # a LoRA over a full Dense is not a compression
        assert param_bytes < 0.5 * dense_bytes
    assert len(flatbuffer) <= param_bytes + _FLATBUFFER_OVERHEAD, (len(flatbuffer), param_bytes)

    interpreter = Interpreter(model_content=flatbuffer)
    ops = _op_names(interpreter)
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    x = np.random.default_rng(0).normal(size=(3, WIDE)).astype("float32")
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(y, model(x).numpy(), atol=1e-4)
