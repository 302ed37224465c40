"""Runner for TF Model Garden's `BertEncoderV2` (tf-models-official, tf_keras), in .venvs/model_garden.

The training step adds Model Garden's own `layers.MaskedLM` head (dense +
activation + LayerNorm, decoder tied to the encoder's embedding table), as
`models.BertPretrainerV2` does. Exact (erf) GELU throughout, like the other
implementations (the encoder's default is the tanh approximation). Variants:
`graph` (a `tf.function`, as Model Garden's trainers run) and `xla`.

Run: bench/peers/.venvs/model_garden/bin/python bench/peers/run_model_garden.py --config base --mode inference
"""

from __future__ import annotations

import runner

VARIANTS = ("graph", "xla")


def main():
    args = runner.parse_args(variants=VARIANTS)
    import tensorflow as tf
    import tf_keras
    from official.nlp.modeling import layers, networks

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.random.set_seed(0)
    s = args.shape
    encoder = networks.BertEncoderV2(
        vocab_size=s.vocab_size, hidden_size=s.hidden_size, num_layers=s.num_layers,
        num_attention_heads=s.num_heads, max_sequence_length=s.max_position_embeddings,
        type_vocab_size=s.type_vocab_size, inner_dim=s.intermediate_size, inner_activation="gelu",
        output_dropout=0.1, attention_dropout=0.1,
    )
    batch = runner.make_batch(args)
    inputs = {
        "input_word_ids": tf.constant(batch.token_ids),
        "input_mask": tf.constant(batch.padding_mask),
        "input_type_ids": tf.constant(batch.segment_ids),
    }
    jit = args.variant == "xla"
    encoder(inputs)  # build
    weights = list(encoder.weights)

    if args.mode == "inference":
        @tf.function(jit_compile=jit, autograph=False)
        def forward(inputs):
            return encoder(inputs, training=False)["sequence_output"]

        def step():
            return forward(inputs).numpy()
    else:
        head = layers.MaskedLM(embedding_table=encoder.get_embedding_table(), activation="gelu",
                               output="logits", name="cls/predictions")
        positions = tf.constant(batch.mask_positions)
        labels = tf.constant(batch.mask_labels)
        head(encoder(inputs)["sequence_output"], masked_positions=positions)  # build the head
        variables = encoder.trainable_variables + [v for v in head.trainable_variables
                                                   if all(v is not w for w in encoder.trainable_variables)]
        weights = variables
        optimizer = tf_keras.optimizers.Adam(runner.LEARNING_RATE)
        optimizer.build(variables)

        @tf.function(jit_compile=jit, autograph=False)
        def train_step(inputs, positions, labels):
            with tf.GradientTape() as tape:
                sequence = encoder(inputs, training=True)["sequence_output"]
                logits = head(sequence, masked_positions=positions)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
            return loss

        def step():
            return train_step(inputs, positions, labels).numpy()

    step()  # trace / compile, untimed
    params = int(sum(v.shape.num_elements() for v in weights))
    runner.measure(step, args, "model_garden", extra={
        "params": params, "jit_compile": jit,
        "framework": f"tensorflow {tf.__version__} + tf_keras {tf_keras.__version__} + tf-models-official 2.20.0",
    })


if __name__ == "__main__":
    main()
