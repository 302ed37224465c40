"""Decompose a dense kernel W (in, out) into the factors of a reparameterized layer.

Pure numpy (float64 inside, float32 factors out): no TensorFlow is imported
here, so these run anywhere. Each function returns a `Factorization` whose
`factors` and `layer_kwargs` match the layer named by its `layer` field.
"""

from tfreparam.decompose.budget import (
    balanced_factors,
    cp_rank_for_budget,
    kronecker_terms_for_budget,
    low_rank_rank_for_budget,
    param_count,
    tt_max_ranks,
    tt_rank_for_budget,
    tucker_rank_for_budget,
)
from tfreparam.decompose.cp import cp_als
from tfreparam.decompose.factorization import Factorization, output_error
from tfreparam.decompose.kronecker import nearest_kronecker
from tfreparam.decompose.svd import fisher_svd, svd, whitened_svd
from tfreparam.decompose.tensor_train import tt_svd
from tfreparam.decompose.tucker import tucker

__all__ = [
    "Factorization",
    "balanced_factors",
    "cp_als",
    "cp_rank_for_budget",
    "fisher_svd",
    "kronecker_terms_for_budget",
    "low_rank_rank_for_budget",
    "nearest_kronecker",
    "output_error",
    "param_count",
    "svd",
    "tt_max_ranks",
    "tt_rank_for_budget",
    "tt_svd",
    "tucker",
    "tucker_rank_for_budget",
    "whitened_svd",
]
