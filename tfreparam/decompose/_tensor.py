"""Small tensor helpers shared by the Tucker, CP and TT code (float64 numpy)."""

from __future__ import annotations

import math

import numpy as np


def mode_dot(tensor: np.ndarray, matrix: np.ndarray, axis: int) -> np.ndarray:
    """The mode-`axis` product tensor ×_axis matrix, with matrix of shape (new, tensor.shape[axis])."""
    result = np.tensordot(matrix, tensor, axes=([1], [axis]))
    return np.moveaxis(result, 0, axis)


def unfold(tensor: np.ndarray, axis: int) -> np.ndarray:
    """The mode-`axis` unfolding: shape (tensor.shape[axis], product of the other sizes)."""
    return np.moveaxis(tensor, axis, 0).reshape(tensor.shape[axis], -1)


def leading_left_singular_vectors(matrix: np.ndarray, count: int) -> np.ndarray:
    """The `count` leading left singular vectors (orthonormal columns) of `matrix`.

    When `count` exceeds the matrix's smaller side the basis is completed with
    orthonormal directions that carry no energy (full SVD), so the result
    always has exactly `count` columns (count <= matrix.shape[0]).
    """
    full = count > min(matrix.shape)
    u = np.linalg.svd(matrix, full_matrices=full)[0]
    return u[:, :count]


def tail_norms(singular_values: np.ndarray) -> np.ndarray:
    """tail[r] = sqrt(sum_{j >= r} s_j^2): the error of keeping the first r values."""
    squares = np.asarray(singular_values, dtype=np.float64) ** 2
    tails = np.concatenate([np.cumsum(squares[::-1])[::-1], [0.0]])
    return np.sqrt(tails)


def max_block_terms(modes, ranks) -> int:
    """How many Tucker blocks of `ranks` can already write *every* tensor of shape `modes` exactly.

    Cut every mode j into ceil(n_j / R_j) slabs: each combination of slabs is a
    sub-tensor one block covers, so prod_j ceil(n_j / R_j) blocks always
    suffice. One mode j* need not be cut when R_j* reaches that mode's largest
    possible rank min(n_j*, prod_{j≠j*} R_j). With every R_j = 1 (CP) this is
    the classical bound: the product of all mode sizes but the largest.
    """
    modes, ranks = tuple(int(n) for n in modes), tuple(int(r) for r in ranks)
    slabs = [-(-n // r) for n, r in zip(modes, ranks)]
    best = math.prod(slabs)
    for j, (n, r) in enumerate(zip(modes, ranks)):
        others = math.prod(ranks[:j] + ranks[j + 1:])
        if r >= min(n, others):
            best = min(best, math.prod(slabs[:j] + slabs[j + 1:]))
    return max(1, best)
