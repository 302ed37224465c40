"""Subprocess entry points for the training tests (`python -m tests.training.workers MODE ...`).

Logical CPU devices and multi-worker clusters must be configured before
TensorFlow initialises, so these run in fresh processes; each writes its
results (JSON / npz) to a path given on the command line.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SEQ, VOCAB = 8, 64


def logical_cpus(n):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


def tiny_bert_config():
    import bert

    return bert.BertConfig.named("tiny", vocab_size=VOCAB, max_position_embeddings=SEQ,
                                 hidden_dropout=0.0, attention_dropout=0.0, num_layers=1)


def bert_features(batch, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "input_word_ids": rng.integers(0, VOCAB, (batch, SEQ)).astype("int32"),
        "input_mask": np.ones((batch, SEQ), "int32"),
        "input_type_ids": rng.integers(0, 2, (batch, SEQ)).astype("int32"),
    }


# -- model factories shared by the modes ------------------------------------------


def layer_model(case):
    import tf_keras as keras

    inputs = keras.Input((24,))
    hidden = case.make(activation="tanh", name="reparam")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, name="head")(hidden))


def bert_classifier():
    import tf_keras as keras

    import bert

    encoder = bert.build_encoder(tiny_bert_config())
    pooled = encoder.output["pooled_output"]
    logits = keras.layers.Dense(2, name="classifier")(pooled)
    return keras.Model(encoder.inputs, logits)


PREDICTIONS = 2


def pretraining_features(batch, seed=3):
    rng = np.random.default_rng(seed)
    features = bert_features(batch, seed)
    features.update(
        masked_lm_positions=rng.integers(0, SEQ, (batch, PREDICTIONS)).astype("int32"),
        masked_lm_ids=rng.integers(0, VOCAB, (batch, PREDICTIONS)).astype("int32"),
        masked_lm_weights=np.ones((batch, PREDICTIONS), "float32"),  # equal counts per replica: exact parity
        next_sentence_labels=rng.integers(0, 2, (batch, 1)).astype("int32"),
    )
    return features


def pretrainer_model():
    import bert

    pretrainer = bert.build_pretrainer(tiny_bert_config(), max_predictions_per_seq=PREDICTIONS)
    pretrainer.network.set_weights(_seeded_weights(pretrainer.network, 7))
    return pretrainer


def _seeded_weights(model, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.3, w.shape).astype("float32") for w in model.get_weights()]


# -- mode: mirrored + dtensor on 4 logical CPUs -------------------------------------


def run_mirrored_and_dtensor(out_path):
    logical_cpus(4)
    import tf_keras as keras

    from tests.layers.registry import LAYER_CASES
    from tfreparam import distribute

    results = {"mirrored": {}, "dtensor": {}, "errors": {}}
    steps, global_batch = 3, 8
    rng = np.random.default_rng(1)

    def train(make_model, x, y, loss, strategy):
        with strategy.scope():
            model = make_model()
            model.set_weights(_seeded_weights(model, 7))
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
        history = model.fit(x, y, batch_size=global_batch, epochs=1, shuffle=False, verbose=0)
        return history.history["loss"], model.get_weights()

    one = distribute.strategy("one_device", devices=["/cpu:0"])
    two = distribute.strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    cases = [(c.name, (lambda c=c: layer_model(c)), "layer") for c in LAYER_CASES] + [("bert_tiny", bert_classifier, "bert")]
    for name, factory, kind in cases:
        if kind == "layer":
            x = rng.normal(size=(steps * global_batch, 24)).astype("float32")
            y = rng.normal(size=(steps * global_batch, 1)).astype("float32")
            loss = "mse"
        else:
            x = bert_features(steps * global_batch)
            y = rng.integers(0, 2, (steps * global_batch,)).astype("int32")
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        loss_1, weights_1 = train(factory, x, y, loss, one)
        loss_2, weights_2 = train(factory, x, y, loss, two)
        results["mirrored"][name] = {
            "replicas": two.num_replicas_in_sync,
            "loss_one": loss_1, "loss_two": loss_2,
            "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(weights_1, weights_2)),
            "max_weight_change": max(float(np.abs(a - b).max()) for a, b in zip(weights_1, _seeded_weights_like(weights_1))),
        }

    # BertPretrainer's own train_step: its loss must be divided by the replica count.
    features = pretraining_features(steps * global_batch)
    runs = []
    for strategy in (one, two):
        with strategy.scope():
            pretrainer = pretrainer_model()
            pretrainer.compile(optimizer=keras.optimizers.SGD(0.5))
        initial = pretrainer.network.get_weights()  # the pretrainer's own weights add its metric states
        history = pretrainer.fit(tf.data.Dataset.from_tensor_slices(features).batch(global_batch),
                                 epochs=1, verbose=0)
        runs.append((history.history["loss"], pretrainer.network.get_weights()))
    (loss_1, weights_1), (loss_2, weights_2) = runs
    results["mirrored"]["bert_pretrainer"] = {
        "replicas": two.num_replicas_in_sync, "loss_one": loss_1, "loss_two": loss_2,
        "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(weights_1, weights_2)),
        "max_weight_change": max(float(np.abs(a - b).max()) for a, b in zip(weights_1, initial)),
        # the same comparison for the update itself: the 2-replica step / the 1-replica step
        "update_ratio": float(sum(np.abs(b - i).sum() for b, i in zip(weights_2, initial))
                              / sum(np.abs(a - i).sum() for a, i in zip(weights_1, initial))),
    }

    # DTensor: 2 (batch) x 2 (model) mesh; each factor / kernel of the layer under test is split
    # over "model" along its first even dimension.
    bert_rules = {r".*/(query|key|value|intermediate)/kernel": (None, "model"),
                  r".*/attention/output/kernel": ("model", None), r".*/ffn/output/kernel": ("model", None)}
    for name, factory, kind in cases:
        layout_rules = bert_rules if kind == "bert" else _split_first_even_dim(factory)
        try:
            sharded = distribute.shard(factory, (2, 2), layout_rules)
        except Exception as error:  # recorded, asserted by the test
            results["dtensor"][name] = {"error": f"{type(error).__name__}: {error}"[:500]}
            continue
        reference = factory()
        reference.set_weights(_seeded_weights(reference, 3))
        sharded.copy_weights_from(reference)
        x = bert_features(4, seed=5) if kind == "bert" else rng.normal(size=(4, 24)).astype("float32")
        probe = np.random.default_rng(9).normal(size=(4, 2 if kind == "bert" else 1)).astype("float32")

        def forward_backward(model, inputs):
            with tf.GradientTape() as tape:
                out = model(inputs, training=True)
                loss = tf.reduce_sum(out * probe)
            return out, tape.gradient(loss, model.trainable_variables)

        out_ref, grads_ref = forward_backward(reference, x)
        out_sh, grads_sh = tf.function(forward_backward)(sharded.model, sharded.shard_batch(x))
        sharded_names = sorted(n for n, s in sharded.layouts.items() if "model" in s)
        results["dtensor"][name] = {
            "sharded_variables": sharded_names,
            "forward_diff": float(np.abs(distribute.as_numpy(out_sh) - out_ref.numpy()).max()),
            "forward_scale": float(np.abs(out_ref.numpy()).max()),
            "grad_diff": max(float(np.abs(distribute.as_numpy(a) - distribute.as_numpy(b)).max())
                             for a, b in zip(grads_sh, grads_ref)),
            "grad_scale": max(float(np.abs(distribute.as_numpy(b)).max()) for b in grads_ref),
        }

    def fused_ln_model():
        inputs = keras.Input((8,))
        return keras.Model(inputs, keras.layers.LayerNormalization(epsilon=1e-3, name="ln")(inputs))

    try:
        distribute.shard(fused_ln_model, (2, 2), {})
    except ValueError as error:
        results["errors"]["fused_layer_norm"] = str(error)
    try:
        distribute.shard(lambda: layer_model(LAYER_CASES[0]), (2, 2), {r"head/kernel": ("model",)})
    except ValueError as error:
        results["errors"]["rank"] = str(error)
    try:
        distribute.shard(lambda: layer_model(LAYER_CASES[0]), (2, 2), {r"head/kernel": (None, "model")})
    except ValueError as error:
        results["errors"]["divisibility"] = str(error)
    try:
        distribute.shard(lambda: layer_model(LAYER_CASES[0]), (4, 2), {})
    except ValueError as error:
        results["errors"]["devices"] = str(error)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


def _split_first_even_dim(factory):
    import re

    rules = {}
    for variable in factory().weights:
        name = variable.name.removesuffix(":0")
        if not name.startswith("reparam/") or variable.shape.rank < 2:
            continue
        even = [d for d, size in enumerate(variable.shape) if size % 2 == 0]
        if even:
            rules[re.escape(name)] = tuple("model" if d == even[0] else None for d in range(variable.shape.rank))
    return rules


def _seeded_weights_like(weights):
    rng = np.random.default_rng(7)
    return [rng.normal(0, 0.3, w.shape).astype("float32") for w in weights]


# -- mode: one worker of a 2-worker MultiWorkerMirroredStrategy -------------------------


def run_multi_worker(out_path):
    import tf_keras as keras

    from tests.layers.registry import LAYER_CASES
    from tfreparam import distribute

    strategy = distribute.strategy("multi_worker")
    rng = np.random.default_rng(0)  # same data on both workers; each reads its shard
    x = rng.normal(size=(64, 24)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16, drop_remainder=True)
    with strategy.scope():
        model = layer_model(LAYER_CASES[0])
        model.set_weights(_seeded_weights(model, 7))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(dataset, epochs=2, verbose=0)
    np.savez(out_path, *model.get_weights(), loss=np.array(history.history["loss"]),
             replicas=np.array(strategy.num_replicas_in_sync))


# -- mode: resumable training that can be told to wait (to be SIGKILLed) -------------------


def resilience_model():
    import tf_keras as keras

    from tests.layers.registry import LAYER_CASES

    model = layer_model(LAYER_CASES[0])
    model.set_weights(_seeded_weights(model, 11))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def resilience_stream():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 24)).astype("float32")
    y = rng.normal(size=(40, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4, drop_remainder=True).repeat()


RESILIENCE_EPOCHS, RESILIENCE_STEPS = 3, 5


def run_resilience(backup_dir, out_path, block_at_step):
    import tf_keras as keras

    from tfreparam import resilience

    block_at_step = int(block_at_step)

    class Blocker(keras.callbacks.Callback):
        """After global step `block_at_step` is backed up, report it and wait to be killed."""

        def __init__(self):
            super().__init__()
            self.step = resilience.completed_steps(backup_dir, RESILIENCE_STEPS)

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step == block_at_step:
                with open(out_path + ".ready", "w") as f:
                    f.write(str(self.step))
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # bounded: the parent kills us long before
                    time.sleep(0.05)
                sys.exit(3)

    model = resilience_model()
    resilience.resumable_fit(
        model, resilience_stream, epochs=RESILIENCE_EPOCHS, steps_per_epoch=RESILIENCE_STEPS,
        backup_dir=backup_dir, save_freq=1, callbacks=[Blocker()], verbose=0,
    )
    np.savez(out_path, *model.get_weights())


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"mirrored": run_mirrored_and_dtensor, "multi_worker": run_multi_worker, "resilience": run_resilience}[mode](*args)
