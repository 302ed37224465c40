"""Layer kits: the classes a BERT is built from, injected into the builder.

As in Model Garden's `EncoderScaffold` (`embedding_cls`, `hidden_cls`), the
builder does not branch on the variant: it asks its kit for each layer. A
standard BERT and a unit-scaled one (Blake et al. 2023, `bert.unit_scaled`)
are the same graph built from two kits. `kit_for(config)` picks the kit a
`BertConfig` asks for; pass another `kit=` to `bert.build_encoder` (a subclass
of `StandardKit`) to build a variant without touching the builder.

Every factory takes the layer's name and returns an unbuilt layer.
"""

from __future__ import annotations

import tf_keras as keras

import bert.layers as bert_layers
from bert.config import BertConfig
from bert.pretrainer import BertPretrainer
from bert.unit_scaled import (
    RESIDUAL_TAU,
    EmbeddingSum,
    ResidualSplit,
    UnitScaledActivation,
    UnitScaledAttentionMath,
    UnitScaledBias,
    UnitScaledLayerNormalization,
    UnitScaledPretrainer,
    UnitScaledTypeEmbedding,
    UnitScaledWordEmbedding,
)
from tfreparam.unit_scaling.layers import ResidualAdd, UnitScaledDense, UnitScaledLowRankDense


class StandardKit:
    """The layers of an ordinary BERT (truncated-normal init at `initializer_range`)."""

    pretrainer_class = BertPretrainer

    def __init__(self, config: BertConfig):
        self.config = config

    @property
    def embedding_initializer_range(self) -> float:
        return self.config.initializer_range

    def _initializer(self):
        return bert_layers.truncated_normal(self.embedding_initializer_range)

    # -- embeddings
    def word_embedding(self, name):
        c = self.config
        return bert_layers.WordEmbedding(c.vocab_size, c.embedding_width, self.embedding_initializer_range, name=name)

    def type_embedding(self, name):
        c = self.config
        return keras.layers.Embedding(c.type_vocab_size, c.embedding_width,
                                      embeddings_initializer=self._initializer(), name=name)

    def position_embedding(self, name):
        return bert_layers.PositionEmbedding(self.config.max_position_embeddings, self.embedding_initializer_range,
                                             name=name)

    def embedding_sum(self, name):
        return keras.layers.Add(name=name)

    # -- projections
    def dense(self, units, name, activation=None):
        """The projection a layer gets when the policy gives it no spec."""
        return keras.layers.Dense(units, activation=activation, name=name,
                                  kernel_initializer=bert_layers.truncated_normal(self.config.initializer_range))

    def factorized(self, spec, in_features, units, name, activation=None):
        """A fresh layer of `spec`'s family (the policy gave this projection a spec)."""
        return spec.make_layer(in_features, units, activation=activation, name=name)

    # -- the rest of a block
    def layer_norm(self, name):
        return keras.layers.LayerNormalization(epsilon=self.config.layer_norm_eps, name=name)

    def attention(self, name, return_probs=False):
        c = self.config
        return bert_layers.AttentionMath(c.num_heads, c.attention_dropout, return_probs=return_probs, name=name)

    def activation(self, name):
        return keras.layers.Activation(bert_layers.activation(self.config.activation), name=name)

    def residual_split(self, name):
        """A layer on the way into a residual branch, or None: the branch reads the stream as is."""
        return None

    def residual_add(self, name):
        return keras.layers.Add(name=name)

    # -- heads
    def output_bias(self, name):
        """The MLM decoder's output bias."""
        return bert_layers.Bias(name=name)


class UnitScaledKit(StandardKit):
    """Unit-variance weights and unit-scaled ops (see `bert.unit_scaled`); projections: Dense or LowRank."""

    pretrainer_class = UnitScaledPretrainer

    @property
    def embedding_initializer_range(self) -> float:
        return 1.0  # unit-variance tables

    def word_embedding(self, name):
        c = self.config
        return UnitScaledWordEmbedding(c.vocab_size, c.embedding_width, self.embedding_initializer_range, name=name)

    def type_embedding(self, name):
        c = self.config
        return UnitScaledTypeEmbedding(c.type_vocab_size, c.embedding_width, name=name)

    def embedding_sum(self, name):
        return EmbeddingSum(name=name)

    def dense(self, units, name, activation=None):
        return UnitScaledDense(units, activation=activation, name=name)

    def factorized(self, spec, in_features, units, name, activation=None):
        if getattr(spec.family, "name", None) != "low_rank":
            raise ValueError(
                f"unit_scaled=True supports Dense and LowRank projections only; the layer_policy gives "
                f"{type(spec).__name__} for {name!r}. Map it to tfreparam.LowRank or leave it out of the policy."
            )
        return UnitScaledLowRankDense(units, activation=activation, name=name, **spec.layer_config(in_features, units))

    def layer_norm(self, name):
        return UnitScaledLayerNormalization(epsilon=self.config.layer_norm_eps, name=name)

    def attention(self, name, return_probs=False):
        c = self.config
        return UnitScaledAttentionMath(c.num_heads, c.attention_dropout, return_probs=return_probs, name=name)

    def activation(self, name):
        return UnitScaledActivation(self.config.activation, name=name)

    def residual_split(self, name):
        return ResidualSplit(RESIDUAL_TAU, name=name)

    def residual_add(self, name):
        return ResidualAdd(RESIDUAL_TAU, name=name)

    def output_bias(self, name):
        return UnitScaledBias(name=name)


def kit_for(config: BertConfig) -> type[StandardKit]:
    """The kit `config` asks for: `UnitScaledKit` for `unit_scaled=True`, else `StandardKit`."""
    return UnitScaledKit if config.unit_scaled else StandardKit
