"""Model parallelism with DTensor: `shard` builds a model whose variables are laid out on a device mesh.

Rules map variable names to the mesh axis that splits each dimension, so a
projection's kernel (or the factors of a reparameterized layer) is split over
the "model" axis while the batch is split over "batch" (for example 2 data x
2 model). `tensorflow.experimental.dtensor` is imported only when used.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras


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
