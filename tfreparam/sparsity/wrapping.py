"""Copying a model with some layers wrapped: what every pruning and clustering entry point shares."""

from __future__ import annotations

import tf_keras as keras


def refuse_wrapped(model: keras.Model, wrapper_types: tuple) -> None:
    """Raises if `model` already has a layer wrapped by one of `wrapper_types` (pruning wrappers)."""
    for layer in model.layers:
        if isinstance(layer, wrapper_types):
            raise ValueError(
                f"'{model.name}' already has pruning wrappers (e.g. '{layer.name}'); call "
                "tfreparam.sparsity.strip(model) before pruning it again."
            )


def rewrap(model: keras.Model, names: set, wrap) -> keras.Model:
    """A copy of `model` (fresh layers, copied weights) whose layers in `names` go through `wrap`.

    Fresh copies keep the input model untouched (TFMOT's own
    `prune_low_magnitude(model)` wraps, and then prunes, the original layers).
    Copies get their weights before `wrap` sees them: clustering wrappers
    initialise their centroids from the weights at build time.
    """

    def clone(layer):
        copy = layer.__class__.from_config(layer.get_config())
        if layer.weights:
            copy.build(getattr(layer, "_build_input_shape", None) or layer.input_shape)
            copy.set_weights(layer.get_weights())
        return wrap(copy) if layer.name in names else copy

    return keras.models.clone_model(model, clone_function=clone)
