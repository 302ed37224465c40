"""Pruning for tfreparam models: TFMOT magnitude pruning, movement pruning,
L1 sparsification, and structured (head / FFN-neuron) pruning of the flat BERT
with its latency-budget structure search and least-squares refit, and
narrower attention heads from a whitened per-head SVD.

Importing this package imports TFMOT (without its environment side effect)
and registers tfreparam's layers as `PrunableLayer` / `ClusterableLayer`.
"""

from tfreparam.sparsity._tfmot import tfmot  # noqa: F401  (first: registers the layers)
from tfreparam.sparsity.magnitude import (
    SparsityReport,
    UpdatePruningStep,
    prune,
    sparsity_report,
    strip,
)
from tfreparam.sparsity.masked import (
    MaskedWeights,
    UpdateMasks,
    l1_sparsification,
    movement_pruning,
)
from tfreparam.sparsity.narrowing import attention_input_moments, head_widths, narrow_heads
from tfreparam.sparsity.selection import m_by_n_weights, select_layers
from tfreparam.sparsity.reconstruct import RefitResult, refit_output_projections
from tfreparam.sparsity.structured import (
    StructuredPruning,
    UnitSelection,
    head_and_neuron_importance,
    output_sensitivity,
    prune_heads_and_neurons,
    remove_heads_and_neurons,
    search_structure,
)

__all__ = [
    "MaskedWeights",
    "RefitResult",
    "SparsityReport",
    "StructuredPruning",
    "UnitSelection",
    "UpdateMasks",
    "UpdatePruningStep",
    "attention_input_moments",
    "head_and_neuron_importance",
    "head_widths",
    "l1_sparsification",
    "m_by_n_weights",
    "movement_pruning",
    "narrow_heads",
    "output_sensitivity",
    "prune",
    "prune_heads_and_neurons",
    "refit_output_projections",
    "remove_heads_and_neurons",
    "search_structure",
    "select_layers",
    "sparsity_report",
    "strip",
]
