"""`build_encoder`: BERT as a flat functional Keras model.

Every projection (q, k, v, attention output, FFN in/out, embedding projection,
pooler) is its own top-level layer with a stable name, e.g.
`layer_3/attention/query`, so TFMOT wrappers, `keras.models.clone_model` and
tfreparam policies can reach it. A `layer_policy` (the same spec objects and
rules as `tfreparam.reparameterize`, matched against these names) picks each
projection's class, so factorized BERTs can be built from scratch. The layer
classes come from a layer kit (`bert.kits`): standard, or unit-scaled for
`BertConfig(unit_scaled=True)`.
"""

from __future__ import annotations

from typing import Optional

import tf_keras as keras

import bert.layers as bert_layers
from bert.block import transformer_block
from bert.builder import LayerBuilder
from bert.config import BertConfig
from bert.embeddings import embeddings
from bert.kits import StandardKit

INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")

# The projections of one transformer block, by name suffix.
BLOCK_PROJECTIONS = (
    "attention/query",
    "attention/key",
    "attention/value",
    "attention/output",
    "ffn/intermediate",
    "ffn/output",
)


def build_encoder(
    config: BertConfig,
    layer_policy=None,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    name: str = "bert_encoder",
    kit: Optional[type[StandardKit]] = None,
) -> keras.Model:
    """A flat functional BERT encoder.

    Inputs: `input_word_ids`, `input_mask`, `input_type_ids` (int32, (batch, seq)).
    Outputs (a dict): `sequence_output` (batch, seq, hidden), `pooled_output`
    (batch, hidden); with `output_hidden_states`, `hidden_states` (a list of
    num_layers + 1 tensors: embeddings, then each block's output); with
    `output_attentions`, `attention_probs` (a list of (batch, heads, seq, seq)).
    `kit` overrides the layer kit `config` asks for (`bert.kits.kit_for`).
    Raises ValueError if a `layer_policy` pattern matches no projection.
    """
    builder = LayerBuilder(config, layer_policy, kit)
    model = encoder_network(builder, output_hidden_states, output_attentions, name)
    builder.check_policy()
    return model


def encoder_network(b: LayerBuilder, output_hidden_states=False, output_attentions=False,
                    name="bert_encoder") -> keras.Model:
    """The encoder from `b`'s layers; the caller checks the policy once its whole graph is built."""
    c = b.config
    word_ids = keras.Input((None,), dtype="int32", name="input_word_ids")
    mask = keras.Input((None,), dtype="int32", name="input_mask")
    type_ids = keras.Input((None,), dtype="int32", name="input_type_ids")

    x = embeddings(b, word_ids, type_ids)
    hidden_states, attentions = [x], []
    for i in range(c.num_layers):
        x, probs = transformer_block(b, i, x, mask, return_probs=output_attentions)
        hidden_states.append(x)
        attentions.append(probs)

    first = bert_layers.FirstToken(name="pooler/first_token")(x)
    pooled = b.projection("pooler/dense", c.hidden_size, c.hidden_size, activation="tanh")(first)
    outputs = {"sequence_output": x, "pooled_output": pooled}
    if output_hidden_states:
        outputs["hidden_states"] = hidden_states
    if output_attentions:
        outputs["attention_probs"] = attentions
    return keras.Model([word_ids, mask, type_ids], outputs, name=name)


def word_embedding_layer(encoder: keras.Model) -> bert_layers.WordEmbedding:
    return encoder.get_layer("embeddings/word")
