"""Feeding a strategy: global vs per-replica batch sizes and distributed datasets.

The dataset given to `model.fit` (or to
`strategy.experimental_distribute_dataset`) is batched with the GLOBAL batch
size; every step splits it evenly into `num_replicas_in_sync` per-replica
batches. A `dataset_fn(input_context)` given to `distribute_dataset` instead
batches with the PER-REPLICA size, `input_context.get_per_replica_batch_size(
global_batch_size)`, and shards its input per worker (each worker then reads
only its own part of the files). `global_batch_size(per_replica, strategy)`
converts. Losses inside a custom `train_step` must be averaged over the global
batch (Keras' built-in losses and `compile` do this), so that the summed
replica gradients equal the single-device gradient.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf


def global_batch_size(per_replica_batch_size: int, strategy_: tf.distribute.Strategy) -> int:
    """The global batch (what `model.fit` sees) for a per-replica batch size."""
    return int(per_replica_batch_size) * strategy_.num_replicas_in_sync


def distribute_dataset(strategy_: tf.distribute.Strategy, dataset_or_fn, global_batch: Optional[int] = None):
    """A distributed dataset for a custom training loop.

    `dataset_or_fn` is either a `tf.data.Dataset` already batched with the
    GLOBAL batch size (split across replicas by the strategy), or a function
    `dataset_fn(input_context)` that returns a dataset batched with the
    PER-REPLICA size; pass `global_batch` and the function receives it as
    `input_context.get_per_replica_batch_size(global_batch)` through
    `per_replica_batch_size(input_context, global_batch)`. For `model.fit`
    simply pass the globally batched dataset; Keras distributes it.
    """
    if isinstance(dataset_or_fn, tf.data.Dataset):
        return strategy_.experimental_distribute_dataset(dataset_or_fn)
    if callable(dataset_or_fn):
        if global_batch is None:
            return strategy_.distribute_datasets_from_function(dataset_or_fn)
        return strategy_.distribute_datasets_from_function(lambda ctx: dataset_or_fn(ctx, global_batch))
    raise TypeError(
        f"distribute_dataset takes a tf.data.Dataset or a dataset_fn(input_context), "
        f"got {type(dataset_or_fn).__name__}."
    )


def per_replica_batch_size(input_context: tf.distribute.InputContext, global_batch: int) -> int:
    """The per-replica batch for `global_batch`; raises if it does not divide evenly."""
    replicas = input_context.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"Global batch {global_batch} is not divisible by {replicas} replicas.")
    return global_batch // replicas
