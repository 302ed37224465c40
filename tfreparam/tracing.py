"""Trace a training step once, not twice: create its variables before the first call.

A `tf.function` that creates variables on its first call is traced twice:
once to create them, then again without creating any. Keras creates the
optimizer's slots and the compiled loss's trackers inside the first train
step, so every `fit` (and every custom loop that calls `apply_gradients`)
pays two traces; for a BERT that is seconds per call. Creating them before
the first step halves that and changes no number.

    tracing.build_for_fit(model)          # after compile, right before fit
    tracing.build_optimizer(optimizer, variables)   # custom training loops
"""

from __future__ import annotations


def build_optimizer(optimizer, variables) -> None:
    """Creates `optimizer`'s slots for `variables` (the list later given to `apply_gradients`, or a superset)."""
    optimizer.build(list(variables))


def build_for_fit(model, variables=None) -> None:
    """Creates what `model.fit`'s first train step would: the optimizer's slots and the compiled loss's trackers.

    `variables`: those the train step updates (default `model.trainable_variables`). Call it after `compile` and
    right before `fit`, once trainability is final: the optimizer only updates the variables it was built with.
    Compiled metrics are left to Keras (building them needs the labels' shapes); with metrics `fit` still traces twice.
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError(f"{model.name!r} is not compiled: call compile(optimizer=...) before build_for_fit.")
    with model.distribute_strategy.scope():
        build_optimizer(optimizer, model.trainable_variables if variables is None else variables)
        losses = getattr(model, "compiled_loss", None)
        if losses is not None and not losses.built and getattr(model, "outputs", None):
            losses.build(model.output)
