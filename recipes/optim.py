"""BERT's optimizer set-up for the recipes: linear warm-up + linear decay, AdamW or LAMB.

Weight decay skips LayerNorm parameters and biases, as in the original BERT
(`exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"]`).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

NO_DECAY = ("layer_norm", "LayerNorm", "bias")


@keras.utils.register_keras_serializable(package="tfreparam_recipes")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = peak · step / warmup for step < warmup, then linear decay to 0 at `total_steps`."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0):
        if peak <= 0:
            raise ValueError(f"The peak learning rate must be > 0, got {peak}.")
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"Need total_steps >= 1 and 0 <= warmup_steps <= total_steps; got {total_steps} and {warmup_steps}."
            )
        self.peak, self.total_steps, self.warmup_steps = float(peak), int(total_steps), int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup_steps, 1)
        remaining = max(self.total_steps - self.warmup_steps, 1)
        decay = self.peak * tf.maximum(0.0, 1.0 - (step - self.warmup_steps) / remaining)
        return tf.where(step < self.warmup_steps, warm, decay)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}


@keras.utils.register_keras_serializable(package="tfreparam_recipes")
class Lamb(keras.optimizers.Optimizer):
    """LAMB (You et al. 2020): Adam moments with a per-tensor trust ratio ||w|| / ||update||.

    For large-batch pre-training; decoupled weight decay enters the update
    before the trust ratio, as in the paper.
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-6, weight_decay_rate=0.01,
                 name="Lamb", **kwargs):
        super().__init__(name=name, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.weight_decay_rate = weight_decay_rate
        self._no_decay = set()

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        self._no_decay_names = tuple(var_names or ())

    def _decays(self, variable):
        return not any(key in variable.name for key in getattr(self, "_no_decay_names", ()))

    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True
        self._m = [self.add_variable_from_reference(v, "m") for v in var_list]
        self._v = [self.add_variable_from_reference(v, "v") for v in var_list]

    def update_step(self, gradient, variable):
        lr = tf.cast(self.learning_rate, variable.dtype)
        step = tf.cast(self.iterations + 1, variable.dtype)
        index = self._index_dict[self._var_key(variable)]
        m, v = self._m[index], self._v[index]
        if isinstance(gradient, tf.IndexedSlices):
            # Embedding gradients: every row's moments decay each step, and the trust ratio is per tensor.
            gradient = tf.convert_to_tensor(gradient)
        m.assign(self.beta_1 * m + (1 - self.beta_1) * gradient)
        v.assign(self.beta_2 * v + (1 - self.beta_2) * tf.square(gradient))
        m_hat = m / (1 - tf.pow(tf.cast(self.beta_1, variable.dtype), step))
        v_hat = v / (1 - tf.pow(tf.cast(self.beta_2, variable.dtype), step))
        update = m_hat / (tf.sqrt(v_hat) + self.epsilon)
        if self.weight_decay_rate and self._decays(variable):
            update += self.weight_decay_rate * variable
        w_norm, u_norm = tf.norm(variable), tf.norm(update)
        trust = tf.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, tf.ones_like(w_norm))
        variable.assign_sub(lr * trust * update)

    def get_config(self):
        config = super().get_config()
        config.update(learning_rate=self._serialize_hyperparameter(self._learning_rate), beta_1=self.beta_1,
                      beta_2=self.beta_2, epsilon=self.epsilon, weight_decay_rate=self.weight_decay_rate)
        return config


def bert_optimizer(name: str, peak: float, total_steps: int, warmup_steps: int, weight_decay: float = 0.01):
    """AdamW or LAMB on a warm-up/decay schedule, without weight decay on LayerNorm and biases."""
    schedule = WarmupLinearDecay(peak, total_steps, warmup_steps)
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=weight_decay, epsilon=1e-6)
    elif name == "lamb":
        optimizer = Lamb(schedule, weight_decay_rate=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'lamb', got {name!r}.")
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    return optimizer
