"""The embedding part of a BERT encoder: word + type + position, LayerNorm, dropout."""

from __future__ import annotations

import tf_keras as keras

from bert.builder import LayerBuilder


def embeddings(b: LayerBuilder, word_ids, type_ids):
    """(batch, seq) ids -> (batch, seq, hidden_size) embeddings.

    With `embedding_size` below `hidden_size` (ALBERT's factorized
    embeddings) a projection `embeddings/projection` widens them.
    """
    c, kit = b.config, b.kit
    x = kit.word_embedding("embeddings/word")(word_ids)
    types = kit.type_embedding("embeddings/type")(type_ids)
    positions = kit.position_embedding("embeddings/position")(x)
    x = kit.embedding_sum("embeddings/add")([x, types, positions])
    x = b.layer_norm("embeddings/layer_norm")(x)
    x = keras.layers.Dropout(c.hidden_dropout, name="embeddings/dropout")(x)
    if c.embedding_width != c.hidden_size:
        x = b.projection("embeddings/projection", c.embedding_width, c.hidden_size)(x)
    return x
