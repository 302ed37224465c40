"""Export tf_keras models to SavedModel, TFLite and ONNX, each checked against the Keras model.

    from tfreparam import export
    export.saved_model(model, "out/saved_model", preprocessor=preprocessor)
    export.tflite(model, "out/model.tflite", mode="int8", representative_data=batches)
    export.onnx(model, "out/model.onnx")
    report = export.check_parity(model, "out/model.onnx", inputs)

Every exporter runs `check_parity` on sample inputs by default and raises
`ParityError` when the artifact's outputs leave the mode's tolerance.
"""

from tfreparam.export.onnx import onnx
from tfreparam.export.parity import (
    OutputParity,
    ParityError,
    ParityReport,
    Tolerance,
    artifact_bytes,
    check_parity,
    default_tolerance,
    run_artifact,
)
from tfreparam.export.saved_model import saved_model
from tfreparam.export.tflite import (
    MODES as TFLITE_MODES,
    UnsupportedOpsError,
    representative_text_batches,
    tflite,
)

__all__ = [
    "OutputParity",
    "ParityError",
    "ParityReport",
    "TFLITE_MODES",
    "Tolerance",
    "UnsupportedOpsError",
    "artifact_bytes",
    "check_parity",
    "default_tolerance",
    "onnx",
    "representative_text_batches",
    "run_artifact",
    "saved_model",
    "tflite",
]
