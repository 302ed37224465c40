"""Nearest sum of Kronecker products, W ≈ Σ_k A_k ⊗ B_k (Van Loan & Pitsianis, 1993)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

import tfreparam.decompose.validation as validation
from tfreparam.decompose.budget import budget_params
from tfreparam.decompose.factorization import Factorization
from tfreparam.decompose.form import Form, register_form


def _resolve(shape, *, input_factors=None, output_factors=None, num_terms=1):
    in_features, out_features = shape
    if input_factors is None:
        input_factors = validation.balanced_factors(in_features, 2)
    if output_factors is None:
        output_factors = validation.balanced_factors(out_features, 2)
    ins = validation.factors(input_factors, in_features, "input_factors", "input", length=2)
    outs = validation.factors(output_factors, out_features, "output_factors", "output", length=2)
    return {"input_factors": ins, "output_factors": outs, "num_terms": validation.positive_int(num_terms, "num_terms")}


def _limits(shape, config):
    (in1, in2), (out1, out2) = config["input_factors"], config["output_factors"]
    why = (f"min(in1*out1, in2*out2) = min({in1 * out1}, {in2 * out2}) for input_factors ({in1}, {in2}) and "
           f"output_factors ({out1}, {out2}): the rank of the rearranged kernel")
    return {"num_terms": (min(in1 * out1, in2 * out2), why)}


def _count(shape, config):
    (in1, in2), (out1, out2) = config["input_factors"], config["output_factors"]
    return config["num_terms"] * (in1 * out1 + in2 * out2)


def _rebuild(f, shape, config):
    # kron(A, B)[(i1, i2), (o1, o2)] = A[i1, o1] B[i2, o2], summed over terms k.
    return np.einsum("kac,kbd->abcd", f["a"], f["b"]).reshape(shape)


KRONECKER = register_form(Form("kronecker", _resolve, _count, _limits, _rebuild, budget_size="num_terms"))


def kronecker_terms_for_budget(
    input_factors: Sequence[int], output_factors: Sequence[int], fraction: float
) -> int:
    """Largest number of Kronecker terms K with K*(in1*out1 + in2*out2) <= fraction*in*out.

    At least 1, and at most min(in1*out1, in2*out2), the most terms the
    rearranged kernel's SVD can provide.
    """
    ins = validation.int_tuple(input_factors, "input_factors", length=2)
    outs = validation.int_tuple(output_factors, "output_factors", length=2)
    shape = (ins[0] * ins[1], outs[0] * outs[1])
    return KRONECKER.size_for_budget(
        shape, budget_params(fraction, shape[0] * shape[1]), input_factors=ins, output_factors=outs)


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
    W = validation.kernel(W)
    config = KRONECKER.config(W.shape, input_factors=input_factors, output_factors=output_factors,
                              num_terms=num_terms)
    (in1, in2), (out1, out2), terms = config["input_factors"], config["output_factors"], config["num_terms"]
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
        method="nearest_kronecker", form=KRONECKER, factors={"a": a, "b": b},
        layer_config=config, kernel=W, info=info,
    )
