"""The small non-projection layers of the flat BERT graph.

Each op that is not a projection gets its own tiny, serialisable layer (rather
than a TFOpLambda), so model surgery, TFMOT wrappers and QuantizeConfigs can
address it by name.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

# Additive attention-mask value: large enough to zero a softmax weight, small
# enough to stay finite in float16 (max 65504) and to survive int8 scaling.
MASK_VALUE = -10000.0


@keras.utils.register_keras_serializable(package="bert")
def gelu_tanh(x):
    """GELU with the tanh approximation (BERT's exact GELU is `keras.activations.gelu`)."""
    return tf.nn.gelu(x, approximate=True)


def activation(name: str):
    return {"gelu": "gelu", "gelu_tanh": gelu_tanh, "relu": "relu"}[name]


def truncated_normal(stddev):
    return keras.initializers.TruncatedNormal(stddev=stddev)


def per_key_over_scores(per_key):
    """A (batch, keys) tensor as (batch, 1, 1, keys): it broadcasts over the heads and queries of the scores.

    expand_dims, not a new-axis slice (`x[:, None, None, :]`): TFLite has no builtin for that StridedSlice
    once the sequence length is dynamic, and a file of any length would need the Flex delegate.
    """
    return tf.expand_dims(tf.expand_dims(per_key, 1), 1)


@keras.utils.register_keras_serializable(package="bert")
class WordEmbedding(keras.layers.Layer):
    """Token embedding table, also used (transposed) as the MLM decoder.

    `layer(ids)` looks embeddings up; `layer(hidden, mode="attend")` returns
    logits hidden · tableᵀ, so the decoder is tied to the embeddings by
    calling the same layer twice in the functional graph.
    """

    def __init__(self, vocab_size, embedding_size, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.embedding_size = int(embedding_size)
        self.initializer_range = float(initializer_range)
        self.set_quantize_hooks()

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            "embeddings",
            shape=(self.vocab_size, self.embedding_size),
            initializer=truncated_normal(self.initializer_range),
        )
        super().build(input_shape)

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def set_quantize_hooks(self, table=None, attend_output=None) -> None:
        """The QAT hooks (`bert.quantization.WordEmbeddingQuantizeConfig` sets them on every call).

        `table`: a tensor used in place of `embeddings` by both modes (the
        fake-quantized table); `attend_output`: a callable applied to the
        "attend" logits (the decoder's output range; the layer is called twice
        in a pretraining network, so the wrapper's single output quantizer
        cannot serve). `None` restores the float computation.
        """
        self.quantized_table = table
        self.attend_output_hook = attend_output

    def call(self, inputs, mode="embed"):
        table = self.embeddings if self.quantized_table is None else self.quantized_table
        if mode == "embed":
            return tf.gather(table, tf.cast(inputs, tf.int32))
        if mode == "attend":
            logits = tf.matmul(inputs, table, transpose_b=True)
            return logits if self.attend_output_hook is None else self.attend_output_hook(logits)
        raise ValueError(f"mode must be 'embed' or 'attend', got {mode!r}.")

    def compute_output_shape(self, input_shape):  # for mode="embed"
        return tf.TensorShape(input_shape).concatenate([self.embedding_size])

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            embedding_size=self.embedding_size,
            initializer_range=self.initializer_range,
        )
        return config


@keras.utils.register_keras_serializable(package="bert")
class PositionEmbedding(keras.layers.Layer):
    """Learned absolute position embeddings for the first `seq_length` positions."""

    def __init__(self, max_length, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.max_length = int(max_length)
        self.initializer_range = float(initializer_range)

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if input_shape[1] is not None and input_shape[1] > self.max_length:
            raise ValueError(
                f"Sequence length {input_shape[1]} exceeds max_position_embeddings={self.max_length}."
            )
        width = input_shape[-1]
        self.embeddings = self.add_weight(
            "embeddings",
            shape=(self.max_length, width),
            initializer=truncated_normal(self.initializer_range),
        )
        super().build(input_shape)

    def call(self, inputs):
        """inputs: (batch, seq, width) -> the (1, seq, width) position table slice."""
        seq_length = tf.shape(inputs)[1]
        return tf.expand_dims(self.embeddings[:seq_length], 0)

    def get_config(self):
        config = super().get_config()
        config.update(max_length=self.max_length, initializer_range=self.initializer_range)
        return config


@keras.utils.register_keras_serializable(package="bert")
class AttentionMath(keras.layers.Layer):
    """Multi-head scaled dot-product attention on projected q, k, v.

    inputs: [query, key, value] of shape (batch, seq, hidden) and the padding
    mask (batch, seq) with 1 for real tokens. Softmax runs in float32 under
    mixed precision. Returns the context (batch, seq, hidden), and the
    attention probabilities (batch, heads, seq, seq) if `return_probs`.

    Quantization-aware training (`bert.quantization`) sets callables at the
    points where the int8 kernels requantize with `set_quantize_hooks`.
    """

    def __init__(self, num_heads, dropout=0.0, return_probs=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.return_probs = bool(return_probs)
        self._dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.set_quantize_hooks(None)

    # The tensors a QAT hook may replace, in call order ("masked_logits" takes (scores, mask)).
    QUANTIZE_POINTS = ("scaled_query", "scores", "masked_logits", "probs", "context")

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def set_quantize_hooks(self, hooks) -> None:
        """Sets the QAT hooks: a mapping from names in `QUANTIZE_POINTS` to callables, or `None` (float).

        "scaled_query", "scores", "probs" and "context" are applied to that
        tensor (fake-quants where the int8 kernels requantize); "masked_logits"
        replaces the additive mask: `(scores, mask) -> logits`. Missing names
        leave their step as it is.
        """
        hooks = dict(hooks or {})
        unknown = sorted(set(hooks) - set(self.QUANTIZE_POINTS))
        if unknown:
            raise ValueError(f"AttentionMath '{self.name}': unknown quantize hooks {unknown}; "
                             f"expected names from {self.QUANTIZE_POINTS}.")
        self.quantize_hooks = hooks

    def _apply_hook(self, name, x):
        hook = self.quantize_hooks.get(name)
        return x if hook is None else hook(x)

    def _split_heads(self, x, head_size):
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, (batch, seq, self.num_heads, head_size))
        return tf.transpose(x, (0, 2, 1, 3))

    def call(self, inputs, training=None):
        query, key, value, mask = inputs
        # Query/key heads and value heads may differ in width (heads narrowed by a per-head low-rank
        # factorization): scores use the query width, the context has the value width.
        head_size = query.shape[-1] // self.num_heads
        value_width = value.shape[-1]
        scaled = self._apply_hook("scaled_query", query * tf.cast(1.0 / math.sqrt(head_size), query.dtype))
        q = self._split_heads(scaled, head_size)
        k = self._split_heads(key, head_size)
        v = self._split_heads(value, value_width // self.num_heads)
        scores = self._apply_hook("scores", tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32))
        masked_logits = self.quantize_hooks.get("masked_logits")
        if masked_logits is None:
            bias = (1.0 - tf.cast(mask, tf.float32)) * MASK_VALUE
            scores = scores + per_key_over_scores(bias)
        else:
            scores = masked_logits(scores, mask)
        probs = self._apply_hook("probs", tf.nn.softmax(scores, axis=-1))
        context = tf.matmul(self._dropout_layer(tf.cast(probs, v.dtype), training=training), v)
        context = self._apply_hook("context", context)
        context = tf.transpose(context, (0, 2, 1, 3))
        context = tf.reshape(context, (tf.shape(query)[0], tf.shape(query)[1], value_width))
        if self.return_probs:
            return context, probs
        return context

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, dropout=self.dropout, return_probs=self.return_probs)
        return config


@keras.utils.register_keras_serializable(package="bert")
class FirstToken(keras.layers.Layer):
    """The hidden state of the first ([CLS]) token: (batch, seq, h) -> (batch, h)."""

    def call(self, inputs):
        return inputs[:, 0, :]


@keras.utils.register_keras_serializable(package="bert")
class GatherPositions(keras.layers.Layer):
    """Hidden states at given positions: [(batch, seq, h), (batch, p)] -> (batch, p, h)."""

    def call(self, inputs):
        sequence, positions = inputs
        return tf.gather(sequence, tf.cast(positions, tf.int32), batch_dims=1)


@keras.utils.register_keras_serializable(package="bert")
class Bias(keras.layers.Layer):
    """Adds a learned bias over the last axis (the MLM decoder's output bias)."""

    def build(self, input_shape):
        self.bias = self.add_weight("bias", shape=(tf.TensorShape(input_shape)[-1],), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        return tf.nn.bias_add(inputs, tf.cast(self.bias, inputs.dtype))
