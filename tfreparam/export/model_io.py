"""What every exporter shares: input specs, sample inputs, output naming and model preparation.

A Keras model is exported through one traced function, `serving_fn`, that
takes a dict of named inputs and returns a dict of named outputs, so the
SavedModel signature, the TFLite signature runner and the ONNX graph all use
the model's own input names (`input_word_ids`, ...) and output names
(`sequence_output`, ... or `output_0` for a single unnamed output).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf
import tf_keras as keras

# Input names of a BERT encoder (`bert.encoder.INPUT_NAMES`), recognised by
# name so that this package needs nothing from `bert`.
BERT_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")


def input_names(model: keras.Model) -> list[str]:
    return [tensor.name.split(":")[0] for tensor in _model_inputs(model)]


def _model_inputs(model):
    if not getattr(model, "inputs", None):
        raise ValueError(
            f"Model {model.name!r} has no defined inputs: export needs a built Functional or "
            "Sequential model (call it once, or build it with keras.Input)."
        )
    return model.inputs


def is_bert_encoder(model: keras.Model) -> bool:
    return set(BERT_INPUTS) <= set(input_names(model))


def input_specs(model: keras.Model, seq_length: int | None = None, batch_size: int | None = None) -> dict:
    """Name -> `tf.TensorSpec` of each model input.

    The batch axis is `batch_size` (None: dynamic). Other unknown axes stay
    dynamic unless `seq_length` is given, which fixes them (TFLite).
    """
    specs = {}
    for name, tensor in zip(input_names(model), _model_inputs(model)):
        dims = list(tensor.shape)
        dims[0] = batch_size
        if seq_length is not None:
            dims = [dims[0]] + [seq_length if d is None else d for d in dims[1:]]
        specs[name] = tf.TensorSpec(dims, tensor.dtype, name=name)
    return specs


# The sequence length exporters fix when none is given (capped by the model's positions).
DEFAULT_SEQ_LENGTH = 128
_POSITION_LAYER_NAMES = ("position", "position_embedding", "position_embeddings")


def max_positions(model: keras.Model) -> int | None:
    """Rows of the model's position-embedding table (the longest sequence it takes), or None.

    Found by class name (`*PositionEmbedding*`) or layer name (`.../position`,
    `position_embedding(s)`), so that this package needs nothing from `bert`;
    TFMOT wrappers are looked through.
    """
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        by_class = "positionembedding" in type(inner).__name__.lower()
        if not by_class and inner.name.split("/")[-1] not in _POSITION_LAYER_NAMES:
            continue
        tables = [w for w in inner.weights if w.shape.rank == 2]
        if tables:
            return int(tables[0].shape[0])
    return None


def resolve_seq_length(model: keras.Model, seq_length) -> int | None:
    """`seq_length` checked against the model's positions; "auto" -> min(128, positions)."""
    positions = max_positions(model)
    if seq_length == "auto":
        return DEFAULT_SEQ_LENGTH if positions is None else min(DEFAULT_SEQ_LENGTH, positions)
    if seq_length is None:
        return None
    if isinstance(seq_length, bool) or not isinstance(seq_length, (int, np.integer)) or seq_length < 1:
        raise ValueError(f"seq_length must be a positive integer, None (dynamic) or 'auto'; got {seq_length!r}.")
    if positions is not None and seq_length > positions:
        raise ValueError(
            f"seq_length={seq_length} exceeds the model's max_position_embeddings={positions} (rows of its "
            f"position-embedding table); export with seq_length <= {positions}."
        )
    return int(seq_length)


def output_names(model: keras.Model) -> list[str]:
    """Flat output names, in the order of `tf.nest.flatten` of `serving_fn`'s result."""
    return sorted(_as_output_dict(_structured_outputs(model), model).keys())


def _as_output_dict(outputs, model):
    if isinstance(outputs, Mapping):
        flat = {}
        for key, value in outputs.items():
            if isinstance(value, (list, tuple)):
                flat.update({f"{key}_{i}": v for i, v in enumerate(value)})
            else:
                flat[key] = value
        return flat
    if isinstance(outputs, (list, tuple)):
        if len(outputs) == 1:
            return {"output_0": outputs[0]}
        return {f"output_{i}": value for i, value in enumerate(outputs)}
    return {"output_0": outputs}


def _structured_outputs(model):
    # `model.outputs` is always a list; the dict structure lives in `_nested_outputs`.
    return getattr(model, "_nested_outputs", model.outputs)


def serving_fn(model: keras.Model, specs: dict) -> tf.types.experimental.ConcreteFunction:
    """A concrete function over named inputs (keyword arguments) -> dict of named outputs, inference mode."""
    names = list(specs)

    @tf.function
    def serve(**inputs):
        outputs = _call(model, [inputs[name] for name in names])
        return {key: tf.identity(value, name=key) for key, value in outputs.items()}

    return serve.get_concrete_function(**specs)


def positional_fn(model: keras.Model, specs: dict):
    """A `tf.function` with a positional input signature (tf2onnx's calling convention)."""

    @tf.function(input_signature=list(specs.values()))
    def serve(*args):
        outputs = _call(model, list(args))
        return {key: tf.identity(value, name=key) for key, value in outputs.items()}

    return serve


class ExportModule(tf.Module):
    """What an exported SavedModel holds: the variables its functions read, and no Keras objects.

    Saving a Keras model itself would also serialise every layer's call
    functions and Keras metadata; this module keeps the SavedModel loadable by
    plain TensorFlow (no tfreparam/bert classes needed) and quick to write.
    """

    def __init__(self, model):
        super().__init__(name=None)
        self.model_variables = list(model.variables)


def save_token_signature(model: keras.Model, path: str, specs: dict) -> None:
    """A SavedModel with one `serving_default` signature over `specs` (the TFLite route)."""
    tf.saved_model.save(ExportModule(model), path, signatures={"serving_default": serving_fn(model, specs)})


def _call(model, feed):
    """Runs the model on a list of input tensors; returns the flat output dict."""
    result = model(feed if len(feed) > 1 else feed[0], training=False)
    structured = _structured_outputs(model)
    if isinstance(structured, Mapping) and not isinstance(result, Mapping):
        result = dict(zip(structured.keys(), result))
    return _as_output_dict(result, model)


def run_keras(model: keras.Model, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The Keras model's outputs on named numpy inputs, as a dict of float64 arrays."""
    names = input_names(model)
    missing = sorted(set(names) - set(inputs))
    if missing:
        raise ValueError(f"Sample inputs lack {missing}; the model's inputs are {names}.")
    feed = [tf.convert_to_tensor(inputs[name], dtype=t.dtype) for name, t in zip(names, model.inputs)]
    return {key: np.asarray(value, np.float64) for key, value in _call(model, feed).items()}


def sample_inputs(model: keras.Model, batch_size: int = 2, seq_length: int = 16, seed: int = 0) -> dict:
    """Random named inputs that fit the model (BERT inputs get valid ids, masks and segments)."""
    rng = np.random.default_rng(seed)
    specs = input_specs(model, seq_length=seq_length, batch_size=batch_size)
    result = {}
    lengths = rng.integers(max(1, seq_length // 2), seq_length + 1, size=batch_size)
    positions = np.arange(seq_length)[None, :]
    for name, spec in specs.items():
        shape = spec.shape.as_list()
        dtype = spec.dtype.as_numpy_dtype
        if name == "input_mask":
            value = positions < lengths[:, None]
        elif name == "input_type_ids":
            value = positions >= (lengths[:, None] // 2)
        elif spec.dtype.is_integer:
            value = rng.integers(0, _vocab_size(model, name) or 2, size=shape)
            if name == "input_word_ids":
                value = np.where(positions < lengths[:, None], value, 0)
        elif spec.dtype == tf.bool:
            value = rng.random(size=shape) < 0.5
        elif spec.dtype.is_floating:
            value = rng.normal(size=shape)
        else:
            raise ValueError(
                f"Cannot make sample inputs for {name!r} of dtype {spec.dtype.name}; pass sample_inputs."
            )
        result[name] = np.asarray(value).astype(dtype)
    return result


def _vocab_size(model, input_name):
    """The table size of the first embedding-like layer fed by an integer input, if any."""
    for layer in model.layers:
        for node in layer.inbound_nodes:
            inbound = tf.nest.flatten(node.input_tensors)
            if any(t.name.split(":")[0] == input_name for t in inbound if hasattr(t, "name")):
                for attribute in ("vocab_size", "input_dim"):
                    if isinstance(getattr(layer, attribute, None), int):
                        return getattr(layer, attribute)
    return None


def prepare(model: keras.Model) -> keras.Model:
    """The model to export: TFMOT pruning wrappers stripped (zeros kept), everything else as is."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"Expected a tf_keras Model; got {type(model).__name__}.")
    if any(type(layer).__name__ == "PruneLowMagnitude" for layer in model.layers):
        import tensorflow_model_optimization as tfmot

        model = tfmot.sparsity.keras.strip_pruning(model)
    return model


def is_quantization_aware(model: keras.Model) -> bool:
    """True for a TFMOT quantization-aware (fake-quant) model."""
    return any(
        type(layer).__module__.startswith("tensorflow_model_optimization.python.core.quantization")
        for layer in model.layers
    )
