"""Which QuantizeConfig each layer class gets: an extensible registry.

Each factorization family names its QuantizeConfig in its registration
(`tfreparam.families`); generic Keras layers TFMOT lacks are registered
below. `tfreparam` knows nothing of BERT, so packages with their own layers
register configs for them here (`bert.quantization` does, on import).
Lookups follow the class hierarchy, most specific class first; an explicit
`register_quantize_config` overrides a family's default.
"""

from __future__ import annotations

from typing import Callable

import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quantize_config as tfmot_config

import tfreparam.quantization.add as add
import tfreparam.quantization.configs as configs
import tfreparam.quantization.layer_norm as layer_norm
import tfreparam.quantization.plugins as plugins
import tfreparam.specs  # noqa: F401  (registers the built-in families)
from tfreparam.families import REPARAMETERIZED_QAT, families
from tfreparam.layers.base import ReparameterizedDense

_FACTORIES: dict[type, Callable] = {}
_SERIALIZABLE: dict[str, object] = dict(
    configs.serializable_objects(),
    LayerNormQuantizeConfig=layer_norm.LayerNormQuantizeConfig,
    QuantizableLayerNormalization=layer_norm.QuantizableLayerNormalization,
    AddQuantizeConfig=add.AddQuantizeConfig,
    PartialSumAdd=add.PartialSumAdd,
)
# Keras layers without a QAT hook, and the subclass (with one) `quantize_model` wraps in their place.
_SUBSTITUTES = (layer_norm.quantizable, add.quantizable)


def register_quantize_config(layer_class: type, factory: Callable, custom_objects: dict | None = None) -> None:
    """Makes `quantize_model` annotate layers of `layer_class` with `factory(layer)`.

    `factory` returns a `tfmot.quantization.keras.QuantizeConfig` for one layer
    instance. `custom_objects` (name -> class) are added to `quantize_scope()`
    so models using the config load again. A later registration replaces an
    earlier one for the same class.
    """
    if not isinstance(layer_class, type) or not issubclass(layer_class, keras.layers.Layer):
        raise TypeError(
            f"layer_class must be a tf_keras Layer subclass, got {layer_class!r}. "
            "(Keras 3 `tf.keras` layers cannot be quantized by TFMOT; use `tf_keras`.)"
        )
    if not callable(factory):
        raise TypeError(f"factory must be callable (layer -> QuantizeConfig), got {factory!r}.")
    _FACTORIES[layer_class] = factory
    _SERIALIZABLE.update(custom_objects or {})


def registered_classes() -> tuple[type, ...]:
    return tuple(family.layer_class for family in families()) + tuple(_FACTORIES)


def _family_factory(family):
    config_class = getattr(configs, family.quantize_config)
    return lambda layer: config_class()


def quantizable(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The layer `quantize_model` wraps for `layer`: `layer` itself, or a copy of its class with QAT hooks.

    Keras layers whose call has no place for a fake-quant are replaced by a
    subclass that computes the same thing and has one: a last-axis
    `LayerNormalization` by `QuantizableLayerNormalization`, an `Add` of more
    than two inputs by `PartialSumAdd`. The copy is unbuilt (weights are
    copied after cloning).
    """
    for substitute in _SUBSTITUTES:
        copy = substitute(layer)
        if copy is not None:
            return copy
    return layer


def quantize_config_for(layer: keras.layers.Layer):
    """The registered QuantizeConfig for `layer` (most specific class first), or None.

    For the layer as `quantize_model` wraps it: pass `quantizable(layer)`."""
    plugins.load_registered()
    factories = {family.layer_class: _family_factory(family) for family in families()}
    factories.update(_FACTORIES)
    for cls in type(layer).__mro__:
        if cls in factories:
            config = factories[cls](layer)
            if not isinstance(config, tfmot_config.QuantizeConfig):
                raise TypeError(
                    f"The quantize-config factory registered for {cls.__name__} returned "
                    f"{type(config).__name__}, not a tfmot QuantizeConfig."
                )
            return config
    return None


def serializable_objects() -> dict:
    plugins.load_registered()
    return dict(_SERIALIZABLE)


# -- generic Keras layers TFMOT does not quantize (tfreparam's layers come from their families) --
# A ReparameterizedDense subclass outside any family still gets the factor-wise config.
register_quantize_config(ReparameterizedDense, lambda layer: getattr(configs, REPARAMETERIZED_QAT)())
register_quantize_config(keras.layers.Dense, lambda layer: configs.DenseQuantizeConfig())
register_quantize_config(keras.layers.Add, lambda layer: configs.OutputQuantizeConfig())
register_quantize_config(add.PartialSumAdd, lambda layer: add.AddQuantizeConfig())
register_quantize_config(keras.layers.Dropout, lambda layer: configs.NoOpQuantizeConfig())
# Last-axis LayerNorms (wrapped as QuantizableLayerNormalization) are simulated op by op as TFLite
# runs them; others only get an output range.
register_quantize_config(keras.layers.LayerNormalization, lambda layer: configs.OutputQuantizeConfig())
register_quantize_config(layer_norm.QuantizableLayerNormalization, lambda layer: layer_norm.LayerNormQuantizeConfig())
# TFMOT's Activation config rejects custom functions (e.g. tanh-approximated GELU).
register_quantize_config(keras.layers.Activation, lambda layer: configs.OutputQuantizeConfig())
register_quantize_config(keras.layers.Embedding, lambda layer: configs.WeightsQuantizeConfig(["embeddings"]))
