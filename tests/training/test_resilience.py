"""tfreparam.resilience: a SIGKILLed fit resumes to the uninterrupted result; corrupt checkpoints are skipped."""

import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tfreparam import resilience

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OPENBLAS_NUM_THREADS="1")


def _start(backup_dir, out, block_at_step):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.training.workers", "resilience", str(backup_dir), str(out), str(block_at_step)],
        cwd=ROOT, env=_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _finish(process, timeout):
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-4000:]


def _weights(path):
    data = np.load(path)
    return [data[f"arr_{i}"] for i in range(len(data.files))]


def test_sigkilled_fit_resumes_to_the_uninterrupted_weights(tmp_path):
    processes = []
    try:
        # The reference and the run to be killed go in parallel: both are ~10 s of TF start-up.
        reference = _start(tmp_path / "ref_backup", tmp_path / "ref.npz", -1)
        victim = _start(tmp_path / "backup", tmp_path / "resumed.npz", 7)  # step 7 = mid-epoch 2 (5 steps/epoch)
        processes += [reference, victim]
        ready = tmp_path / "resumed.npz.ready"
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert victim.poll() is None, victim.stderr.read()[-4000:]
            assert time.monotonic() < deadline, "the training subprocess never reached step 7"
            time.sleep(0.1)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        assert resilience.completed_steps(str(tmp_path / "backup"), 5) == 7  # backed up after every batch
        resumed = _start(tmp_path / "backup", tmp_path / "resumed.npz", -1)
        processes.append(resumed)
        _finish(reference, timeout=120)
        _finish(resumed, timeout=120)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    expected, actual = _weights(tmp_path / "ref.npz"), _weights(tmp_path / "resumed.npz")
    assert len(expected) == len(actual) > 0
    # Same batches in the same order, Adam moments restored from the backup: the same float32
    # ops run in the same order, so the result is bit-identical.
    for a, b in zip(expected, actual):
        np.testing.assert_array_equal(a, b)


def _checkpoints(directory):
    variable = tf.Variable(tf.zeros((64,)))
    manager = resilience.VerifiedCheckpoints(tf.train.Checkpoint(v=variable), str(directory), max_to_keep=3)
    prefixes = []
    for value in (1.0, 2.0, 3.0):
        variable.assign(tf.fill((64,), value))
        prefixes.append(manager.save())
    variable.assign(tf.zeros((64,)))
    return manager, variable, prefixes


def _data_file(prefix):
    directory = os.path.dirname(prefix)
    names = [n for n in os.listdir(directory)
             if n.startswith(os.path.basename(prefix) + ".data") and not n.endswith(".json")]
    return os.path.join(directory, names[0])


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"is corrupted: '.*data.*' has \d+ bytes, expected \d+"),
    ("flip", r"is corrupted: the SHA-256 of '.*data.*' does not match its manifest"),
    ("delete_index", r"is partial: file '.*\.index' is missing"),
    ("no_manifest", r"has no manifest .*partial \(the save was interrupted\)"),
])
def test_corrupt_newest_checkpoint_is_reported_and_the_previous_one_restored(tmp_path, damage, message):
    manager, variable, prefixes = _checkpoints(tmp_path)
    newest = prefixes[-1]
    if damage == "truncate":
        path = _data_file(newest)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == "flip":
        path = _data_file(newest)
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif damage == "delete_index":
        os.remove(newest + ".index")
    else:
        os.remove(newest + ".manifest.json")
    with pytest.raises(resilience.CorruptCheckpointError, match=message):
        resilience.verify_checkpoint(newest)
    result = manager.restore()
    assert result.path == prefixes[1]
    assert list(result.skipped) == [newest]
    np.testing.assert_array_equal(variable.numpy(), np.full(64, 2.0, np.float32))


def test_intact_checkpoints_restore_the_newest(tmp_path):
    manager, variable, prefixes = _checkpoints(tmp_path)
    for prefix in prefixes:
        resilience.verify_checkpoint(prefix)
    result = manager.restore()
    assert (result.path, result.skipped) == (prefixes[-1], {})
    np.testing.assert_array_equal(variable.numpy(), np.full(64, 3.0, np.float32))


def test_bad_arguments_are_explained(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep must be >= 2"):
        resilience.VerifiedCheckpoints(tf.train.Checkpoint(), str(tmp_path), max_to_keep=1)
    with pytest.raises(ValueError, match="save_freq must be 'epoch' or a positive number"):
        resilience.backup_and_restore(str(tmp_path), save_freq=0)
    model = keras.Sequential([keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="must be built before resumable_fit"):
        resilience.resumable_fit(model, lambda: None, 1, 1, str(tmp_path))
    model.build((None, 2))
    finite = lambda: tf.data.Dataset.from_tensor_slices((np.zeros((4, 2)), np.zeros((4, 1)))).batch(2)
    with pytest.raises(ValueError, match=r"needs an endless dataset \(call .repeat\(\)\)"):
        resilience.resumable_fit(model, finite, 1, 1, str(tmp_path))


def test_every_checkpoint_corrupt_is_not_a_fresh_start(tmp_path):
    manager, variable, prefixes = _checkpoints(tmp_path)
    for prefix in prefixes:
        os.remove(prefix + ".index")
    with pytest.warns(RuntimeWarning, match=r"All 3 checkpoints in .* were rejected \(ckpt-3, ckpt-2, ckpt-1\)"):
        result = manager.restore()
    assert result.path is None and result.all_rejected
    assert result.rejected == prefixes[::-1]
    assert all("is partial" in reason for reason in result.skipped.values())
    np.testing.assert_array_equal(variable.numpy(), np.zeros(64, np.float32))  # nothing was restored


def test_a_fresh_directory_is_a_fresh_start(tmp_path):
    variable = tf.Variable(np.zeros(64, np.float32))
    manager = resilience.VerifiedCheckpoints(tf.train.Checkpoint(v=variable), str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = manager.restore()
    assert (result.path, result.rejected, result.all_rejected) == (None, [], False)
