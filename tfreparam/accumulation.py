"""Gradient accumulation: K micro-batch steps of `fit` make one optimizer update.

`accumulate_gradients(model, steps=K)` returns a `GradientAccumulator`: a
small `keras.Model` that wraps the compiled `model` and overrides
`train_step` (the Keras way to change what `fit` does, as `Distiller` and
`BertPretrainer` do). Fit the accumulator instead of the model; it trains the
model's own variables with the model's own optimizer, loss and metrics. Each
micro-batch's gradient is added to float32 accumulators; every K-th step their
mean is applied and they are zeroed. With a loss that is a mean over the batch
and equal micro-batch sizes, the update equals that of one K-times-larger
batch (mean over K of per-micro-batch means = the mean over the big batch), so
a batch that does not fit in memory trains as K micro-batches.
`optimizer.iterations` and learning-rate schedules count updates, not
micro-batches.

    model.compile(optimizer="adam", loss="mse")
    trainer = accumulation.accumulate_gradients(model, steps=4)
    trainer.fit(x, y, batch_size=8)      # updates `model` as with batch_size=32
    model.save(...)                      # the model is unchanged otherwise

Use it under the default or a single-device strategy (the conditional update
is not a cross-replica merge). Under "mixed_float16" the model's
`LossScaleOptimizer` scales each micro-batch loss and unscales its gradients;
a non-finite accumulated gradient skips the update as usual.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf
import tf_keras as keras
from tf_keras.src.engine import data_adapter


class GradientAccumulator(keras.Model):
    """Fits `model` with one optimizer update per `steps` micro-batches (see the module doc).

    `loss_fn(model, data) -> (loss, logs_dict)` replaces the compiled loss,
    for models with their own `train_step` (e.g. `bert.BertPretrainer`: a
    function returning its MLM + NSP loss and the logs to report).

    Its variables are the model's plus the accumulation state (`gradients`,
    `micro_step`), so a checkpoint of the accumulator resumes mid-update;
    save the model itself for inference. `predict` and `evaluate` run the
    model's own steps.
    """

    def __init__(self, model: keras.Model, steps: int, loss_fn: Optional[Callable] = None, **kwargs):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"Gradient accumulation steps must be a positive integer, got {steps!r}.")
        if model.optimizer is None:
            raise ValueError(f"Compile model {model.name!r} before calling accumulate_gradients.")
        if not model.built:
            raise ValueError(
                f"Model {model.name!r} is not built; call it on a batch (or build it) before "
                "accumulate_gradients, so its trainable variables exist."
            )
        kwargs.setdefault("name", f"{model.name}_accumulating")
        super().__init__(**kwargs)
        self.inner_model = model
        self.steps = steps
        self.loss_fn = loss_fn
        self.micro_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="micro_step")
        self.gradients = [
            tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False, name=f"accumulated/{i}")
            for i, v in enumerate(model.trainable_variables)
        ]
        # Same optimizer object (so `model.optimizer.iterations` counts the updates); the loss
        # and metrics stay the model's, read in train_step.
        super().compile(optimizer=model.optimizer, run_eagerly=model.run_eagerly, jit_compile=model.jit_compile)

    @property
    def metrics(self):
        """The model's metrics, so `fit` resets them every epoch."""
        return self.inner_model.metrics

    def call(self, inputs, training=None):
        return self.inner_model(inputs, training=training)

    def _loss_and_logs(self, data):
        model = self.inner_model
        if self.loss_fn is not None:
            return self.loss_fn(model, data)
        x, y, sample_weight = data_adapter.unpack_x_y_sample_weight(data)
        y_pred = model(x, training=True)
        loss = model.compute_loss(x, y, y_pred, sample_weight)
        return loss, (x, y, y_pred, sample_weight)

    def train_step(self, data):
        model = self.inner_model
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
            updates = [(tf.cast(accumulator, v.dtype), v) for accumulator, v in zip(self.gradients, variables)]
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

    def test_step(self, data):
        return self.inner_model.test_step(data)

    def predict_step(self, data):
        return self.inner_model.predict_step(data)


def accumulate_gradients(model: keras.Model, steps: int, loss_fn: Optional[Callable] = None) -> GradientAccumulator:
    """A `GradientAccumulator` that fits `model` with one update per `steps` micro-batches.

    Call after `model.compile` (and after the model is built), then call `fit`
    on the returned accumulator, not on `model`. `loss_fn(model, data) ->
    (loss, logs_dict)` replaces the compiled loss for models with a custom
    `train_step`. A partially filled accumulator is not applied at the end of
    `fit`. `model` itself is not modified.
    """
    return GradientAccumulator(model, steps, loss_fn)
