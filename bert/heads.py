"""Task heads on a flat encoder: MLM + NSP pretraining, and classification.

Heads are added to the encoder's own graph (not by nesting the encoder as a
layer), so the resulting model stays flat: every head projection is another
top-level layer (`mlm/transform`, `nsp/dense`, `classifier/dense`).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from bert import layers as bert_layers
from bert.config import BertConfig
from bert.encoder import _Builder, build_encoder, word_embedding_layer


def build_pretraining_network(
    config: BertConfig, encoder: keras.Model = None, layer_policy=None, max_predictions_per_seq: int = 20
) -> keras.Model:
    """Encoder + MLM head (tied decoder, only at masked positions) + NSP head.

    Extra input: `masked_lm_positions` (int32, (batch, max_predictions)).
    Outputs: `mlm_logits` (batch, max_predictions, vocab), `nsp_logits` (batch, 2),
    plus the encoder's outputs.
    """
    encoder = encoder or build_encoder(config, layer_policy)
    b = _Builder(config, layer_policy)
    positions = keras.Input((max_predictions_per_seq,), dtype="int32", name="masked_lm_positions")
    sequence = _output(encoder, "sequence_output")
    pooled = _output(encoder, "pooled_output")

    x = bert_layers.GatherPositions(name="mlm/gather")([sequence, positions])
    act = bert_layers.activation(config.activation)
    x = b.projection("mlm/transform", config.hidden_size, config.embedding_width)(x)
    x = keras.layers.Activation(act, name="mlm/activation")(x)
    x = b.layer_norm("mlm/layer_norm")(x)
    logits = word_embedding_layer(encoder)(x, mode="attend")
    logits = b.bias("mlm/output_bias")(logits)
    nsp = b.projection("nsp/dense", config.hidden_size, 2)(pooled)

    outputs = dict(_outputs(encoder))
    outputs.update(mlm_logits=logits, nsp_logits=nsp)
    return keras.Model(list(encoder.inputs) + [positions], outputs, name="bert_pretraining")


def build_classifier(encoder: keras.Model, num_classes: int, dropout: float = 0.1, layer_policy=None,
                     config: BertConfig = None) -> keras.Model:
    """Encoder + dropout + dense on the pooled output -> logits (batch, num_classes)."""
    hidden = int(_output(encoder, "pooled_output").shape[-1])
    b = _Builder(config or BertConfig(hidden_size=hidden, num_heads=1), layer_policy)
    x = keras.layers.Dropout(dropout, name="classifier/dropout")(_output(encoder, "pooled_output"))
    logits = b.projection("classifier/dense", hidden, num_classes)(x)
    return keras.Model(encoder.inputs, logits, name="bert_classifier")


def _outputs(encoder) -> dict:
    if isinstance(encoder.output, dict):
        return encoder.output
    raise ValueError("The encoder must be a functional model with dict outputs (bert.build_encoder).")


def _output(encoder, name):
    outputs = _outputs(encoder)
    if name not in outputs:
        raise ValueError(f"The encoder has no output {name!r}; it has {sorted(outputs)}.")
    return outputs[name]


@keras.utils.register_keras_serializable(package="bert")
class BertPretrainer(keras.Model):
    """Trains a pretraining network with `model.fit` on `bert.pretraining_dataset` batches.

    Loss = MLM cross-entropy averaged over real predictions (weighted by
    `masked_lm_weights`) + NSP cross-entropy. Reports `mlm_loss`,
    `mlm_accuracy`, `nsp_loss`, `nsp_accuracy`. The flat `network` is what
    surgery / TFMOT operate on.
    """

    def __init__(self, network: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self._metric_trackers = {
            name: keras.metrics.Mean(name) for name in ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy")
        }

    @property
    def metrics(self):
        return list(self._metric_trackers.values())

    def call(self, features, training=None):
        return self.network({name: features[name] for name in self.network.input_names}, training=training)

    def _pretraining_losses(self, features, outputs):
        ids = tf.cast(features["masked_lm_ids"], tf.int32)
        weights = tf.cast(features["masked_lm_weights"], tf.float32)
        mlm_logits = tf.cast(outputs["mlm_logits"], tf.float32)
        per_token = keras.losses.sparse_categorical_crossentropy(ids, mlm_logits, from_logits=True)
        denominator = tf.reduce_sum(weights) + 1e-5
        mlm_loss = tf.reduce_sum(per_token * weights) / denominator
        correct = tf.cast(tf.equal(tf.argmax(mlm_logits, -1, output_type=tf.int32), ids), tf.float32)
        mlm_accuracy = tf.reduce_sum(correct * weights) / denominator
        labels = tf.reshape(tf.cast(features["next_sentence_labels"], tf.int32), (-1,))
        nsp_logits = tf.cast(outputs["nsp_logits"], tf.float32)
        nsp_loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, nsp_logits, from_logits=True))
        nsp_accuracy = tf.reduce_mean(
            tf.cast(tf.equal(tf.argmax(nsp_logits, -1, output_type=tf.int32), labels), tf.float32)
        )
        return {"mlm_loss": mlm_loss, "mlm_accuracy": mlm_accuracy, "nsp_loss": nsp_loss, "nsp_accuracy": nsp_accuracy}

    def _features(self, data):
        features = data[0] if isinstance(data, tuple) else data
        if isinstance(data, tuple) and len(data) > 1 and isinstance(data[1], dict):
            features = {**data[1], **features}
        return features

    def train_step(self, data):
        features = self._features(data)
        with tf.GradientTape() as tape:
            outputs = self(features, training=True)
            values = self._pretraining_losses(features, outputs)
            loss = values["mlm_loss"] + values["nsp_loss"] + tf.add_n(self.losses or [tf.constant(0.0)])
            # Each replica's loss is a mean over its own share of the batch and the strategy sums
            # the replicas' gradients: divide so the update is that of the global-batch mean.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = loss / tf.cast(replicas, loss.dtype)
        self.optimizer.minimize(scaled_loss, self.trainable_variables, tape=tape)
        return self._update(loss, values)

    def test_step(self, data):
        features = self._features(data)
        values = self._pretraining_losses(features, self(features, training=False))
        return self._update(values["mlm_loss"] + values["nsp_loss"], values)

    def _update(self, loss, values):
        self._metric_trackers["loss"].update_state(loss)
        for name, value in values.items():
            self._metric_trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self._metric_trackers.items()}

    def get_config(self):
        return {"network": keras.layers.serialize(self.network), "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        network = keras.layers.deserialize(config.pop("network"), custom_objects=custom_objects)
        return cls(network, **config)


def build_pretrainer(config: BertConfig, layer_policy=None, encoder: keras.Model = None,
                     max_predictions_per_seq: int = 20) -> BertPretrainer:
    """A `BertPretrainer` around `build_pretraining_network`; compile it and call `fit`."""
    network = build_pretraining_network(config, encoder, layer_policy, max_predictions_per_seq)
    return BertPretrainer(network, name="bert_pretrainer")
