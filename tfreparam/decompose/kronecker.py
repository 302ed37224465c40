"""Nearest sum of Kronecker products, W ≈ Σ_k A_k ⊗ B_k (Van Loan & Pitsianis, 1993)."""

from __future__ import annotations

import numpy as np

from tfreparam.decompose import _validate
from tfreparam.decompose.budget import balanced_factors
from tfreparam.decompose.factorization import Factorization


def nearest_kronecker(W, input_factors=None, output_factors=None, num_terms=1) -> Factorization:
    """Best Frobenius approximation of W by `num_terms` Kronecker products.

    W (in1*in2, out1*out2) is rearranged into R(W) of shape (in1*out1, in2*out2)
    whose row (i1, o1) is the flattened block W[i1*in2:(i1+1)*in2, o1*out2:(o1+1)*out2].
    Then kron(A, B) maps to the rank-1 matrix vec(A) vec(B)ᵀ and the rearrangement
    preserves the Frobenius norm, so the truncated SVD of R(W) gives the optimal
    terms; the result is exact when W is a sum of that many Kronecker products.
    Factors left as None are split near the square root (`balanced_factors`).
    Each term's singular value is split as sqrt into A_k and B_k.
    """
    W = _validate.kernel(W)
    in_features, out_features = W.shape
    if input_factors is None:
        input_factors = balanced_factors(in_features, 2)
    if output_factors is None:
        output_factors = balanced_factors(out_features, 2)
    in1, in2 = _validate.factors(input_factors, in_features, "input_factors", "input", length=2)
    out1, out2 = _validate.factors(output_factors, out_features, "output_factors", "output", length=2)
    terms = _validate.positive_int(num_terms, "num_terms")
    max_terms = min(in1 * out1, in2 * out2)
    if terms > max_terms:
        raise ValueError(
            f"num_terms={terms} exceeds min(in1*out1, in2*out2) = min({in1 * out1}, {in2 * out2}) "
            f"= {max_terms} for input_factors ({in1}, {in2}) and output_factors ({out1}, {out2}); "
            f"use num_terms <= {max_terms}."
        )
    rearranged = W.reshape(in1, in2, out1, out2).transpose(0, 2, 1, 3).reshape(in1 * out1, in2 * out2)
    u_mat, s, vt = np.linalg.svd(rearranged, full_matrices=False)
    root = np.sqrt(s[:terms])
    a = (u_mat[:, :terms] * root).T.reshape(terms, in1, out1)
    b = (root[:, None] * vt[:terms]).reshape(terms, in2, out2)
    total = float(np.sum(s**2))
    info = {
        "singular_values": s.copy(),
        "energy_kept": float(np.sum(s[:terms] ** 2) / total) if total > 0 else 1.0,
    }
    return Factorization.from_factors(
        method="nearest_kronecker",
        layer="kronecker",
        factors={"a": a, "b": b},
        layer_kwargs={
            "input_factors": (in1, in2),
            "output_factors": (out1, out2),
            "num_terms": terms,
        },
        kernel=W,
        info=info,
    )
