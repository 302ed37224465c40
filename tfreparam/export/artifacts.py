"""What an export artifact is on disk: its format (from the path) and its size."""

from __future__ import annotations

import os


def artifact_format(artifact: str) -> str:
    """'tflite', 'onnx' or 'saved_model', from the path."""
    path = os.fspath(artifact)
    if path.endswith(".tflite"):
        return "tflite"
    if path.endswith(".onnx"):
        return "onnx"
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb")):
        return "saved_model"
    raise ValueError(
        f"{path!r} is not an export artifact: expected a .tflite file, an .onnx file or a SavedModel "
        "directory (with saved_model.pb)."
    )


def artifact_bytes(artifact: str) -> int:
    """Size on disk of a `.tflite` / `.onnx` file or a SavedModel directory (all its files)."""
    if os.path.isdir(artifact):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(artifact) for f in files)
    return os.path.getsize(artifact)
