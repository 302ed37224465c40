"""What a converted `.tflite` flatbuffer holds: its ops, their tensor types, its constant buffers.

Read with LiteRT's own flatbuffer schema (`ai_edge_litert.schema_py_generated`
and `ai_edge_litert.tools.flatbuffer_utils`), not by loading an interpreter,
so a file is inspected without allocating or running it.
"""

from __future__ import annotations

import functools

import numpy as np


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


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _read(flatbuffer: bytes):
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))


@functools.lru_cache(maxsize=None)
def _builtin_names() -> dict:
    return {value: name for name, value in vars(_schema().BuiltinOperator).items() if not name.startswith("_")}


def _op_name(code) -> str:
    if code.customCode:
        name = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
        return name if name.startswith("Flex") else f"CUSTOM:{name}"
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    return _builtin_names().get(builtin, f"BUILTIN_{builtin}")


def _operators(model):
    """(op name, input tensors, output tensors) of every operator in every subgraph."""
    names = [_op_name(code) for code in model.operatorCodes]
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            yield (names[op.opcodeIndex],
                   [subgraph.tensors[i] for i in op.inputs if i >= 0],
                   [subgraph.tensors[i] for i in op.outputs if i >= 0])


def op_names(flatbuffer: bytes) -> list[str]:
    """Sorted names of the operators in a `.tflite` flatbuffer (custom/Flex ops by their custom code)."""
    return sorted({_op_name(code) for code in _read(flatbuffer).operatorCodes})


def check_builtin_only(flatbuffer: bytes) -> list[str]:
    """The op names; raises `UnsupportedOpsError` if any is a Flex or custom op."""
    names = op_names(flatbuffer)
    bad = [name for name in names if name.startswith(("Flex", "CUSTOM"))]
    if bad:
        raise UnsupportedOpsError(bad)
    return names


def float_ops(flatbuffer: bytes) -> dict[str, int]:
    """Ops (name -> count) that read or write a float32 tensor, other than the edge QUANTIZE / DEQUANTIZE."""
    float32 = _schema().TensorType.FLOAT32
    counts: dict[str, int] = {}
    for name, inputs, outputs in _operators(_read(flatbuffer)):
        if name not in ("QUANTIZE", "DEQUANTIZE") and any(t.type == float32 for t in inputs + outputs):
            counts[name] = counts.get(name, 0) + 1
    return counts


_INTEGER_TYPES = ("INT8", "UINT8", "INT16", "INT32", "INT64", "BOOL")


def non_integer_ops(flatbuffer: bytes) -> dict[str, int]:
    """Float ops (name -> count) in a file meant to be fully integer.

    Not counted: QUANTIZE / DEQUANTIZE (they only convert at float edges) and
    a CAST of an integer tensor to float (a BERT's int32 attention mask enters
    the float graph that way and is quantized right after; there is no
    integer route for it, so full-integer BERT files always have one).
    """
    types = _schema().TensorType
    integer = {getattr(types, name) for name in _INTEGER_TYPES}
    float32 = types.FLOAT32
    counts: dict[str, int] = {}
    for name, inputs, outputs in _operators(_read(flatbuffer)):
        if name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if name == "CAST" and inputs and all(t.type in integer for t in inputs):
            continue
        if any(t.type == float32 for t in inputs + outputs):
            counts[name] = counts.get(name, 0) + 1
    return counts


# Ops the converter quantizes to int16 in 16x8 mode although the LiteRT runtime
# (ai-edge-litert 2.3) has no int16 kernel for them: SQUARED_DIFFERENCE (Keras'
# LayerNorm variance; see int16_layer_norm) fails to invoke, or aborts the process.
_NO_INT16_KERNEL = ("SQUARED_DIFFERENCE",)


def int16_ops_without_kernel(flatbuffer: bytes) -> list[str]:
    """Ops given int16 inputs that LiteRT cannot run in int16 (see `_NO_INT16_KERNEL`)."""
    int16 = _schema().TensorType.INT16
    return sorted({name for name, inputs, _ in _operators(_read(flatbuffer))
                   if name in _NO_INT16_KERNEL and any(t.type == int16 for t in inputs)})


def weight_buffers(flatbuffer: bytes) -> list[np.ndarray]:
    """The constant tensors stored in the file, decoded with their dtypes (for size and sparsity checks)."""
    types = _schema().TensorType
    dtypes = {types.FLOAT32: np.float32, types.FLOAT16: np.float16, types.INT8: np.int8, types.INT32: np.int32,
              types.INT16: np.int16, types.INT64: np.int64, types.UINT8: np.uint8}
    model = _read(flatbuffer)
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
