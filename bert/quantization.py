"""QuantizeConfigs for the BERT layers, registered with `tfreparam.quantization` on import.

With these, `tfreparam.quantization.quantize_model(encoder)` wraps every layer
of a flat BERT: projections (Dense or factorized), attention math, LayerNorm,
embeddings, GELU, residual adds, pooler and heads.

The configs follow TFMOT's `QuantizeConfig` pattern: they hand quantized
weights and quantizers to the layers' documented QAT hooks
(`AttentionMath.set_quantize_hooks`, `WordEmbedding.set_quantize_hooks`);
no layer's `call` is replaced.

Attention under QAT (`AttentionMathQuantizeConfig`) fake-quantizes what the
int8 TFLite kernels see: the scaled query, the QK^T scores, the masked softmax
input, the softmax output (TFLite's fixed int8 softmax scale, 1/256) and the
softmax·V context. Softmax itself stays a float op in the QAT graph and
converts to the int8 SOFTMAX builtin. The additive mask (MASK_VALUE) would
otherwise set the softmax input's range to [-10^4, max] and crush every real
score into one or two int8 levels; instead the masked logits reuse the
scores' range extended downwards by `MASK_MARGIN`, so masked positions
saturate at a value exp(-MASK_MARGIN) below any real score (a softmax weight
of at most 4.5e-5 each) and real scores keep their resolution.
"""

from __future__ import annotations

import functools

import tensorflow as tf
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quantize_config as tfmot_config
from tensorflow_model_optimization.python.core.quantization.keras import quantizers as tfmot_quantizers

from bert import layers as bert_layers
from tfreparam.quantization import configs, quantizers, register_quantize_config

# How far below the lowest quantized attention score masked logits saturate.
MASK_MARGIN = 10.0

_LINEAR = keras.activations.linear
_ATTENTION_POINTS = ("scaled_query", "scores", "context")


def _named(name, quantizer=None):
    return (_LINEAR, quantizers.NamedQuantizer(quantizer or quantizers.activation_quantizer(), name))


@keras.utils.register_keras_serializable(package="bert")
class AttentionMathQuantizeConfig(configs.OutputQuantizeConfig):
    """8-bit QAT of `bert.layers.AttentionMath` (see the module docstring)."""

    def get_activations_and_quantizers(self, layer):
        # TFLite's int8 SOFTMAX always outputs scale 1/256, zero point -128: [0, 255/256].
        probs = tfmot_quantizers.FixedQuantizer(num_bits=8, init_min=0.0, init_max=255.0 / 256.0, narrow_range=False)
        return [_named(name) for name in _ATTENTION_POINTS] + [_named("probs", probs)]

    def set_quantize_activations(self, layer, quantize_activations):
        # Their `training` flag is set by the wrapper before each call.
        points = dict(zip(_ATTENTION_POINTS + ("probs",), quantize_activations))
        points["masked_logits"] = functools.partial(_masked_logits, scores_quantizer=points["scores"])
        layer.set_quantize_hooks(points)

    def get_output_quantizers(self, layer):
        return []


def _mask_bias(mask, dtype, depth):
    """The additive mask (0 for real tokens, -`depth` for padding), (batch, 1, 1, seq), computed in integers.

    In float, `(1 - mask) * MASK_VALUE` converts to an int8 SUB whose output
    takes the MUL's scale (~39), which rounds the 1 of every padded position
    to 0: the int8 model would attend to padding. Integer arithmetic and one
    cast leave the converter a single tensor with two values, which the
    fake-quant pins to the int8 codes of 0 and -`depth` (MASK_VALUE clipped).

    `depth` is the masked logits' range width, so the mask has their scale:
    LiteRT's broadcasting int8 ADD overflows when one input's scale is ~1000x
    the output's (MASK_VALUE's 39 against ~0.04), and returned the *largest*
    logit for every padded position.
    """
    penalty = int(round(-bert_layers.MASK_VALUE))
    # Broadcast on the integers: an int8 reshape after the fake-quant would have to keep the scale the
    # converter calibrates for the CAST (MASK_VALUE's), not the fake-quant's.
    mask = bert_layers.per_key_over_scores(tf.cast(mask, tf.int32))
    bias = tf.cast((mask - 1) * penalty, dtype)
    depth = tf.minimum(depth, float(penalty))
    return tf.quantization.fake_quant_with_min_max_vars(bias, -depth, tf.zeros_like(depth), num_bits=8)


def _masked_logits(scores, mask, scores_quantizer):
    """scores + additive mask, fake-quantized to the scores' range widened by MASK_MARGIN."""
    ranges = scores_quantizer._post_activation_vars  # the scores' min / max variables
    low = tf.minimum(ranges["min_var"], 0.0) - MASK_MARGIN
    high = tf.maximum(ranges["max_var"], 0.0)
    # A real score minus the whole range width lands at or below `low`: padding saturates there.
    logits = scores + _mask_bias(mask, scores.dtype, high - low)
    return tf.quantization.fake_quant_with_min_max_vars(logits, low, high, num_bits=8, narrow_range=False)


@keras.utils.register_keras_serializable(package="bert")
class WordEmbeddingQuantizeConfig(tfmot_config.QuantizeConfig):
    """The token table as an 8-bit per-tensor weight; "attend" (tied MLM decoder) logits get an output range.

    The layer is called twice in a pretraining network (lookup and decoder),
    so the decoder's output quantizer lives inside the call, not on the
    wrapper's single output.
    """

    def get_weights_and_quantizers(self, layer):
        return [(layer.embeddings, quantizers.weight_quantizer())]

    def get_activations_and_quantizers(self, layer):
        return [_named("attend_output")]

    def set_quantize_weights(self, layer, quantize_weights):
        layer.set_quantize_hooks(table=quantize_weights[0], attend_output=layer.attend_output_hook)

    def set_quantize_activations(self, layer, quantize_activations):
        layer.set_quantize_hooks(table=layer.quantized_table, attend_output=quantize_activations[0])

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}

    def __eq__(self, other):
        return type(self) is type(other)


def _register():
    custom = {cls.__name__: cls for cls in (AttentionMathQuantizeConfig, WordEmbeddingQuantizeConfig)}
    register_quantize_config(bert_layers.AttentionMath, lambda layer: AttentionMathQuantizeConfig(), custom)
    register_quantize_config(bert_layers.WordEmbedding, lambda layer: WordEmbeddingQuantizeConfig(), custom)
    register_quantize_config(bert_layers.PositionEmbedding, lambda layer: configs.WeightsQuantizeConfig(["embeddings"]))
    register_quantize_config(bert_layers.Bias, lambda layer: configs.WeightsQuantizeConfig(["bias"], quantize_output=True))
    # Slicing / gathering hidden states keeps their scale: nothing to fake-quantize.
    register_quantize_config(bert_layers.FirstToken, lambda layer: configs.NoOpQuantizeConfig())
    register_quantize_config(bert_layers.GatherPositions, lambda layer: configs.NoOpQuantizeConfig())


_register()
