"""TFMOT models: pruned models keep their zeros in the .tflite file; QAT models convert to int8."""

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from tfreparam import export
from tfreparam.export.runners import TFLiteRunner
from tfreparam.export.flatbuffer import weight_buffers

IN, UNITS = 64, 48


@pytest.fixture(scope="module")
def pruned_model():
    inputs = keras.Input((IN,), name="x")
    hidden = keras.layers.Dense(UNITS, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(8, name="out")(hidden))
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.75, begin_step=0, frequency=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, IN)).astype("float32"), rng.normal(size=(32, 8)).astype("float32")
    pruned.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return pruned


@pytest.mark.parametrize("mode", ["fp32", "dynamic"])
def test_pruned_zeros_survive_in_the_file(pruned_model, tmp_path, mode):
    path = tmp_path / f"pruned_{mode}.tflite"
    report = export.tflite(pruned_model, str(path), mode=mode, seq_length=None)
    assert report.passed
    # The hidden kernel is the largest constant; 75 % of it was pruned to exact zeros.
    stripped = tfmot.sparsity.keras.strip_pruning(pruned_model)
    kernel = stripped.get_layer("hidden").kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.75, abs=0.01)
    largest = max(weight_buffers(path.read_bytes()), key=lambda b: b.size)
    assert largest.size == IN * UNITS
    assert np.mean(largest == 0) == pytest.approx(np.mean(kernel == 0), abs=0.005)


def test_qat_model_converts_to_int8_without_data(tmp_path):
    inputs = keras.Input((IN,), name="x")
    hidden = keras.layers.Dense(UNITS, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(8)(hidden))
    qat = tfmot.quantization.keras.quantize_model(model)
    qat.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, IN)).astype("float32")
    qat.fit(x, x[:, :8], epochs=1, batch_size=16, verbose=0)  # learns the activation ranges
    path = tmp_path / "qat.tflite"
    report = export.tflite(qat, str(path), mode="int8", seq_length=None)
    assert report.passed and report.tolerance.min_cosine == 0.99
    buffers = weight_buffers(path.read_bytes())
    assert any(b.dtype == np.int8 and b.size == IN * UNITS for b in buffers)
    # int8 in and out; the parity check went through the file's scales.
    runner = TFLiteRunner(str(path))
    assert runner.input_details["x"]["dtype"] == np.int8
    assert {d["dtype"] for d in runner.runner.get_output_details().values()} == {np.int8}
    assert report.outputs["output_0"].cosine_min >= 0.99
    with pytest.raises(ValueError, match="quantization-aware .* mode='int8'"):
        export.tflite(qat, str(tmp_path / "q16.tflite"), mode="fp16", seq_length=None)
