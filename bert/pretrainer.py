"""`BertPretrainer`: trains a flat pretraining network (MLM + NSP) with `model.fit`.

The network itself comes from `bert.heads.build_pretraining_network`; this
module only holds the training wrapper, so the unit-scaled variant
(`bert.unit_scaled.UnitScaledPretrainer`) can subclass it without importing
the builders.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras


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
