"""The pieces of a unit-scaled BERT (`BertConfig(unit_scaled=True)`), see `tfreparam.unit_scaling`.

`bert.kits.UnitScaledKit` builds a BERT from these layers (the builder picks
that kit for `BertConfig(unit_scaled=True)`): unit-scaled projections (Dense,
or LowRank under a policy), a unit-variance word embedding whose tied MLM
decoder is a unit-scaled matmul, a unit-scaled sum of the three embeddings,
unit-scaled attention and FFN activation, and τ-weighted residual adds.
LayerNorm is unchanged: its forward output is unit by construction, and its
backward divides by its input's RMS, which the unit-scaled residual sums keep
near 1 (BERT is post-LN). `bert.build_pretrainer` trains it with
`UnitScaledPretrainer`, whose MLM and NSP losses use the unit-scaled softmax
cross-entropy (gradient O(1) per token).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

import bert.layers as bert_layers
import tfreparam.unit_scaling.ops as ops
from bert.pretrainer import BertPretrainer
from tfreparam.unit_scaling.layers import UnitScaledEmbedding

# Share of each residual sum's variance that comes from the branch. Measured on a 12-layer, width-64
# unit-scaled BERT at init (tests/training/test_unit_scaling.py): τ = 0.5 lets attention average token
# representations into near-copies mid-stack (rank collapse), so the query/key gradients vanish and the
# LayerNorm-output gradients sag to ~0.25; τ ≤ 0.2 keeps the tokens distinct but the skip path then
# carries the gradient through 24 post-LN LayerNorms whose inputs sit below unit RMS, so it grows ~3×
# towards the embeddings. τ = 0.3 keeps every LayerNorm-output gradient within about [0.6, 2].
RESIDUAL_TAU = 0.3


@keras.utils.register_keras_serializable(package="bert")
class UnitScaledActivation(keras.layers.Layer):
    """A BERT activation ("gelu", "gelu_tanh", "relu") with `ops.activation`'s unit scales."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activation
        self._fn = keras.activations.get(bert_layers.activation(activation))

    def call(self, inputs):
        return ops.activation(inputs, self._fn, self.activation)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


@keras.utils.register_keras_serializable(package="bert")
class EmbeddingSum(keras.layers.Layer):
    """Word + type + position embeddings as `ops.add` (÷√3 forward; the broadcast position gradient ÷√batch)."""

    def call(self, inputs):
        return ops.add(inputs)


@keras.utils.register_keras_serializable(package="bert")
class ResidualSplit(keras.layers.Layer):
    """Identity forward; the branch's gradient ×√τ on its way back to the split point.

    With `ResidualAdd`'s forward-only weights this keeps the gradients inside
    the branch at unit scale (Blake et al.'s residual_split / residual_add pair).
    """

    def __init__(self, tau, **kwargs):
        super().__init__(**kwargs)
        self.tau = float(tau)

    def call(self, inputs):
        return ops.scale_gradient(inputs, self.tau ** 0.5)

    def get_config(self):
        return {**super().get_config(), "tau": self.tau}


def _rows(x):
    return tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)


@keras.utils.register_keras_serializable(package="bert")
class UnitScaledLayerNormalization(keras.layers.LayerNormalization):
    """LayerNorm whose gamma/beta gradients are ÷√N (N = tokens), like a unit-scaled bias.

    The forward is the ordinary LayerNorm. Unscaled, these gradients are sums
    over all N tokens of O(1) terms and reach the hundreds at batch 32 x 16,
    so Adam's squared gradient overflows float16 (max 65504).
    """

    def build(self, input_shape):
        axes = list(self.axis) if isinstance(self.axis, (list, tuple)) else [self.axis]
        if axes not in ([-1], [len(input_shape) - 1]):
            raise ValueError(f"UnitScaledLayerNormalization normalises the last axis only, got axis={self.axis}.")
        super().build(input_shape)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        normalized = (x - mean) * tf.math.rsqrt(variance + self.epsilon)
        scale = tf.math.rsqrt(_rows(x))
        if self.gamma is not None:
            normalized = normalized * ops.scale_gradient(tf.cast(self.gamma, tf.float32), scale)
        if self.beta is not None:
            normalized = normalized + ops.scale_gradient(tf.cast(self.beta, tf.float32), scale)
        return tf.cast(normalized, self.compute_dtype)


@keras.utils.register_keras_serializable(package="bert")
class UnitScaledBias(bert_layers.Bias):
    """The MLM output bias with its gradient ÷√N (N = predictions), as in `ops.linear`."""

    def call(self, inputs):
        bias = ops.scale_gradient(tf.cast(self.bias, inputs.dtype), tf.math.rsqrt(_rows(inputs)))
        return inputs + bias


@keras.utils.register_keras_serializable(package="bert")
class UnitScaledTypeEmbedding(UnitScaledEmbedding):
    """Token-type embedding: unit-normal table, gradient ×√(vocab / tokens) (`ops.embedding`)."""


@keras.utils.register_keras_serializable(package="bert")
class UnitScaledWordEmbedding(bert_layers.WordEmbedding):
    """Unit-variance table; "embed" is `ops.embedding`, "attend" the unit-scaled `hidden · tableᵀ`."""

    def call(self, inputs, mode="embed"):
        table = tf.cast(tf.convert_to_tensor(self.embeddings), self.compute_dtype)
        if mode == "embed":
            return ops.embedding(inputs, table)
        if mode == "attend":
            return ops.matmul(tf.cast(inputs, self.compute_dtype), tf.transpose(table))
        raise ValueError(f"mode must be 'embed' or 'attend', got {mode!r}.")


@keras.utils.register_keras_serializable(package="bert")
class UnitScaledAttentionMath(bert_layers.AttentionMath):
    """`AttentionMath` with `ops.attention` (unit-scaled scores, probabilities and context)."""

    def call(self, inputs, training=None):
        query, key, value, mask = inputs
        hidden = query.shape[-1]
        head_size = hidden // self.num_heads
        q, k, v = (self._split_heads(t, head_size) for t in (query, key, value))
        bias = (1.0 - tf.cast(mask, tf.float32)) * bert_layers.MASK_VALUE
        context, probs = ops.attention(q, k, v, bert_layers.per_key_over_scores(bias))
        context = self._dropout_layer(context, training=training)
        context = tf.transpose(context, (0, 2, 1, 3))
        context = tf.reshape(context, (tf.shape(query)[0], tf.shape(query)[1], hidden))
        return (context, probs) if self.return_probs else context


@keras.utils.register_keras_serializable(package="bert")
class UnitScaledPretrainer(BertPretrainer):
    """`BertPretrainer` whose MLM and NSP losses are `ops.softmax_cross_entropy` (unit-scale gradients)."""

    def _pretraining_losses(self, features, outputs):
        values = super()._pretraining_losses(features, outputs)  # accuracies (and reference losses)
        values["mlm_loss"] = ops.softmax_cross_entropy(
            features["masked_lm_ids"], outputs["mlm_logits"], features["masked_lm_weights"]
        )
        labels = tf.reshape(tf.cast(features["next_sentence_labels"], tf.int32), (-1,))
        values["nsp_loss"] = ops.softmax_cross_entropy(labels, outputs["nsp_logits"])
        return values
