"""Decompose a dense kernel W (in, out) into the factors of a reparameterized layer.

Pure numpy (float64 inside, float32 factors out): no TensorFlow is imported
here, so these run anywhere. Each function returns a `Factorization` whose
`factors` and `layer_config` match the layer of its `form` (the family's
numpy side: reconstruction, parameter count, size caps, budget rule; each
family module registers one, `get_form(name)` finds it).
"""

from tfreparam.decompose.block_term import block_term, block_term_blocks_for_budget
from tfreparam.decompose.budget import budget_count, budget_params, param_count
from tfreparam.decompose.correction import corrected_kernel
from tfreparam.decompose.cp import cp_als, cp_rank_for_budget
from tfreparam.decompose.factorization import Factorization, output_error
from tfreparam.decompose.form import Form, form_names, get_form, register_form
from tfreparam.decompose.kronecker import kronecker_terms_for_budget, nearest_kronecker
from tfreparam.decompose.lora import lora
from tfreparam.decompose.svd import fisher_svd, low_rank_rank_for_budget, svd, whitened_svd
from tfreparam.decompose.tensor_train import tt_max_ranks, tt_rank_for_budget, tt_svd
from tfreparam.decompose.tucker import tucker, tucker_rank_for_budget
from tfreparam.decompose.validation import balanced_factors

__all__ = [
    "Factorization",
    "Form",
    "balanced_factors",
    "block_term",
    "block_term_blocks_for_budget",
    "budget_count",
    "budget_params",
    "corrected_kernel",
    "cp_als",
    "cp_rank_for_budget",
    "fisher_svd",
    "form_names",
    "get_form",
    "kronecker_terms_for_budget",
    "lora",
    "low_rank_rank_for_budget",
    "nearest_kronecker",
    "output_error",
    "param_count",
    "register_form",
    "svd",
    "tt_max_ranks",
    "tt_rank_for_budget",
    "tt_svd",
    "tucker",
    "tucker_rank_for_budget",
    "whitened_svd",
]
