"""`onnx`: Keras -> ONNX with tf2onnx, dynamic batch and sequence axes, run by onnxruntime.

The model is traced with input signatures whose batch and sequence axes are
`None` (tf2onnx bakes in any known length, tf2onnx #1283/#1810), so the ONNX
inputs get symbolic dimensions. Graph outputs are renamed to the model's
output names (`sequence_output`, ...) instead of tf2onnx's `Identity:0`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Mapping, Optional

import numpy as np
import tf_keras as keras

from tfreparam.export import model_io, parity


def convert(model: keras.Model, opset: int = 17):
    """The `onnx.ModelProto` of `model` (fp32, dynamic batch/sequence axes)."""
    import tf2onnx

    if not isinstance(opset, int) or opset < 13:
        raise ValueError(f"opset must be an integer >= 13 (tf2onnx's well-tested range); got {opset!r}.")
    model = model_io.prepare(model)
    if model_io.is_quantization_aware(model):
        raise ValueError(
            f"Model {model.name!r} is quantization-aware (TFMOT fake-quant layers); export it to TFLite "
            "with mode='int8', or export the float model to ONNX."
        )
    specs = model_io.input_specs(model)
    function = model_io.positional_fn(model, specs)
    # The function's dict outputs, flattened (sorted keys): the order tf2onnx emits them in.
    names = model_io.output_names(model)
    try:
        with _without_reshape_optimizer():
            proto, _ = tf2onnx.convert.from_function(
                function, input_signature=list(specs.values()), opset=opset,
                custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])})
    except Exception as error:
        raise ValueError(f"tf2onnx could not convert model {model.name!r}: {error}") from error
    _rename_outputs(proto, names)
    return proto


@contextlib.contextmanager
def _without_reshape_optimizer():
    """Runs tf2onnx without its `reshape_optimizer` pass, restored afterwards.

    With tf2onnx 1.17 that pass, after back-to-back reshapes are merged,
    rewrites BERT's split-heads reshape `(tf.shape(x)[0], tf.shape(x)[1], h, d)`
    to read the shape of the *flattened* tensordot matmul, so onnxruntime fails
    at run time ("cannot be reshaped to the requested shape") for every batch
    and sequence length. The graph is correct and as fast without it.
    """
    from tf2onnx import optimizer

    original = optimizer._optimizers  # pylint: disable=protected-access
    optimizer._optimizers = type(original)((k, v) for k, v in original.items() if k != "reshape_optimizer")
    try:
        yield
    finally:
        optimizer._optimizers = original


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx has no handler for TF's Erfc (exact GELU in tf_keras uses it): erfc(x) = 1 - erf(x)."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]])
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])
    return node


def _rename_outputs(proto, names):
    graph = proto.graph
    if sorted(output.name for output in graph.output) == sorted(names):
        return  # tf2onnx already used the structured output names
    if len(graph.output) != len(names):
        raise ValueError(f"tf2onnx produced {len(graph.output)} outputs for {len(names)} model outputs {names}.")
    renames = {output.name: name for output, name in zip(graph.output, names)}
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for output in graph.output:
        output.name = renames[output.name]


def onnx(model: keras.Model, path: str, opset: int = 17, sample_inputs: Optional[Mapping[str, np.ndarray]] = None,
         check: bool = True, tolerance: Optional[parity.Tolerance] = None) -> parity.ParityReport | None:
    """Writes `model` as an ONNX file at `path` and checks it in onnxruntime.

    Args:
      model: a tf_keras model (float; TFMOT pruning wrappers are stripped).
      path: output file (".onnx").
      opset: ONNX opset (default 17).
      sample_inputs: parity inputs (default: random valid inputs, batch 2, length 16).
      check: raise `ParityError` beyond `tolerance` (default fp32: max-abs <= 1e-4).
    """
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"The ONNX path must end in .onnx; got {path!r}.")
    prepared = model_io.prepare(model)
    proto = convert(prepared, opset)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    if not check:
        return None
    if sample_inputs is None:
        sample_inputs = model_io.sample_inputs(prepared)
    report = parity.check_parity(prepared, path, sample_inputs, tolerance=tolerance, mode="fp32")
    return report.raise_if_failed()
