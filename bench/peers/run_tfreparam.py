"""Runner for our BERT (`bert.build_encoder` / `bert.build_pretraining_network`), in the project's venv.

Variants:
  graph             `tf.function` (graph mode, no XLA)
  xla               `tf.function(jit_compile=True)`
  lowrank50         every encoder projection a `LowRankDense` holding 50 % of the
                    dense kernel's parameters (`tr.LowRank(param_budget=0.5)`), graph mode
  lowrank50_xla     the same, compiled with XLA

Run: .venv/bin/python bench/peers/run_tfreparam.py --config minilm --mode inference --variant xla
"""

from __future__ import annotations

import os
import sys

# Our packages (bert, tfreparam) must come from this checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import runner  # noqa: E402

VARIANTS = ("graph", "xla", "lowrank50", "lowrank50_xla")


def build(args):
    import tf_keras as keras

    import bert
    import tfreparam as tr

    s = args.shape
    config = bert.BertConfig(
        vocab_size=s.vocab_size, hidden_size=s.hidden_size, num_layers=s.num_layers, num_heads=s.num_heads,
        intermediate_size=s.intermediate_size, max_position_embeddings=s.max_position_embeddings,
        type_vocab_size=s.type_vocab_size,
    )
    policy = None
    if args.variant.startswith("lowrank50"):
        policy = {r"layer_\d+/(attention/(query|key|value|output)|ffn/(intermediate|output))":
                  tr.LowRank(param_budget=0.5)}
    if args.mode == "inference":
        return bert.build_encoder(config, layer_policy=policy), keras
    network = bert.build_pretraining_network(config, layer_policy=policy,
                                             max_predictions_per_seq=runner.NUM_PREDICTIONS)
    return network, keras


def main():
    args = runner.parse_args(variants=VARIANTS)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.random.set_seed(0)
    model, keras = build(args)
    batch = runner.make_batch(args)
    inputs = {
        "input_word_ids": tf.constant(batch.token_ids),
        "input_mask": tf.constant(batch.padding_mask),
        "input_type_ids": tf.constant(batch.segment_ids),
    }
    jit = args.variant.endswith("xla")

    if args.mode == "inference":
        @tf.function(jit_compile=jit, autograph=False)
        def forward(inputs):
            return model(inputs, training=False)["sequence_output"]

        def step():
            return forward(inputs).numpy()
    else:
        inputs["masked_lm_positions"] = tf.constant(batch.mask_positions)
        labels = tf.constant(batch.mask_labels)
        optimizer = keras.optimizers.Adam(runner.LEARNING_RATE)
        variables = model.trainable_variables
        optimizer.build(variables)

        @tf.function(jit_compile=jit, autograph=False)
        def train_step(inputs, labels):
            with tf.GradientTape() as tape:
                logits = model(inputs, training=True)["mlm_logits"]
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
            grads = tape.gradient(loss, variables)
            # The pooler and NSP head get no gradient from the MLM loss.
            optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
            return loss

        def step():
            return train_step(inputs, labels).numpy()

    step()  # trace / compile, untimed
    params = int(sum(v.shape.num_elements() for v in model.weights))
    runner.measure(step, args, "tfreparam_xla" if jit else "tfreparam",
                   extra={"params": params, "framework": f"tensorflow {tf.__version__} + tf_keras"})


if __name__ == "__main__":
    main()
