"""Data parallelism: pick a `tf.distribute` strategy by name (`strategy`) and check `TF_CONFIG`.

`strategy(name)` builds the strategy under which the whole model is created:
the BERT, every reparameterized layer, pruning/QAT wrappers and the optimizer
all go inside `with strategy.scope():`, then `model.fit` runs one replica per
device and all-reduces the gradients.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import tensorflow as tf

STRATEGY_NAMES = ("auto", "tpu", "mirrored", "multi_worker", "one_device", "default")


class StrategyError(ValueError):
    """The requested strategy cannot be built on this machine or with this configuration."""


def strategy(name: str = "auto", tpu: Optional[str] = None, devices: Optional[Sequence[str]] = None):
    """Builds a `tf.distribute.Strategy` by name.

    Args:
      name: "tpu" (`TPUStrategy` via `TPUClusterResolver` +
        `initialize_tpu_system`), "mirrored" (`MirroredStrategy` over `devices`
        or all local GPUs, else the CPU), "multi_worker"
        (`MultiWorkerMirroredStrategy` configured by the `TF_CONFIG` environment
        variable), "one_device" (`OneDeviceStrategy` on `devices[0]`, else the
        first GPU, else the CPU), "default" (no distribution), or "auto": a TPU
        if one is reachable, else all local GPUs, else the CPU.
      tpu: TPU name or address for the resolver; None means the `TPU_NAME`
        environment variable, else a TPU attached to this host ("local").
      devices: device names for "mirrored" / "one_device".

    Raises:
      StrategyError (a ValueError) when the strategy cannot be built: no TPU,
      a missing or malformed `TF_CONFIG`, unknown devices or an unknown name.
    """
    if name not in STRATEGY_NAMES:
        raise StrategyError(f"Unknown strategy {name!r}; choose one of {STRATEGY_NAMES}.")
    if devices is not None and name not in ("mirrored", "one_device", "auto"):
        raise StrategyError(f"`devices` only applies to 'mirrored' and 'one_device', not {name!r}.")
    if name == "auto":
        return _auto(tpu, devices)
    if name == "tpu":
        return _tpu_strategy(tpu)
    if name == "mirrored":
        return _mirrored(_local_devices(devices) or None)
    if name == "multi_worker":
        validate_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "one_device":
        chosen = _local_devices(devices) or [_default_device()]
        if len(chosen) != 1:
            raise StrategyError(f"'one_device' takes exactly one device, got {list(devices)}.")
        return tf.distribute.OneDeviceStrategy(chosen[0])
    return tf.distribute.get_strategy()


def _auto(tpu, devices):
    if devices:
        chosen = _local_devices(devices)
        return _mirrored(chosen) if len(chosen) > 1 else tf.distribute.OneDeviceStrategy(chosen[0])
    if tpu or _tpu_may_be_attached():
        try:
            return _tpu_strategy(tpu)
        except StrategyError:
            pass  # auto falls back to GPUs / CPU
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    return tf.distribute.OneDeviceStrategy(_default_device())


def _mirrored(devices):
    cpu_only = devices is not None and all(
        (tf.DeviceSpec.from_string(d).device_type or "").upper() == "CPU" for d in devices
    )
    # NCCL / collective all-reduce is for GPUs; replicas on (logical) CPUs reduce on one device.
    cross_device_ops = tf.distribute.ReductionToOneDevice() if cpu_only else None
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device_ops)


def _tpu_may_be_attached() -> bool:
    """Cheap signs of a TPU (env var, TPU VM device files) so "auto" never blocks on a resolver."""
    return bool(os.environ.get("TPU_NAME")) or any(
        os.path.exists(p) for p in ("/dev/accel0", "/dev/vfio/0")
    )


def _tpu_strategy(tpu):
    address = tpu or os.environ.get("TPU_NAME") or "local"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        if address != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise StrategyError(
            f"No TPU found (tpu={address!r}): {first_line}. Run on a TPU VM or pass the TPU's "
            "name/address as `tpu=`, or use strategy('auto') to fall back to GPUs/CPU."
        ) from error


def _default_device() -> str:
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else tf.config.list_logical_devices("CPU")[0].name


def _local_devices(devices):
    if devices is None:
        return [d.name for d in tf.config.list_logical_devices("GPU")]
    if isinstance(devices, str):
        devices = [devices]
    known = {d.name for d in tf.config.list_logical_devices()}
    # Accept short forms such as "/cpu:1" or "GPU:0" by canonicalising them.
    chosen = []
    for device in devices:
        canonical = tf.DeviceSpec.from_string(device)
        matches = [
            k for k in known
            if (tf.DeviceSpec.from_string(k).device_type or "").upper() == (canonical.device_type or "").upper()
            and tf.DeviceSpec.from_string(k).device_index == canonical.device_index
        ]
        if not matches:
            raise StrategyError(
                f"Device {device!r} does not exist; local devices are {sorted(known)}. "
                "Create logical CPU devices with tf.config.set_logical_device_configuration "
                "before TensorFlow initialises its devices."
            )
        chosen.append(device)
    return chosen


def validate_tf_config(raw: Optional[str]) -> dict:
    """Parses and checks a `TF_CONFIG` value for multi-worker training; returns it as a dict."""
    example = ('{"cluster": {"worker": ["host1:port", "host2:port"]}, '
               '"task": {"type": "worker", "index": 0}}')
    if not raw:
        raise StrategyError(
            "strategy('multi_worker') needs the TF_CONFIG environment variable, e.g. "
            f"TF_CONFIG='{example}' (one process per worker, each with its own task index)."
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise StrategyError(f"TF_CONFIG is not valid JSON ({error}); expected e.g. {example}.") from None
    if not isinstance(config, dict):
        raise StrategyError(f"TF_CONFIG must be a JSON object, got {type(config).__name__}; expected e.g. {example}.")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise StrategyError(f"TF_CONFIG has no 'cluster' mapping of job name -> addresses; expected e.g. {example}.")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise StrategyError(f"TF_CONFIG cluster[{job!r}] must be a list of 'host:port' strings, got {addresses!r}.")
    if "worker" not in cluster and "chief" not in cluster:
        raise StrategyError("TF_CONFIG cluster has neither 'worker' nor 'chief' jobs.")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise StrategyError(f"TF_CONFIG needs a 'task' with 'type' and 'index'; got {task!r}.")
    if task["type"] not in cluster:
        raise StrategyError(f"TF_CONFIG task type {task['type']!r} is not a job of the cluster {sorted(cluster)}.")
    index = task["index"]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise StrategyError(
            f"TF_CONFIG task index {index!r} is out of range for job {task['type']!r} "
            f"with {len(cluster[task['type']])} task(s)."
        )
    return config
