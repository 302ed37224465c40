"""Gradient accumulation: K micro-batch steps of `model.fit` make one optimizer update.

`accumulate_gradients(model, steps=K)` gives a compiled Keras model a
`train_step` that adds each micro-batch's gradient to float32 accumulators
and applies their mean every K-th step (then zeroes them). With a loss that is
a mean over the batch and equal micro-batch sizes, the update equals that of
one K-times-larger batch: mean over K of per-micro-batch means = the mean over
the big batch. So a batch that does not fit in memory can be trained as K
micro-batches; `optimizer.iterations` and learning-rate schedules count
updates, not micro-batches.

Use it under the default or a single-device strategy (the conditional update
is not a cross-replica merge). Under "mixed_float16" the optimizer's
`LossScaleOptimizer` scales each micro-batch loss and unscales its gradients;
a non-finite accumulated gradient skips the update as usual.
"""

from __future__ import annotations

import types
from typing import Callable, Optional

import tensorflow as tf
import tf_keras as keras
from tf_keras.src.engine import data_adapter


class GradientAccumulator(tf.Module):
    """The accumulation state and step logic for one model (see module doc)."""

    def __init__(self, model: keras.Model, steps: int, loss_fn: Optional[Callable] = None):
        super().__init__(name="gradient_accumulator")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"Gradient accumulation steps must be a positive integer, got {steps!r}.")
        if not model.built:
            raise ValueError(
                f"Model {model.name!r} is not built; call it on a batch (or build it) before "
                "accumulate_gradients, so its trainable variables exist."
            )
        self.model = model
        self.steps = steps
        self.loss_fn = loss_fn
        self.micro_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="micro_step")
        self.gradients = [
            tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False, name=f"accumulated/{i}")
            for i, v in enumerate(model.trainable_variables)
        ]

    def _loss_and_logs(self, data):
        model = self.model
        if self.loss_fn is not None:
            return self.loss_fn(model, data)
        x, y, sample_weight = data_adapter.unpack_x_y_sample_weight(data)
        y_pred = model(x, training=True)
        loss = model.compute_loss(x, y, y_pred, sample_weight)
        return loss, (x, y, y_pred, sample_weight)

    def train_step(self, data):
        model = self.model
        optimizer = model.optimizer
        variables = model.trainable_variables
        scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            loss, extra = self._loss_and_logs(data)
            target = optimizer.get_scaled_loss(loss) if scaled else loss
        grads = tape.gradient(target, variables)
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        for accumulator, grad in zip(self.gradients, grads):
            if grad is not None:
                accumulator.assign_add(tf.cast(tf.convert_to_tensor(grad), tf.float32) / self.steps)
        self.micro_step.assign_add(1)

        def apply():
            updates = [
                (tf.cast(accumulator, v.dtype), v) for accumulator, v in zip(self.gradients, variables)
            ]
            # A LossScaleOptimizer's apply_gradients checks finiteness and skips bad updates.
            optimizer.apply_gradients(updates)
            for accumulator in self.gradients:
                accumulator.assign(tf.zeros_like(accumulator))
            return tf.constant(True)

        tf.cond(self.micro_step % self.steps == 0, apply, lambda: tf.constant(False))
        if self.loss_fn is not None:
            return extra
        x, y, y_pred, sample_weight = extra
        return model.compute_metrics(x, y, y_pred, sample_weight)


def accumulate_gradients(model: keras.Model, steps: int, loss_fn: Optional[Callable] = None) -> GradientAccumulator:
    """Makes `model.fit` accumulate `steps` micro-batches per optimizer update.

    Call after `model.compile` (and after the model is built). `loss_fn(model,
    data) -> (loss, logs_dict)` replaces the compiled loss for models with a
    custom `train_step` (e.g. `bert.BertPretrainer`: pass a function returning
    its MLM + NSP loss). Returns the accumulator (its `gradients` and
    `micro_step` variables are the state; a partially filled accumulator is
    not applied at the end of `fit`).
    """
    if model.optimizer is None:
        raise ValueError(f"Compile model {model.name!r} before calling accumulate_gradients.")
    accumulator = GradientAccumulator(model, steps, loss_fn)
    # Not tracked by the model: its weights (get_weights, saved files) stay those of the network.
    model.train_step = types.MethodType(lambda self, data: accumulator.train_step(data), model)
    model.train_function = None  # rebuild fit's tf.function around the new step
    return accumulator
