"""Tensor-train (matrix product operator) kernels by TT-SVD (Oseledets, 2011)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

import tfreparam.decompose.validation as validation
from tfreparam.decompose._tensor import tail_norms
from tfreparam.decompose.budget import budget_params
from tfreparam.decompose.factorization import Factorization
from tfreparam.decompose.form import Form, register_form


def tt_max_ranks(input_factors: Sequence[int], output_factors: Sequence[int]) -> tuple[int, ...]:
    """Largest useful inner ranks of a TT/MPO kernel: min(prod n[:k+1], prod n[k+1:]), n_k = in_k*out_k."""
    pairs = [i * o for i, o in zip(input_factors, output_factors)]
    return tuple(
        min(math.prod(pairs[: k + 1]), math.prod(pairs[k + 1 :])) for k in range(len(pairs) - 1)
    )


def _resolve(shape, *, input_factors, output_factors, ranks):
    ins, outs = validation.paired_factors(input_factors, output_factors, *shape)
    return {"input_factors": ins, "output_factors": outs,
            "ranks": validation.rank_tuple(ranks, "ranks", tt_max_ranks(ins, outs))}


def _limits(shape, config):
    caps = tt_max_ranks(config["input_factors"], config["output_factors"])
    return {"ranks": (caps, "min(prod n[:k+1], prod n[k+1:]) per bond, n_k = in_k*out_k: the rank of each unfolding")}


def _count(shape, config):
    ins, outs = config["input_factors"], config["output_factors"]
    bonds = (1,) + tuple(config["ranks"]) + (1,)
    return sum(bonds[k] * ins[k] * outs[k] * bonds[k + 1] for k in range(len(ins)))


def _rebuild(f, shape, config):
    # Grow (rows, cols, bond) one core at a time; rows and cols stay row-major.
    result = f["core_0"][0]
    for k in range(1, len(f)):
        core = f[f"core_{k}"]
        result = np.einsum("abr,rcds->acbds", result, core)
        s = result.shape
        result = result.reshape(s[0] * s[1], s[2] * s[3], s[4])
    return result.reshape(shape)


TENSOR_TRAIN = register_form(Form("tensor_train", _resolve, _count, _limits, _rebuild, budget_size="ranks"))


def tt_rank_for_budget(input_factors: Sequence[int], output_factors: Sequence[int], fraction: float) -> int:
    """Largest uniform inner TT rank (each bond capped at its maximum) within the budget, at least 1."""
    ins = validation.int_tuple(input_factors, "input_factors")
    outs = validation.int_tuple(output_factors, "output_factors")
    validation.check_paired(ins, outs)
    shape = (math.prod(ins), math.prod(outs))
    return TENSOR_TRAIN.size_for_budget(
        shape, budget_params(fraction, shape[0] * shape[1]), input_factors=ins, output_factors=outs)


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
    W = validation.kernel(W)
    ins, outs = validation.paired_factors(input_factors, output_factors, *W.shape)
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
        rank_caps = validation.rank_tuple(ranks, "ranks", caps)
        _check_reachable(rank_caps, pairs)
    if eps is not None:
        eps = validation.nonnegative_float(eps, "eps")
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
        form=TENSOR_TRAIN,
        factors=cores,
        layer_config={"input_factors": ins, "output_factors": outs, "ranks": tuple(bond_ranks)},
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
