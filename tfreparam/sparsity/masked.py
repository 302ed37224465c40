"""Movement pruning and L1 sparsification: masks applied in the forward pass, set by a callback.

`MaskedWeights` wraps a projection (Dense or tfreparam layer). In its call each
prunable weight W is replaced by W ⊙ M (the variable itself keeps its value,
so a weight pruned early can come back while the schedule still runs), and
the backward pass accumulates the movement score S ← S − W ⊙ ∂L/∂(W ⊙ M)
(Sanh et al., 2020; straight-through: every entry's score moves, pruned or
not). Masked entries get no gradient.

The masks are set by the `UpdateMasks` callback at the steps of each
wrapper's schedule (Zhu & Gupta's cubic ramp, as in TFMOT):

* method "movement": keep the entries with the largest scores S (signed: a
  weight moving towards zero has a negative score and goes first).
* method "magnitude": keep the largest |W|. With `l1 > 0` the wrapper also
  adds `l1 * Σ|W|` to the model's losses (driving weights towards zero), and
  with `begin_step == end_step` the threshold is applied once: L1
  sparsification with a final threshold. `end_step=None` applies it at the
  end of `fit`.

Training a model with these wrappers without `UpdateMasks` fails at the first
step with a message saying so, rather than silently not pruning.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

import tfreparam.sparsity.selection as selection
from tfreparam.sparsity._tfmot import PruneLowMagnitude
from tfreparam.sparsity.wrapping import refuse_wrapped, rewrap

_METHODS = ("movement", "magnitude")
_MISSING_CALLBACK = (
    "tfreparam MaskedWeights (movement / L1 pruning) needs the "
    "tfreparam.sparsity.UpdateMasks() callback in model.fit(callbacks=[...]); "
    "without it the masks would never be updated."
)


@dataclasses.dataclass
class _Entry:
    name: str  # attribute of the wrapped layer
    weight: tf.Variable
    mask: tf.Variable
    score: tf.Variable


@keras.utils.register_keras_serializable(package="tfreparam")
class MaskedWeights(keras.layers.Wrapper):
    """Applies masks to a projection's prunable weights; see the module docstring."""

    def __init__(
        self,
        layer,
        method="movement",
        target_sparsity=0.5,
        begin_step=0,
        end_step=None,
        frequency=1,
        initial_sparsity=0.0,
        l1=0.0,
        **kwargs,
    ):
        if isinstance(layer, dict):
            layer = keras.layers.deserialize(layer)
        kwargs.setdefault("name", f"masked_{layer.name}")
        super().__init__(layer, **kwargs)
        if method not in _METHODS:
            raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}.")
        if not 0.0 <= float(target_sparsity) < 1.0 or not 0.0 <= float(initial_sparsity) < 1.0:
            raise ValueError(
                f"Sparsities must be in [0, 1); got target_sparsity={target_sparsity}, "
                f"initial_sparsity={initial_sparsity}."
            )
        if int(frequency) < 1 or int(begin_step) < 0:
            raise ValueError(f"Need frequency >= 1 and begin_step >= 0; got {frequency}, {begin_step}.")
        if end_step is not None and int(end_step) < int(begin_step):
            raise ValueError(f"`end_step` ({end_step}) must be >= `begin_step` ({begin_step}) or None.")
        if float(l1) < 0:
            raise ValueError(f"`l1` must be >= 0, got {l1}.")
        self.method = method
        self.target_sparsity = float(target_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = None if end_step is None else int(end_step)
        self.frequency = int(frequency)
        self.initial_sparsity = float(initial_sparsity)
        self.l1 = float(l1)
        self.entries: list[_Entry] = []

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        entries = []
        for name, weight in selection.prunable_weights(self.layer):
            dtype = getattr(weight, "true_dtype", weight.dtype)
            mask = self.add_weight(f"mask_{name}", shape=weight.shape, dtype=dtype,
                                   initializer="ones", trainable=False)
            score = self.add_weight(f"score_{name}", shape=weight.shape, dtype=dtype,
                                    initializer="zeros", trainable=False)
            entries.append(_Entry(name, weight, mask, score))
        self.entries = entries
        # Completed training steps (the schedule's clock) and whether an
        # UpdateMasks callback is driving this fit.
        self.step = self.add_weight("step", shape=(), dtype=tf.int64, initializer="zeros", trainable=False)
        self.callback_attached = self.add_weight(
            "callback_attached", shape=(), dtype=tf.int64, initializer="zeros", trainable=False
        )
        super().build(input_shape)

    # -- the schedule -------------------------------------------------------------

    def sparsity_at(self, step: int) -> Optional[float]:
        """The sparsity to prune to after `step` completed steps, or None (no update then)."""
        if self.end_step is None:
            return None  # applied once, at the end of fit
        if step < self.begin_step or step > self.end_step or (step - self.begin_step) % self.frequency:
            return None
        if self.end_step == self.begin_step:
            return self.target_sparsity
        progress = (step - self.begin_step) / (self.end_step - self.begin_step)
        return self.target_sparsity + (self.initial_sparsity - self.target_sparsity) * (1 - progress) ** 3

    def update_masks(self, sparsity: float) -> None:
        """Keeps the top max(round(size · (1 − sparsity)), 1) entries of every weight."""
        for entry in self.entries:
            if self.method == "movement":
                ranking = entry.score.numpy()
            else:
                ranking = np.abs(entry.weight.numpy())
            entry.mask.assign(top_k_mask(ranking, sparsity).astype(entry.mask.dtype.as_numpy_dtype))

    # -- the forward pass ---------------------------------------------------------

    def call(self, inputs, training=None, **kwargs):
        if training is None:
            training = keras.backend.learning_phase()
        checks = self._check_callback(training)
        if self.l1 > 0:
            self.add_loss(
                self.l1 * tf.add_n([tf.reduce_sum(tf.abs(e.weight)) for e in self.entries])
            )
        originals = {}
        with tf.control_dependencies(checks):
            for entry in self.entries:
                originals[entry.name] = entry.weight
                # object.__setattr__: swap the tensor in for this call only,
                # without Keras re-tracking (which would drop the variable).
                object.__setattr__(self.layer, entry.name, _masked(entry.weight, entry.mask, entry.score))
            try:
                return self.layer.call(inputs, **kwargs)
            finally:
                for name, weight in originals.items():
                    object.__setattr__(self.layer, name, weight)

    def _check_callback(self, training):
        if isinstance(training, (bool, int)):
            if not training:
                return []
            if tf.executing_eagerly():
                if int(self.callback_attached.numpy()) != 1:
                    raise ValueError(_MISSING_CALLBACK)
                return []
            return [tf.debugging.assert_equal(self.callback_attached, tf.constant(1, tf.int64),
                                              message=_MISSING_CALLBACK)]
        check = tf.cond(
            tf.cast(training, tf.bool),
            lambda: tf.equal(self.callback_attached, 1),
            lambda: tf.constant(True),
        )
        return [tf.debugging.Assert(check, [_MISSING_CALLBACK])]

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            method=self.method,
            target_sparsity=self.target_sparsity,
            begin_step=self.begin_step,
            end_step=self.end_step,
            frequency=self.frequency,
            initial_sparsity=self.initial_sparsity,
            l1=self.l1,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layer = keras.layers.deserialize(config.pop("layer"))
        return cls(layer, **config)


def _masked(weight, mask, score):
    """W ⊙ M whose backward pass adds −W ⊙ ∂L/∂(W ⊙ M) to the score variable."""

    @tf.custom_gradient
    def masked(w, m):
        def grad(upstream):
            accumulate = score.assign_sub(tf.cast(w * upstream, score.dtype))
            with tf.control_dependencies([accumulate]):
                return tf.identity(upstream * m), tf.zeros_like(m)

        return w * m, grad

    w = tf.convert_to_tensor(weight)
    return masked(w, tf.cast(tf.convert_to_tensor(mask), w.dtype))


# Wrappers that mark a layer as already being pruned (TFMOT's and ours).
PRUNING_WRAPPERS = (PruneLowMagnitude, MaskedWeights)


def top_k_mask(ranking: np.ndarray, sparsity: float) -> np.ndarray:
    """1 for the max(round(size · (1 − sparsity)), 1) largest entries of `ranking`, else 0."""
    flat = np.asarray(ranking).reshape(-1)
    keep = max(int(np.round(flat.size * (1.0 - sparsity))), 1)
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, np.float32)
    mask[order[:keep]] = 1.0
    return mask.reshape(np.shape(ranking))


def masked_layers(model) -> list[MaskedWeights]:
    return [layer for layer in model.layers if isinstance(layer, MaskedWeights)]


class UpdateMasks(keras.callbacks.Callback):
    """Drives every `MaskedWeights` of the model: advances its step and updates its masks."""

    def on_train_begin(self, logs=None):
        self._wrappers = masked_layers(self.model)
        for wrapper in self._wrappers:
            wrapper.callback_attached.assign(1)

    def on_train_batch_end(self, batch, logs=None):
        for wrapper in self._wrappers:
            step = int(wrapper.step.assign_add(1).numpy())
            sparsity = wrapper.sparsity_at(step)
            if sparsity is not None:
                wrapper.update_masks(sparsity)

    def on_train_end(self, logs=None):
        for wrapper in self._wrappers:
            if wrapper.end_step is None:
                wrapper.update_masks(wrapper.target_sparsity)
            wrapper.callback_attached.assign(0)


def movement_pruning(
    model: keras.Model,
    target_sparsity: float,
    begin_step: int,
    end_step: int,
    frequency: int = 1,
    initial_sparsity: float = 0.0,
    policy: selection.Policy = None,
) -> keras.Model:
    """A copy of `model` set up for movement pruning; fit it with `callbacks=[UpdateMasks()]`.

    Sparsity follows the cubic schedule from `initial_sparsity` at
    `begin_step` to `target_sparsity` at `end_step` (mask updates every
    `frequency` steps); masks keep the top-scoring entries of each weight.
    `strip` bakes the masks in.
    """
    if end_step is None or end_step < begin_step:
        raise ValueError(f"Movement pruning needs end_step >= begin_step, got {begin_step}, {end_step}.")
    return _wrap(model, policy, dict(
        method="movement", target_sparsity=target_sparsity, begin_step=begin_step,
        end_step=end_step, frequency=frequency, initial_sparsity=initial_sparsity,
    ))


def l1_sparsification(
    model: keras.Model,
    target_sparsity: float,
    l1: float = 1e-4,
    threshold_step: Optional[int] = None,
    policy: selection.Policy = None,
) -> keras.Model:
    """A copy of `model` with an L1 penalty `l1 * Σ|W|` on every selected weight and a final threshold.

    The threshold zeroes the smallest-|W| entries of each weight to reach
    `target_sparsity`, once: after `threshold_step` training steps, or at the
    end of `fit` if None. Fit with `callbacks=[UpdateMasks()]`; later fits keep
    the zeros.
    """
    if l1 <= 0:
        raise ValueError(f"`l1` must be > 0 for L1 sparsification, got {l1}.")
    step = None if threshold_step is None else int(threshold_step)
    return _wrap(model, policy, dict(
        method="magnitude", target_sparsity=target_sparsity, begin_step=step or 0,
        end_step=step, l1=l1,
    ))


def _wrap(model, policy, params):
    refuse_wrapped(model, PRUNING_WRAPPERS)
    chosen = selection.select_layers(model, policy)
    return rewrap(model, {l.name for l in chosen}, lambda layer: MaskedWeights(layer, **params))
