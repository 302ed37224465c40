"""Calibration data for int8 / int16x8: every accepted form, and bad data refused before conversion."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.export.standalone import REPO
from tfreparam import export
from tfreparam.export import model_io

_WIDTH = 24


@pytest.fixture(scope="module")
def dense_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((_WIDTH,), name="x")
    return keras.Model(inputs, keras.layers.Dense(8, name="out")(inputs))


@pytest.fixture
def no_conversion(monkeypatch):
    """Fails the test if the exporter gets as far as saving the model for the converter."""

    def refuse(*args, **kwargs):
        raise AssertionError("the exporter started converting before checking representative_data")

    monkeypatch.setattr(model_io, "save_token_signature", refuse)


def _batches(count=4, rows=16):
    rng = np.random.default_rng(0)
    return [{"x": rng.normal(size=(rows, _WIDTH)).astype("float32")} for _ in range(count)]


def test_inf_is_refused_without_crashing_the_process(tmp_path):
    """An inf in calibration data used to segfault the Python process (exit 139) inside the calibrator."""
    script = textwrap.dedent(f"""
        import numpy as np, tf_keras as keras
        from tfreparam import export
        inputs = keras.Input(({_WIDTH},), name="x")
        model = keras.Model(inputs, keras.layers.Dense(8)(inputs))
        data = {{"x": np.full((64, {_WIDTH}), np.inf, "float32")}}
        try:
            export.tflite(model, {str(tmp_path / "a.tflite")!r}, mode="int8", representative_data=data)
        except ValueError as error:
            print("REFUSED", error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "REFUSED representative_data feed 0: input 'x' has 1536 non-finite values" in result.stdout
    assert not (tmp_path / "a.tflite").exists()


def test_nan_column_is_refused_before_conversion(dense_model, tmp_path, no_conversion):
    """A NaN column used to give a 'full-integer' file with float FULLY_CONNECTED ops that passed parity."""
    data = _batches()
    data[2]["x"][:, 5] = np.nan
    with pytest.raises(ValueError, match=r"feed 2: input 'x' has 16 non-finite values \(inf / NaN\)"):
        export.tflite(dense_model, str(tmp_path / "m.tflite"), mode="int8", representative_data=data)


def test_converter_style_callables_are_accepted(dense_model, tmp_path):
    """The TFLite converter's convention: a zero-argument callable returning a generator of feeds."""
    data = _batches()

    def named():  # dicts of input name -> batch
        yield from data

    def positional():  # lists of arrays in input order, one example each
        for batch in data:
            for row in batch["x"]:
                yield [row[np.newaxis]]

    reference = export.tflite(dense_model, str(tmp_path / "list.tflite"), mode="int8", representative_data=data)
    for name, callable_data in (("named", named), ("positional", positional)):
        report = export.tflite(dense_model, str(tmp_path / f"{name}.tflite"), mode="int8",
                               representative_data=callable_data)
        assert report.passed, report
        # The same examples calibrate the same scales: the file is the one a list gives.
        assert (tmp_path / f"{name}.tflite").read_bytes() == (tmp_path / "list.tflite").read_bytes()
    assert reference.passed


def test_a_tf_data_dataset_of_feeds_is_accepted(dense_model, tmp_path):
    dataset = tf.data.Dataset.from_tensor_slices({"x": np.concatenate([b["x"] for b in _batches()])}).batch(16)
    report = export.tflite(dense_model, str(tmp_path / "m.tflite"), mode="int8", representative_data=dataset)
    assert report.passed, report


def test_wrong_input_name_names_the_expected_inputs(dense_model, tmp_path, no_conversion):
    with pytest.raises(ValueError, match=r"feed 0 has inputs \['y'\]; the model's inputs are x: \(batch, 24\) float32"):
        export.tflite(dense_model, str(tmp_path / "m.tflite"), mode="int8",
                      representative_data={"y": np.ones((4, _WIDTH), "float32")})


def test_wrong_shape_names_the_expected_shape(dense_model, tmp_path, no_conversion):
    with pytest.raises(ValueError, match=r"feed 1: input 'x' has shape \(4, 12\); the model takes \(batch, 24\)"):
        export.tflite(dense_model, str(tmp_path / "m.tflite"), mode="int8",
                      representative_data=_batches(1) + [{"x": np.ones((4, 12), "float32")}])


def test_empty_and_unusable_data(dense_model, tmp_path, no_conversion):
    with pytest.raises(ValueError, match=r"representative_data is empty: give at least one batch of inputs \(x: "):
        export.tflite(dense_model, str(tmp_path / "m.tflite"), mode="int8", representative_data=lambda: iter(()))
    with pytest.raises(TypeError, match=r"representative_data is callable, so it must take no arguments"):
        export.tflite(dense_model, str(tmp_path / "m.tflite"), mode="int8", representative_data=lambda batch: batch)


def test_int8_file_with_float_ops_is_refused(tmp_path):
    """SIN has no int8 kernel: the converter silently left it float in a 'full-integer' file."""
    inputs = keras.Input((_WIDTH,), name="x")
    hidden = keras.layers.Lambda(tf.math.sin, name="sin")(keras.layers.Dense(8)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4)(hidden))
    for mode in ("int8", "int16x8"):
        with pytest.raises(export.NotFullyIntegerError, match=rf"mode='{mode}' asks for a fully integer file.*SIN x1"):
            export.tflite(model, str(tmp_path / f"{mode}.tflite"), mode=mode, representative_data=_batches())
        assert not (tmp_path / f"{mode}.tflite").exists()
