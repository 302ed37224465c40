"""The pieces of a unit-scaled BERT (`BertConfig(unit_scaled=True)`), see `tfreparam.unit_scaling`.

`build_encoder` swaps in these layers when the config asks for unit scaling:
unit-scaled projections (Dense, or LowRank under a policy), a unit-variance
word embedding whose tied MLM decoder is a unit-scaled matmul, a unit-scaled
sum of the three embeddings, unit-scaled attention and FFN activation, and
τ-weighted residual adds. LayerNorm is unchanged: its forward output is unit
by construction, and its backward divides by its input's RMS, which the
unit-scaled residual sums keep near 1 (BERT is post-LN). Train it with
`build_pretrainer` from this module: its MLM and NSP losses use the
unit-scaled softmax cross-entropy, whose gradient is O(1) per token.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from bert import layers as bert_layers
from bert.config import BertConfig
from bert.heads import BertPretrainer, build_pretraining_network
from tfreparam import unit_scaling
from tfreparam.unit_scaling import ops

# Share of each residual sum's variance that comes from the branch. Measured on a 12-layer, width-64
# unit-scaled BERT at init (tests/training/test_unit_scaling.py): τ = 0.5 lets attention average token
# representations into near-copies mid-stack (rank collapse), so the query/key gradients vanish and the
# LayerNorm-output gradients sag to ~0.25; τ ≤ 0.2 keeps the tokens distinct but the skip path then
# carries the gradient through 24 post-LN LayerNorms whose inputs sit below unit RMS, so it grows ~3×
# towards the embeddings. τ = 0.3 keeps every LayerNorm-output gradient within about [0.6, 2].
RESIDUAL_TAU = 0.3


def projection(spec, in_features, units, **dense_kwargs):
    """A unit-scaled projection for a policy spec (None: Dense; LowRank: low-rank)."""
    if spec is None:
        return unit_scaling.UnitScaledDense(units, **dense_kwargs)
    family, kwargs = spec.layer_kwargs(in_features, units)
    if family != "low_rank":
        raise ValueError(
            f"unit_scaled=True supports Dense and LowRank projections only; the policy gives "
            f"{type(spec).__name__} for {dense_kwargs.get('name')!r}."
        )
    return unit_scaling.UnitScaledLowRankDense(units, **kwargs, **dense_kwargs)


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
class UnitScaledTypeEmbedding(unit_scaling.UnitScaledEmbedding):
    """Token-type embedding: unit-normal table, gradient ×√(vocab / tokens) (`ops.embedding`)."""


def layer_norm(name, epsilon):
    return UnitScaledLayerNormalization(epsilon=epsilon, name=name)


def residual_split(name):
    return ResidualSplit(RESIDUAL_TAU, name=name)


def activation(name, layer_name):
    return UnitScaledActivation(name, name=layer_name)


def embedding_sum(name):
    return EmbeddingSum(name=name)


def residual_add(name):
    return unit_scaling.ResidualAdd(RESIDUAL_TAU, name=name)


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
        context, probs = ops.attention(q, k, v, bias[:, tf.newaxis, tf.newaxis, :])
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


def build_pretrainer(config: BertConfig, layer_policy=None, max_predictions_per_seq: int = 20) -> UnitScaledPretrainer:
    """The unit-scaled counterpart of `bert.build_pretrainer` (config must have unit_scaled=True)."""
    if not config.unit_scaled:
        raise ValueError("bert.unit_scaled.build_pretrainer needs BertConfig(unit_scaled=True).")
    network = build_pretraining_network(config, layer_policy=layer_policy,
                                        max_predictions_per_seq=max_predictions_per_seq)
    return UnitScaledPretrainer(network, name="bert_pretrainer")
