"""Distribution: pick a `tf.distribute` strategy, feed it data, shard a model with DTensor.

Data parallelism (`strategy`)
-----------------------------
`strategy(name)` builds the strategy under which the whole model is created:
the BERT, every reparameterized layer, pruning/QAT wrappers and the optimizer
all go inside `with strategy.scope():`, then `model.fit` runs one replica per
device and all-reduces the gradients.

Batch sizes: the dataset given to `model.fit` (or to
`strategy.experimental_distribute_dataset`) is batched with the GLOBAL batch
size; every step splits it evenly into `num_replicas_in_sync` per-replica
batches. A `dataset_fn(input_context)` given to `distribute_dataset` instead
batches with the PER-REPLICA size, `input_context.get_per_replica_batch_size(
global_batch_size)`, and shards its input per worker (each worker then reads
only its own part of the files). `global_batch_size(per_replica, strategy)`
converts. Losses inside a custom `train_step` must be averaged over the global
batch (Keras' built-in losses and `compile` do this), so that the summed
replica gradients equal the single-device gradient.

Inputs must be int32 token ids (TPUs have no int64 gather) with static shapes
(`drop_remainder=True`) for TPU and XLA.

Model parallelism (`shard`)
---------------------------
`shard(model_builder, mesh_shape, layout_rules)` builds a model whose
variables are DTensor `DVariable`s laid out on a device mesh (for example
2 data x 2 model): rules map variable names to the mesh axis that splits each
dimension, so a projection's kernel (or the factors of a reparameterized
layer) is split over the "model" axis while the batch is split over "batch".
"""

from tfreparam.distribute.datasets import distribute_dataset, global_batch_size, per_replica_batch_size
from tfreparam.distribute.sharding import ShardedModel, as_numpy, shard
from tfreparam.distribute.strategies import STRATEGY_NAMES, StrategyError, strategy, validate_tf_config

__all__ = [
    "STRATEGY_NAMES",
    "ShardedModel",
    "StrategyError",
    "as_numpy",
    "distribute_dataset",
    "global_batch_size",
    "per_replica_batch_size",
    "shard",
    "strategy",
    "validate_tf_config",
]
