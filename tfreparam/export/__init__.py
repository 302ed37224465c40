"""Export tf_keras models to SavedModel, TFLite and ONNX, each checked against the Keras model.

    from tfreparam import export
    export.saved_model(model, "out/saved_model", preprocessor=preprocessor)
    export.tflite(model, "out/model.tflite", mode="int8", representative_data=batches)
    export.onnx(model, "out/model.onnx")
    report = export.check_parity(model, "out/model.onnx", inputs)

Every exporter runs `check_parity` on sample inputs by default and raises
`ParityError` when the artifact's outputs leave the mode's tolerance.

Modules, one job each (each imports only those before it in this list): `artifacts`
(format and size on disk), `model_io` (input specs, sample inputs, tracing),
`flatbuffer` (what a `.tflite` file holds), `representative` (calibration
data), `runners` (run an artifact), `parity` (compare it with Keras),
`int16_layer_norm`, then the exporters `saved_model`, `tflite`, `onnx`.
"""

from tfreparam.export.artifacts import artifact_bytes
from tfreparam.export.flatbuffer import UnsupportedOpsError
from tfreparam.export.onnx import onnx
from tfreparam.export.parity import (
    OutputParity,
    ParityError,
    ParityReport,
    Tolerance,
    check_parity,
    default_tolerance,
)
from tfreparam.export.representative import representative_text_batches
from tfreparam.export.runners import run_artifact
from tfreparam.export.saved_model import saved_model
from tfreparam.export.tflite import MODES as TFLITE_MODES, NotFullyIntegerError, tflite

__all__ = [
    "NotFullyIntegerError",
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
