"""Converted files kept by what they were converted from: the same model, mode and length convert once.

A sweep's runs, the runs of --preset=thorough and a re-run after a changed
setting all convert the same original encoder (or a task's teacher) again:
for MiniLM each TFLite file takes 10-20 s and its ONNX int8 file ~20 s. The
cache keys a file by everything its conversion reads: the model's
architecture (its JSON) and weights, the format, mode and length, the
representative data, the installed converters' versions and the source of
our export code. A file whose key matches is reused byte for byte; anything
else converts afresh, so a stale file cannot be picked up.

    cache = ConversionCache("reports/sweep/conversions")
    content = cache.tflite(encoder, "dynamic", representative)          # bytes
    cache.onnx_int8(encoder, "out/original_int8.onnx")                  # a file
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from typing import Callable

import numpy as np

# Our code that shapes a converted file: a change to any of it changes every key.
_CODE = ("recipes/exports.py", "recipes/task_export.py", "tfreparam/export")
_PACKAGES = ("tensorflow", "tf_keras", "tf2onnx", "onnxruntime", "onnx")


class ConversionCache:
    """Files under `directory`, one per key; `hits` names what was reused (for the report)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.hits: list[str] = []

    def tflite(self, model, int8: str | None, representative=None, label: str = "",
               seq_length: int | None = None) -> bytes:
        """`recipes.exports.tflite_bytes` of `model`, converted only if no file of the same key is kept."""
        from recipes import exports

        data = exports.calibration_data(int8, representative)  # what the converter reads
        path = self.file(model, ("tflite", int8, seq_length, data), ".tflite", lambda target: exports.write(
            target, exports.tflite_bytes(model, int8, representative, seq_length)), label)
        with open(path, "rb") as f:
            return f.read()

    def onnx_int8(self, model, target: str, label: str = "") -> str:
        """`recipes.exports.keras_onnx_int8` of `model` written at `target`, converted only if not kept."""
        from recipes import exports

        # The weight width follows the CPU (7-bit without VNNI, see `onnx_int8`): part of the file, so of the key.
        path = self.file(model, ("onnx_int8", exports.cpu_has_vnni()), ".onnx",
                         lambda path: exports.keras_onnx_int8(model, path), label)
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        shutil.copyfile(path, target)
        return target

    def file(self, model, parts, suffix: str, make: Callable[[str], object], label: str = "") -> str:
        """The kept file of `model` converted as `parts` say (everything the conversion reads besides the model);
        `make(path)` writes it there first if no such file is kept. Returns its path in the cache."""
        key = fingerprint(model, *parts)
        path = os.path.join(self.directory, key + suffix)
        if os.path.isfile(path):
            self.hits.append(label or key)
            return path
        os.makedirs(self.directory, exist_ok=True)
        # Written beside its final name and renamed: a reader (another run, another process) never sees half a file.
        with tempfile.TemporaryDirectory(dir=self.directory) as scratch:
            partial = os.path.join(scratch, "file" + suffix)
            make(partial)
            os.replace(partial, path)
        return path


def fingerprint(model, *parts) -> str:
    """A hash of `model` (architecture and weights), of `parts` (JSON-able values or arrays), and of the code."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(_code_version().encode())
    digest.update(model.to_json().encode())
    for weight in model.weights:
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{weight.name}|{value.dtype}|{value.shape}".encode())
        digest.update(value.tobytes())
    _update(digest, parts)
    return digest.hexdigest()


def _update(digest, value) -> None:
    if isinstance(value, dict):
        for k in sorted(value):
            digest.update(f"<{k}>".encode())
            _update(digest, value[k])
    elif isinstance(value, (list, tuple)):
        digest.update(f"[{len(value)}".encode())
        for item in value:
            _update(digest, item)
    elif isinstance(value, np.ndarray) or hasattr(value, "numpy"):
        array = np.ascontiguousarray(np.asarray(value))
        digest.update(f"{array.dtype}|{array.shape}".encode())
        digest.update(array.tobytes())
    else:
        digest.update(repr(value).encode())


@functools.lru_cache(maxsize=None)
def _code_version() -> str:
    from importlib import metadata

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.blake2b(digest_size=16)
    for name in _PACKAGES:
        try:
            digest.update(f"{name}={metadata.version(name.replace('_', '-'))}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=none".encode())
    for entry in _CODE:
        path = os.path.join(root, entry)
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(d, f) for d, _, names in os.walk(path) for f in names if f.endswith(".py"))
        for file in files:
            with open(file, "rb") as f:
                digest.update(os.path.relpath(file, root).encode())
                digest.update(f.read())
    return digest.hexdigest()
