"""Run exported artifacts on named numpy inputs: LiteRT, onnxruntime and SavedModel.

Each runner loads its artifact once; `run(inputs)` returns a dict of named
float64 outputs, and `latency(inputs)` times repeated calls. `run_artifact`
loads and runs an artifact in one call.
"""

from __future__ import annotations

import os
import time
from typing import Mapping

import numpy as np

from tfreparam.export.artifacts import artifact_format


def _check_names(expected, given, where):
    missing = sorted(set(expected) - set(given))
    if missing:
        raise ValueError(f"{where} needs inputs {sorted(expected)}; missing {missing}.")


class _Runner:
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict:
        raise NotImplementedError

    @property
    def sequence_length(self) -> int | None:
        """The sequence length the artifact's token inputs are fixed to, or None where any length runs."""
        return None

    def latency(self, inputs: Mapping[str, np.ndarray], repeats: int = 20, warmup: int = 3) -> dict:
        """Wall-clock milliseconds per call: median, mean and min over `repeats`."""
        for _ in range(warmup):
            self.run(inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.run(inputs)
            times.append((time.perf_counter() - start) * 1e3)
        return {"median_ms": float(np.median(times)), "mean_ms": float(np.mean(times)),
                "min_ms": float(np.min(times)), "repeats": repeats}


class TFLiteRunner(_Runner):
    """The LiteRT interpreter through a signature runner (inputs/outputs by name)."""

    def __init__(self, path_or_bytes, signature: str = "serving_default", num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(path_or_bytes, (bytes, bytearray)):
            self.interpreter = Interpreter(model_content=bytes(path_or_bytes), num_threads=num_threads)
        else:
            self.interpreter = Interpreter(model_path=str(path_or_bytes), num_threads=num_threads)
        signatures = self.interpreter.get_signature_list()
        if signature not in signatures:
            if len(signatures) != 1:
                raise ValueError(f"The .tflite file has signatures {sorted(signatures)}; no {signature!r}.")
            signature = next(iter(signatures))
        self.signature = signature
        self.runner = self.interpreter.get_signature_runner(signature)
        self.input_details = self.runner.get_input_details()

    @property
    def sequence_length(self):
        return _fixed_length(d["shape_signature"] for d in self.input_details.values())

    def run(self, inputs):
        _check_names(self.input_details, inputs, "The .tflite model")
        feed = {}
        for name, detail in self.input_details.items():
            value = np.asarray(inputs[name])
            expected = detail["shape_signature"]
            if len(expected) != value.ndim or any(e not in (-1, v) for e, v in zip(expected, value.shape)):
                raise ValueError(
                    f"Input {name!r} has shape {value.shape}; the .tflite model takes {list(expected)} "
                    "(-1 = any). TFLite exports fix the sequence length (seq_length=...)."
                )
            feed[name] = _quantize(value, detail)
        outputs = self.runner(**feed)
        details = self.runner.get_output_details()
        return {name: _dequantize(value, details[name]) for name, value in outputs.items()}


def _fixed_length(shapes) -> int | None:
    """The size the rank-2 (batch, sequence) inputs fix their second axis to; None where every one is dynamic
    (a dynamic axis: -1 in TFLite, None or a symbolic name in ONNX and TensorFlow)."""
    fixed = {int(shape[1]) for shape in map(list, shapes) if len(shape) == 2
             and isinstance(shape[1], (int, np.integer)) and shape[1] > 0}
    if len(fixed) > 1:
        raise ValueError(f"The artifact's token inputs fix different sequence lengths {sorted(fixed)}; re-export "
                         "it with one seq_length for every input.")
    return fixed.pop() if fixed else None


def _quantize(value, detail):
    """Float inputs into an integer-input model (int8 I/O) go through its input scale."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and scale and np.issubdtype(value.dtype, np.floating):
        info = np.iinfo(dtype)
        return np.clip(np.round(value / scale + zero_point), info.min, info.max).astype(dtype)
    return value.astype(dtype)


def _dequantize(value, detail):
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.issubdtype(value.dtype, np.integer) and scale:
        return (value.astype(np.float64) - zero_point) * scale
    return value.astype(np.float64)


class OnnxRunner(_Runner):
    def __init__(self, path: str, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def sequence_length(self):
        # onnxruntime gives a dynamic axis as its symbolic name (a string) or None.
        return _fixed_length(i.shape for i in self.inputs.values())

    _DTYPES = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32,
               "tensor(double)": np.float64, "tensor(bool)": np.bool_}

    def run(self, inputs):
        _check_names(self.inputs, inputs, "The ONNX model")
        feed = {name: np.asarray(inputs[name]).astype(self._DTYPES.get(i.type, None) or np.asarray(inputs[name]).dtype)
                for name, i in self.inputs.items()}
        values = self.session.run(self.output_names, feed)
        return {name: np.asarray(v, np.float64) for name, v in zip(self.output_names, values)}


class SavedModelRunner(_Runner):
    """A SavedModel signature; `path_or_loaded` is a directory or an already loaded SavedModel."""

    def __init__(self, path_or_loaded, signature: str = "serving_default"):
        import tensorflow as tf

        self._tf = tf
        loaded = path_or_loaded
        if not hasattr(loaded, "signatures"):
            loaded = tf.saved_model.load(str(path_or_loaded))
        if signature not in loaded.signatures:
            raise ValueError(f"The SavedModel has signatures {sorted(loaded.signatures)}; no {signature!r}.")
        self._loaded = loaded  # keeps the variables alive
        self.function = loaded.signatures[signature]
        self.specs = self.function.structured_input_signature[1]

    @property
    def sequence_length(self):
        return _fixed_length(spec.shape.as_list() for spec in self.specs.values())

    def run(self, inputs):
        _check_names(self.specs, inputs, "The SavedModel signature")
        feed = {name: self._tf.constant(np.asarray(inputs[name]), dtype=spec.dtype) for name, spec in self.specs.items()}
        return {name: np.asarray(value, np.float64) for name, value in self.function(**feed).items()}


def runner_for(artifact: str, signature: str = "serving_default", threads: int | None = None) -> _Runner:
    """A runner of `artifact` by its format; `threads` for TFLite and ONNX Runtime (None: their default)."""
    kind = artifact_format(artifact)
    if kind == "tflite":
        return TFLiteRunner(artifact, signature, num_threads=threads)
    if kind == "onnx":
        return OnnxRunner(artifact, threads=threads)
    return SavedModelRunner(artifact, signature)


def run_artifact(artifact: str, inputs: Mapping[str, np.ndarray], signature: str = "serving_default") -> dict:
    """Runs an exported artifact on named numpy inputs -> dict of named float64 outputs."""
    if not os.path.exists(artifact):
        raise ValueError(f"No artifact at {artifact!r}.")
    return runner_for(artifact, signature).run(inputs)
