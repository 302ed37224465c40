"""Runner for KerasHub's `BertBackbone` (Keras 3, TensorFlow backend), in bench/peers/.venvs/keras_hub.

The training step adds KerasHub's own `MaskedLMHead` (the head of
`keras_hub.models.BertMaskedLM`: dense + GELU + LayerNorm, decoder tied to the
token embedding). Variants: `graph` (a `tf.function`, what `Model.compile`
picks on a CPU-only machine) and `xla` (`jit_compile=True`).

Run: bench/peers/.venvs/keras_hub/bin/python bench/peers/run_keras_hub.py --config minilm --mode training
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "tensorflow"

import runner  # noqa: E402

VARIANTS = ("graph", "xla")


def main():
    args = runner.parse_args(variants=VARIANTS)
    import keras
    import keras_hub
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(0)
    s = args.shape
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=s.vocab_size, num_layers=s.num_layers, num_heads=s.num_heads, hidden_dim=s.hidden_size,
        intermediate_dim=s.intermediate_size, dropout=0.1, max_sequence_length=s.max_position_embeddings,
        num_segments=s.type_vocab_size,
    )
    batch = runner.make_batch(args)
    inputs = {
        "token_ids": tf.constant(batch.token_ids),
        "segment_ids": tf.constant(batch.segment_ids),
        "padding_mask": tf.constant(batch.padding_mask),
    }
    jit = args.variant == "xla"
    weights = backbone.weights

    if args.mode == "inference":
        @tf.function(jit_compile=jit, autograph=False)
        def forward(inputs):
            return backbone(inputs, training=False)["sequence_output"]

        def step():
            return forward(inputs).numpy()
    else:
        head = keras_hub.layers.MaskedLMHead(
            vocabulary_size=s.vocab_size, token_embedding=backbone.token_embedding,
            intermediate_activation="gelu", name="mlm_head",
        )
        positions = tf.constant(batch.mask_positions)
        labels = tf.constant(batch.mask_labels)
        head(backbone(inputs)["sequence_output"], mask_positions=positions)  # build the head
        variables = backbone.trainable_variables + head.trainable_variables
        weights = backbone.weights + head.weights
        optimizer = keras.optimizers.Adam(runner.LEARNING_RATE)
        optimizer.build(variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function(jit_compile=jit, autograph=False)
        def train_step(inputs, positions, labels):
            with tf.GradientTape() as tape:
                sequence = backbone(inputs, training=True)["sequence_output"]
                loss = loss_fn(labels, head(sequence, mask_positions=positions, training=True))
            grads = tape.gradient(loss, variables)
            # The pooler gets no gradient from the MLM loss.
            optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
            return loss

        def step():
            return train_step(inputs, positions, labels).numpy()

    step()  # trace / compile, untimed
    params = int(sum(int(tf.size(w)) for w in {id(w): w for w in weights}.values()))
    runner.measure(step, args, "keras_hub", extra={
        "params": params, "jit_compile": jit,
        "framework": f"keras {keras.__version__} (tensorflow {tf.__version__}) + keras_hub {keras_hub.__version__}",
    })


if __name__ == "__main__":
    main()
