"""tfreparam.distribute: strategies, MirroredStrategy parity, multi-worker fit, DTensor sharding.

The logical-device and multi-worker checks run in subprocesses
(`tests/training/workers.py`): logical CPU devices must be configured before
TensorFlow initialises its devices, which the pytest process already did.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.layers.registry import LAYER_CASES
from tfreparam import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASE_NAMES = [case.name for case in LAYER_CASES] + ["bert_tiny"]

# Mirrored vs one device, same global batch: each replica's gradient is its half-batch
# sum divided by the GLOBAL batch, and the two are summed, so the update is the same
# number; only float32 summation order differs (~1e-7 relative per op, 3 steps).
_PARITY_ATOL = 1e-5


def _run_worker(args, timeout, env=None):
    result = subprocess.run(
        [sys.executable, "-m", "tests.training.workers", *args], cwd=ROOT, env=env or _env(),
        capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OPENBLAS_NUM_THREADS="1")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def logical_device_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored") / "results.json"
    _run_worker(["mirrored", str(out)], timeout=500)
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", CASE_NAMES + ["bert_pretrainer"])
def test_mirrored_two_cpus_matches_one_device(logical_device_results, name):
    result = logical_device_results["mirrored"][name]
    assert result["replicas"] == 2
    np.testing.assert_allclose(result["loss_two"], result["loss_one"], rtol=1e-5, atol=_PARITY_ATOL)
    assert result["max_weight_diff"] <= _PARITY_ATOL
    assert result["max_weight_change"] > 1e-3  # training really moved the weights
    if name == "bert_pretrainer":
        # Its custom train_step divides by num_replicas_in_sync; without that the 2-replica
        # update is twice the 1-replica one (ratio 2.0 instead of 1.0).
        assert abs(result["update_ratio"] - 1.0) < 1e-4, result["update_ratio"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_dtensor_sharded_forward_backward_matches_unsharded(logical_device_results, name):
    result = logical_device_results["dtensor"][name]
    assert "error" not in result, result.get("error")
    assert result["sharded_variables"], "no variable was split over the model axis"
    # Sharded matmuls sum partial products in a different order: float32 rounding only.
    assert result["forward_diff"] <= 1e-5 * max(1.0, result["forward_scale"])
    assert result["grad_diff"] <= 1e-5 * max(1.0, result["grad_scale"])


def test_dtensor_bert_shards_every_block_projection(logical_device_results):
    sharded = logical_device_results["dtensor"]["bert_tiny"]["sharded_variables"]
    for suffix in ("query", "key", "value", "output", "intermediate"):
        assert any(f"/{suffix}/kernel" in name for name in sharded), suffix


@pytest.mark.parametrize("kind, fragment", [
    ("fused_layer_norm", "FusedBatchNormV3"),
    ("rank", "has 1 entries but variable 'head/kernel' has rank 2"),
    ("divisibility", "does not divide it"),
    ("devices", "needs 8 CPU devices, found 4"),
])
def test_shard_errors_are_clear(logical_device_results, kind, fragment):
    assert fragment in logical_device_results["errors"][kind]


def test_tpu_strategy_raises_documented_error():
    with pytest.raises(distribute.StrategyError, match=r"No TPU found \(tpu='local'\)"):
        distribute.strategy("tpu")


def test_auto_without_tpu_or_gpu_uses_the_cpu():
    chosen = distribute.strategy("auto")
    assert chosen.num_replicas_in_sync == 1


@pytest.mark.parametrize("raw, fragment", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "'host:port'"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "out of range"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "not a job"),
])
def test_bad_tf_config_is_reported(monkeypatch, raw, fragment):
    if raw is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(distribute.StrategyError, match=fragment):
        distribute.strategy("multi_worker")


def test_unknown_strategy_and_device():
    with pytest.raises(distribute.StrategyError, match="Unknown strategy 'gpu'"):
        distribute.strategy("gpu")
    with pytest.raises(distribute.StrategyError, match="does not exist"):
        distribute.strategy("mirrored", devices=["/cpu:7"])


def test_global_batch_size():
    assert distribute.global_batch_size(16, distribute.strategy("default")) == 16


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_multi_worker_fit_ends_with_identical_weights(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    try:
        for index in range(2):
            config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "tests.training.workers", "multi_worker", str(tmp_path / f"w{index}.npz")],
                cwd=ROOT, env=_env(TF_CONFIG=config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            ))
        deadline = time.monotonic() + 240
        for process in processes:
            _, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert process.returncode == 0, stderr[-4000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
    results = [np.load(tmp_path / f"w{index}.npz") for index in range(2)]
    assert int(results[0]["replicas"]) == 2
    weights = [[r[f"arr_{i}"] for i in range(len(r.files) - 2)] for r in results]
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)  # all-reduced updates: bit-identical replicas
    assert results[0]["loss"][-1] < results[0]["loss"][0]
