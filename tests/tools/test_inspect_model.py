"""tools/inspect_model.py on saved models, as a user runs it."""

import subprocess
import sys

import tf_keras as keras

import tfreparam as tr


def _run(*args):
    return subprocess.run([sys.executable, "-m", "tools.inspect_model", *args], capture_output=True, text=True, timeout=300)


def test_inspect_prints_the_report(tmp_path):
    inputs = keras.Input((24,))
    h = keras.layers.Dense(32, name="d1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(h))
    new = tr.reparameterize(model, {"d1": tr.LowRank(rank=4)})
    model.save(tmp_path / "original.keras")
    new.save(tmp_path / "compressed.keras")
    result = _run(str(tmp_path / "compressed.keras"), f"--original={tmp_path / 'original.keras'}", "--markdown")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| d1 | LowRankDense | 24x32 | rank=4 | 800 -> 256 |" in result.stdout
    assert "| head | Dense | 32x4 | dense | 132 -> 132 |" in result.stdout


def test_inspect_missing_model(tmp_path):
    result = _run(str(tmp_path / "nope.keras"))
    assert result.returncode != 0
    assert "No model at" in result.stderr
