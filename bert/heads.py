"""Task heads on a flat encoder: MLM + NSP pretraining, and classification.

Heads are added to the encoder's own graph (not by nesting the encoder as a
layer), so the resulting model stays flat: every head projection is another
top-level layer (`mlm/transform`, `nsp/dense`, `classifier/dense`). One
`layer_policy` covers the encoder's and the heads' projections; a pattern that
matches none of them is an error.
"""

from __future__ import annotations

from typing import Optional

import tf_keras as keras

import bert.layers as bert_layers
from bert.builder import LayerBuilder
from bert.config import BertConfig
from bert.encoder import encoder_network, word_embedding_layer
from bert.kits import StandardKit, kit_for
from bert.pretrainer import BertPretrainer


def build_pretraining_network(
    config: BertConfig, encoder: keras.Model = None, layer_policy=None, max_predictions_per_seq: int = 20,
    kit: Optional[type[StandardKit]] = None,
) -> keras.Model:
    """Encoder + MLM head (tied decoder, only at masked positions) + NSP head.

    Extra input: `masked_lm_positions` (int32, (batch, max_predictions)).
    Outputs: `mlm_logits` (batch, max_predictions, vocab), `nsp_logits` (batch, 2),
    plus the encoder's outputs. Without `encoder`, one is built from `config`
    (and `layer_policy`, which applies to the heads' projections too).
    """
    b = LayerBuilder(config, layer_policy, kit)
    encoder = encoder or encoder_network(b)
    positions = keras.Input((max_predictions_per_seq,), dtype="int32", name="masked_lm_positions")
    sequence = _output(encoder, "sequence_output")
    pooled = _output(encoder, "pooled_output")

    x = bert_layers.GatherPositions(name="mlm/gather")([sequence, positions])
    act = bert_layers.activation(config.activation)
    x = b.projection("mlm/transform", config.hidden_size, config.embedding_width)(x)
    x = keras.layers.Activation(act, name="mlm/activation")(x)
    x = b.layer_norm("mlm/layer_norm")(x)
    logits = word_embedding_layer(encoder)(x, mode="attend")
    logits = b.layer("mlm/output_bias", b.kit.output_bias)(logits)
    nsp = b.projection("nsp/dense", config.hidden_size, 2)(pooled)

    outputs = dict(_outputs(encoder))
    outputs.update(mlm_logits=logits, nsp_logits=nsp)
    model = keras.Model(list(encoder.inputs) + [positions], outputs, name="bert_pretraining")
    b.check_policy()
    return model


def build_classifier(encoder: keras.Model, num_classes: int, dropout: float = 0.1, layer_policy=None,
                     config: BertConfig = None) -> keras.Model:
    """Encoder + dropout + dense on the pooled output -> logits (batch, num_classes)."""
    hidden = int(_output(encoder, "pooled_output").shape[-1])
    b = LayerBuilder(config or BertConfig(hidden_size=hidden, num_heads=1), layer_policy)
    x = keras.layers.Dropout(dropout, name="classifier/dropout")(_output(encoder, "pooled_output"))
    logits = b.projection("classifier/dense", hidden, num_classes)(x)
    model = keras.Model(encoder.inputs, logits, name="bert_classifier")
    b.check_policy()
    return model


def _outputs(encoder) -> dict:
    if isinstance(encoder.output, dict):
        return encoder.output
    raise ValueError("The encoder must be a functional model with dict outputs (bert.build_encoder).")


def _output(encoder, name):
    outputs = _outputs(encoder)
    if name not in outputs:
        raise ValueError(f"The encoder has no output {name!r}; it has {sorted(outputs)}.")
    return outputs[name]


def build_pretrainer(config: BertConfig, layer_policy=None, encoder: keras.Model = None,
                     max_predictions_per_seq: int = 20, kit: Optional[type[StandardKit]] = None) -> BertPretrainer:
    """The kit's pretrainer around `build_pretraining_network`; compile it and call `fit`.

    `BertPretrainer`, or for `BertConfig(unit_scaled=True)` the
    `UnitScaledPretrainer`, whose losses keep unit-scale gradients.
    """
    kit = kit or kit_for(config)
    network = build_pretraining_network(config, encoder, layer_policy, max_predictions_per_seq, kit)
    return kit.pretrainer_class(network, name="bert_pretrainer")
