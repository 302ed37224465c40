"""Distribution: pick a `tf.distribute` strategy, feed it data, shard a model with DTensor.

Data parallelism (`strategy`)
-----------------------------
`strategy(name)` builds the strategy under which the whole model is created:
the BERT, every reparameterized layer, pruning/QAT wrappers and the optimizer
all go inside `with strategy.scope():`, then `model.fit` runs one replica per
device and all-reduces the gradients.

Batch sizes: the dataset given to `model.fit` (or to
`strategy.experimental_distribute_dataset`) is batched with the GLOBAL batch
size; every step splits it evenly into `num_replicas_in_sync` per-replica
batches. A `dataset_fn(input_context)` given to `distribute_dataset` instead
batches with the PER-REPLICA size, `input_context.get_per_replica_batch_size(
global_batch_size)`, and shards its input per worker (each worker then reads
only its own part of the files). `global_batch_size(per_replica, strategy)`
converts. Losses inside a custom `train_step` must be averaged over the global
batch (Keras' built-in losses and `compile` do this), so that the summed
replica gradients equal the single-device gradient.

Inputs must be int32 token ids (TPUs have no int64 gather) with static shapes
(`drop_remainder=True`) for TPU and XLA.

Model parallelism (`shard`)
---------------------------
`shard(model_builder, mesh_shape, layout_rules)` builds a model whose
variables are DTensor `DVariable`s laid out on a device mesh (for example
2 data x 2 model): rules map variable names to the mesh axis that splits each
dimension, so a projection's kernel (or the factors of a reparameterized
layer) is split over the "model" axis while the batch is split over "batch".
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

STRATEGY_NAMES = ("auto", "tpu", "mirrored", "multi_worker", "one_device", "default")


class StrategyError(ValueError):
    """The requested strategy cannot be built on this machine or with this configuration."""


# -- strategies ----------------------------------------------------------------


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


# -- datasets ------------------------------------------------------------------


def global_batch_size(per_replica_batch_size: int, strategy_: tf.distribute.Strategy) -> int:
    """The global batch (what `model.fit` sees) for a per-replica batch size."""
    return int(per_replica_batch_size) * strategy_.num_replicas_in_sync


def distribute_dataset(strategy_: tf.distribute.Strategy, dataset_or_fn, global_batch: Optional[int] = None):
    """A distributed dataset for a custom training loop.

    `dataset_or_fn` is either a `tf.data.Dataset` already batched with the
    GLOBAL batch size (split across replicas by the strategy), or a function
    `dataset_fn(input_context)` that returns a dataset batched with the
    PER-REPLICA size; pass `global_batch` and the function receives it as
    `input_context.get_per_replica_batch_size(global_batch)` through
    `per_replica_batch_size(input_context, global_batch)`. For `model.fit`
    simply pass the globally batched dataset; Keras distributes it.
    """
    if isinstance(dataset_or_fn, tf.data.Dataset):
        return strategy_.experimental_distribute_dataset(dataset_or_fn)
    if callable(dataset_or_fn):
        if global_batch is None:
            return strategy_.distribute_datasets_from_function(dataset_or_fn)
        return strategy_.distribute_datasets_from_function(lambda ctx: dataset_or_fn(ctx, global_batch))
    raise TypeError(
        f"distribute_dataset takes a tf.data.Dataset or a dataset_fn(input_context), "
        f"got {type(dataset_or_fn).__name__}."
    )


def per_replica_batch_size(input_context: tf.distribute.InputContext, global_batch: int) -> int:
    """The per-replica batch for `global_batch`; raises if it does not divide evenly."""
    replicas = input_context.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"Global batch {global_batch} is not divisible by {replicas} replicas.")
    return global_batch // replicas


# -- model parallelism with DTensor ----------------------------------------------


@dataclasses.dataclass
class ShardedModel:
    """A Keras model whose variables are DTensor `DVariable`s on `mesh`.

    `layouts` maps each variable name (e.g. "layer_0/attention/query/kernel")
    to its sharding spec (one mesh axis name or "unsharded" per dimension).
    """

    model: keras.Model
    mesh: object
    layouts: dict
    batch_axis: str

    def shard_batch(self, value):
        """A tensor (or nest of them) split along its first axis over the batch axis of the mesh."""
        from tensorflow.experimental import dtensor

        def one(array):
            array = tf.convert_to_tensor(array)
            replicated = dtensor.copy_to_mesh(array, dtensor.Layout.replicated(self.mesh, array.shape.rank))
            specs = [self.batch_axis] + [dtensor.UNSHARDED] * (array.shape.rank - 1)
            return dtensor.relayout(replicated, dtensor.Layout(specs, self.mesh))

        return tf.nest.map_structure(one, value)

    def copy_weights_from(self, source: keras.Model) -> None:
        """Loads an unsharded model's weights (same architecture) into the sharded one."""
        from tensorflow.experimental import dtensor

        if len(source.weights) != len(self.model.weights):
            raise ValueError(
                f"Source model has {len(source.weights)} weights, the sharded one {len(self.model.weights)}."
            )
        for target, value in zip(self.model.weights, source.weights):
            if tuple(target.shape) != tuple(value.shape):
                raise ValueError(f"Shape mismatch for {target.name}: {target.shape} vs {value.shape}.")
            layout = dtensor.fetch_layout(target)
            replicated = dtensor.copy_to_mesh(
                tf.convert_to_tensor(value.numpy()), dtensor.Layout.replicated(self.mesh, value.shape.rank)
            )
            target.assign(dtensor.relayout(replicated, layout))


def shard(
    model_builder: Callable[[], keras.Model],
    mesh_shape: Sequence[int] = (2, 2),
    layout_rules=None,
    axis_names: Sequence[str] = ("batch", "model"),
    device_type: str = "CPU",
) -> ShardedModel:
    """Builds `model_builder()` with its variables sharded over a DTensor device mesh.

    Args:
      model_builder: a zero-argument function that creates the model (its
        layer names must be stable: rules match variable names).
      mesh_shape: devices per mesh axis, e.g. (2, 2) = 2-way data x 2-way model
        parallelism; their product must equal the number of `device_type`
        devices (logical CPU devices work for testing).
      layout_rules: regex -> per-dimension spec. A spec is a sequence with one
        entry per variable dimension, each a mesh axis name or None
        (unsharded), e.g. `{r".*/attention/(query|key|value)/kernel": (None, "model")}`.
        Patterns full-match the variable name without ":0" (e.g.
        "layer_0/ffn/intermediate/u"); the first match wins; unmatched
        variables are replicated. A `tf_keras.dtensor.experimental.LayoutMap`
        (regex -> `dtensor.Layout`) is accepted too.
      axis_names: names of the mesh axes; the first is the batch (data) axis.

    Why not `LayoutMap.scope()`: tf_keras re-creates lazily initialised
    variables by setting attributes along the object path, which fails for
    layers that keep weights in a dict (every `ReparameterizedDense` keeps its
    factors in `factor_weights`): "AttributeError: 'dict' object has no
    attribute 'u'". `shard` creates the `DVariable`s in a variable creator
    instead, which works for every layer type.

    Raises:
      ValueError: too few devices for the mesh, a rule whose spec has the
        wrong rank, names an unknown mesh axis, or splits a dimension the axis
        does not divide; or a layer DTensor cannot lay out (a
        `LayerNormalization` on its fused path).
    """
    from tensorflow.experimental import dtensor

    mesh_shape = tuple(int(n) for n in mesh_shape)
    axis_names = tuple(axis_names)
    if len(mesh_shape) != len(axis_names):
        raise ValueError(f"mesh_shape {mesh_shape} and axis_names {axis_names} must have the same length.")
    needed = math.prod(mesh_shape)
    devices = tf.config.list_logical_devices(device_type)
    if len(devices) < needed:
        raise ValueError(
            f"A {'x'.join(map(str, mesh_shape))} mesh needs {needed} {device_type} devices, found {len(devices)}. "
            "For CPU testing, call tf.config.set_logical_device_configuration(cpu, "
            f"[tf.config.LogicalDeviceConfiguration()] * {needed}) before TensorFlow initialises its devices."
        )
    mesh = dtensor.create_mesh(
        list(zip(axis_names, mesh_shape)), devices=[d.name for d in devices[:needed]], device_type=device_type
    )
    rules = _normalise_rules(layout_rules, axis_names)
    axis_sizes = dict(zip(axis_names, mesh_shape))
    layouts = {}

    def creator(next_creator, **kwargs):
        name = kwargs.get("name") or "variable"
        scope = tf.get_current_name_scope()
        full_name = f"{scope}/{name}" if scope else str(name)
        full_name = full_name.removesuffix(":0")
        initial = kwargs["initial_value"]
        if callable(initial):
            initial = initial()
        initial = tf.convert_to_tensor(initial, dtype=kwargs.get("dtype"))
        specs = _specs_for(full_name, initial.shape, rules, axis_sizes)
        layout = dtensor.Layout(specs, mesh)
        value = dtensor.relayout(
            dtensor.copy_to_mesh(initial, dtensor.Layout.replicated(mesh, initial.shape.rank)), layout
        )
        layouts[full_name] = specs
        return dtensor.DVariable(value, trainable=kwargs.get("trainable", True), name=name)

    with tf.variable_creator_scope(creator):
        model = model_builder()
    _check_dtensor_support(model)
    return ShardedModel(model, mesh, layouts, axis_names[0])


def _normalise_rules(layout_rules, axis_names):
    if layout_rules is None:
        return []
    if isinstance(layout_rules, keras.dtensor.experimental.LayoutMap):
        items = [(key, tuple(None if s == "unsharded" else s for s in layout_rules[key].sharding_specs))
                 for key in layout_rules]
    elif isinstance(layout_rules, Mapping):
        items = list(layout_rules.items())
    else:
        raise TypeError(
            "layout_rules must be a dict {regex: (mesh axis or None, ...)} or a "
            f"tf_keras.dtensor.experimental.LayoutMap, got {type(layout_rules).__name__}."
        )
    rules = []
    for pattern, spec in items:
        if isinstance(spec, str) or not isinstance(spec, Sequence):
            raise TypeError(
                f"Layout rule {pattern!r}: the spec must be a sequence with one mesh axis name "
                f"(or None) per variable dimension, got {spec!r}."
            )
        for axis in spec:
            if axis is not None and axis not in axis_names:
                raise ValueError(f"Layout rule {pattern!r} names mesh axis {axis!r}; the mesh has {axis_names}.")
        rules.append((re.compile(pattern), tuple(spec), pattern))
    return rules


def _specs_for(name, shape, rules, axis_sizes):
    from tensorflow.experimental import dtensor

    for regex, spec, pattern in rules:
        if not regex.fullmatch(name):
            continue
        if len(spec) != shape.rank:
            raise ValueError(
                f"Layout rule {pattern!r} has {len(spec)} entries but variable {name!r} has rank "
                f"{shape.rank} (shape {shape}); give one mesh axis or None per dimension."
            )
        for dim, axis in zip(shape, spec):
            if axis is not None and dim % axis_sizes[axis]:
                raise ValueError(
                    f"Layout rule {pattern!r} splits a dimension of size {dim} of {name!r} (shape {shape}) "
                    f"over mesh axis {axis!r} of size {axis_sizes[axis]}, which does not divide it."
                )
        return [axis or dtensor.UNSHARDED for axis in spec]
    return [dtensor.UNSHARDED] * shape.rank


def _check_dtensor_support(model):
    """Raises for layers whose kernels DTensor has no layout propagation for."""
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.LayerNormalization) and getattr(layer, "_fused", False):
            raise ValueError(
                f"LayerNormalization {layer.name!r} (epsilon={layer.epsilon}) runs on the fused "
                "FusedBatchNormV3 kernel, which DTensor cannot lay out ('tf.FusedBatchNormV3' op does not "
                "implement layout propagation). Use epsilon < 1.001e-5 (BERT uses 1e-12), which takes the "
                "unfused path."
            )


def _all_layers(model):
    stack = list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop()
        yield layer
        stack.extend(getattr(layer, "layers", []) or [])
        stack.extend(l for l in getattr(layer, "_self_tracked_trackables", []) if isinstance(l, keras.layers.Layer))


def as_numpy(value) -> np.ndarray:
    """A (possibly DTensor or IndexedSlices) tensor as one global numpy array."""
    from tensorflow.experimental import dtensor

    if isinstance(value, tf.IndexedSlices):
        value = tf.convert_to_tensor(value)
    if dtensor.is_dtensor(value):
        layout = dtensor.fetch_layout(value)
        replicated = dtensor.relayout(value, dtensor.Layout.replicated(layout.mesh, value.shape.rank))
        return np.asarray(dtensor.unpack(replicated)[0].numpy())
    return np.asarray(value.numpy())
