"""QAT of every registered layer type: trains, stays within its quantization step, saves, converts to int8."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from ai_edge_litert.interpreter import Interpreter
from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper

from tests.layers.registry import MATRIX_IN, MATRIX_UNITS, layer_params, randomize_lora
from tfreparam import quantization as tq
from tfreparam.quantization import convert

_ROWS = 64


def _output_step(values):
    """One 8-bit step of a range covering `values` and 0 (how TFMOT sizes activation ranges)."""
    return (max(values.max(), 0.0) - min(values.min(), 0.0)) / 255.0


@pytest.fixture(scope="module", params=layer_params())
def qat_case(request):
    case = request.param
    keras.utils.set_random_seed(0)  # module fixtures are built before the per-test seeding
    rng = np.random.default_rng(0)
    x = rng.normal(size=(_ROWS, MATRIX_IN)).astype("float32")
    inputs = keras.Input((MATRIX_IN,), name="x")
    layer = case.make(activation="relu") if case.name.startswith("lora") else case.make()
    model = keras.Model(inputs, layer(inputs))
    randomize_lora(layer)
    qat = tq.quantize_model(model, calibration_data=x)
    return case, model, qat, x


def test_every_layer_is_wrapped_with_its_config(qat_case):
    case, model, qat, _ = qat_case
    assert tq.unquantized_layers(qat) == []
    wrapper = qat.layers[-1]
    assert isinstance(wrapper, quantize_wrapper.QuantizeWrapperV2)
    expected = tq.LoRAQuantizeConfig if case.name.startswith("lora") else tq.ReparameterizedDenseQuantizeConfig
    assert isinstance(wrapper.quantize_config, expected)


def test_fake_quant_output_is_within_a_few_quantization_steps_of_float(qat_case):
    _, model, qat, x = qat_case
    float_out = model(x).numpy()
    qat_out = qat(x, training=False).numpy()
    step = _output_step(float_out)
    error = np.abs(qat_out - float_out)
    # Each fake-quant (input, factor weights, intermediates, output) rounds by at most
    # half a step of its own range; propagated to the output, a layer with P of
    # them stays within ~P output steps (an empirical envelope with 2x margin
    # over the half steps), and about sqrt(P) half steps on average.
    wrapper = qat.layers[-1]
    points = 1 + len(wrapper._weight_vars) + len(wrapper._quantize_activations)  # + the input
    assert error.max() <= points * step, (error.max(), points, step)
    # Independent rounding errors add in quadrature on average.
    assert error.mean() <= np.sqrt(points) * step / 2, (error.mean(), points, step)
    # And it is quantized: values sit on a grid, so it is not the float output.
    assert error.max() > 1e-6


def test_intermediate_activations_between_factors_are_quantized(qat_case):
    case, _, qat, _ = qat_case
    wrapper = qat.layers[-1]
    names = {w.name.split("/")[-1].split(":")[0] for w in wrapper.non_trainable_weights}
    if case.name.startswith("lora"):
        assert {"merged_kernel_min", "merged_kernel_max"} <= names
    else:
        steps = len(wrapper.layer._plan.steps)
        assert steps >= 2
        assert {f"between_factors_{i}_min" for i in range(steps - 1)} <= names


def test_qat_model_trains_with_fit(qat_case):
    _, model, _, x = qat_case
    qat = tq.quantize_model(model, calibration_data=x)
    y = np.random.default_rng(1).normal(size=(_ROWS, MATRIX_UNITS)).astype("float32")
    before = [w.numpy().copy() for w in qat.trainable_weights]
    qat.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    history = qat.fit(x, y, batch_size=16, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, qat.trainable_weights))


def test_keras_round_trip_under_quantize_scope(qat_case, tmp_path):
    _, _, qat, x = qat_case
    path = os.path.join(tmp_path, "qat.keras")
    qat.save(path)
    with tq.quantize_scope():
        loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), qat(x, training=False).numpy(), atol=1e-6)


def test_int8_tflite_is_integer_only_and_matches_the_qat_model(qat_case):
    _, _, qat, x = qat_case
    flatbuffer = convert.int8_tflite(qat, {"x": x[:16]}, seq_length=None)
    assert convert.float_ops(flatbuffer) == {}
    interpreter = Interpreter(model_content=flatbuffer)
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    int8_weights = [t for t in interpreter.get_tensor_details() if t["dtype"] == np.int8 and "MatMul" in t["name"]]
    assert int8_weights, "no int8 matmul weights in the file"
    runner = interpreter.get_signature_runner()
    out = next(iter(runner(x=x).values()))
    expected = qat(x, training=False).numpy()
    step = _output_step(expected)
    # Same integer arithmetic up to rounding of the requantization multipliers.
    assert np.abs(out - expected).max() <= 2 * step + 1e-6, (np.abs(out - expected).max(), step)
