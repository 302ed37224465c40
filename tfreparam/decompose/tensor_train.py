"""Tensor-train (matrix product operator) kernels by TT-SVD (Oseledets, 2011)."""

from __future__ import annotations

import math

import numpy as np

from tfreparam.decompose import _validate
from tfreparam.decompose._tensor import tail_norms
from tfreparam.decompose.budget import tt_max_ranks
from tfreparam.decompose.factorization import Factorization


def tt_svd(W, input_factors, output_factors, ranks=None, eps=None) -> Factorization:
    """TT-SVD of W viewed as a tensor with merged mode pairs (in_k, out_k).

    Core k has shape (r_{k-1}, in_k, out_k, r_k) with r_0 = r_d = 1. Pass
    `ranks` (an int capping every bond at min(ranks, its maximum), or a tuple of
    the d-1 inner ranks), `eps` (target relative error), or both (the smaller
    rank wins at each bond). With eps, every one of the d-1 sequential SVDs
    drops at most δ = eps/sqrt(d-1)·||W||_F, so the total relative error is
    <= eps. The cores come out left-orthonormal except the last, which holds
    the scale. Maximal ranks reproduce W exactly.
    """
    W = _validate.kernel(W)
    ins, outs = _validate.paired_factors(input_factors, output_factors, *W.shape)
    if ranks is None and eps is None:
        raise ValueError(
            "tt_svd needs ranks= (an int cap or a tuple of inner ranks), eps= (a target "
            f"relative error), or both; the largest useful ranks here are {tt_max_ranks(ins, outs)}."
        )
    caps = tt_max_ranks(ins, outs)
    pairs = [i * o for i, o in zip(ins, outs)]
    if ranks is None:
        rank_caps = caps
    else:
        rank_caps = _validate.rank_tuple(ranks, "ranks", caps)
        _check_reachable(rank_caps, pairs)
    if eps is not None:
        eps = _validate.nonnegative_float(eps, "eps")
    d = len(pairs)

    # Interleave to (i1, o1, i2, o2, ...) so each TT mode is one (in_k, out_k) pair.
    order = [axis for k in range(d) for axis in (k, d + k)]
    tensor = W.reshape(ins + outs).transpose(order).reshape(pairs)
    norm = float(np.linalg.norm(tensor))
    delta = None if eps is None else eps / math.sqrt(d - 1) * norm

    cores, bond_ranks, dropped, spectra = {}, [], [], []
    remainder, left = tensor, 1
    for k in range(d - 1):
        u_mat, s, vt = np.linalg.svd(remainder.reshape(left * pairs[k], -1), full_matrices=False)
        tails = tail_norms(s)
        r = min(rank_caps[k], len(s))
        if delta is not None:
            # Smallest rank (at least 1) whose discarded tail fits within δ.
            r = min(r, max(1, int(np.argmax(tails <= delta))))
        cores[f"core_{k}"] = u_mat[:, :r].reshape(left, ins[k], outs[k], r)
        remainder = s[:r, None] * vt[:r]
        bond_ranks.append(r)
        dropped.append(float(tails[r]))
        spectra.append(s.copy())
        left = r
    cores[f"core_{d - 1}"] = remainder.reshape(left, ins[-1], outs[-1], 1)

    bound = math.sqrt(sum(t * t for t in dropped)) / norm if norm > 0 else 0.0
    info = {
        "singular_values": spectra,
        "max_ranks": caps,
        "eps": eps,
        "error_bound": bound,
    }
    return Factorization.from_factors(
        method="tt_svd",
        layer="tensor_train",
        factors=cores,
        layer_kwargs={"input_factors": ins, "output_factors": outs, "ranks": tuple(bond_ranks)},
        kernel=W,
        info=info,
    )


def _check_reachable(ranks: tuple[int, ...], pairs: list[int]) -> None:
    """Each bond's rank is at most the previous bond's rank times the mode size in between."""
    left = 1
    for k, r in enumerate(ranks):
        if r > left * pairs[k]:
            raise ValueError(
                f"ranks[{k}]={r} exceeds ranks[{k - 1}] * in_{k}*out_{k} = {left} * {pairs[k]} = "
                f"{left * pairs[k]}; a tensor-train bond cannot be wider than that. Lower ranks[{k}] "
                f"or raise the earlier ranks (ranks={ranks})."
            )
        left = r
