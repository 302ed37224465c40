"""The tiny flat BERT and the batch that the structured-pruning and narrowing tests share."""

import dataclasses

import numpy as np

import bert

CONFIG = dataclasses.replace(
    bert.BertConfig.named("tiny"), vocab_size=64, hidden_size=32, num_heads=4,
    intermediate_size=48, max_position_embeddings=16, hidden_dropout=0.0, attention_dropout=0.0,
)
SEQ = 8
HEAD = CONFIG.hidden_size // CONFIG.num_heads
MASK = np.ones((3, SEQ), "int32")
MASK[1, 5:] = 0  # a padded sentence: padding must not count
INPUTS = {
    "input_word_ids": np.random.default_rng(0).integers(0, CONFIG.vocab_size, (3, SEQ)).astype("int32"),
    "input_mask": MASK,
    "input_type_ids": np.zeros((3, SEQ), "int32"),
}
