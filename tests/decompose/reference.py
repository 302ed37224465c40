"""Independent numpy references for the factor layouts and the optimal errors.

Written from the layout definitions, not from tfreparam's code, so the tests
check the factors against what a layer is specified to compute.
"""

import itertools

import numpy as np


def kron_sum(a, b):
    """Σ_k np.kron(a[k], b[k])."""
    return sum(np.kron(a[k].astype(np.float64), b[k].astype(np.float64)) for k in range(a.shape[0]))


def tt_kernel(cores, input_factors, output_factors):
    """Dense (in, out) kernel of an MPO: one einsum over all cores, then row-major merges."""
    d = len(cores)
    operands = []
    # Index labels: bonds 0..d, inputs d+1..2d, outputs 2d+1..3d.
    for k, core in enumerate(cores):
        operands += [np.asarray(core, np.float64), [k, d + 1 + k, 2 * d + 1 + k, k + 1]]
    out = [0] + [d + 1 + k for k in range(d)] + [2 * d + 1 + k for k in range(d)] + [d]
    full = np.einsum(*operands, out)
    return full.reshape(int(np.prod(input_factors)), int(np.prod(output_factors)))


def tt_entry(cores, input_factors, output_factors, row, col):
    """W[row, col] as the product of the core slices picked by the row/col multi-indices."""
    rows = np.unravel_index(row, input_factors)
    cols = np.unravel_index(col, output_factors)
    product = np.eye(1)
    for core, i, o in zip(cores, rows, cols):
        product = product @ np.asarray(core, np.float64)[:, i, o, :]
    return float(product[0, 0])


def tucker_tensor(core, factors):
    """core ×_1 U_1 ··· ×_m U_m by one einsum (labels: ranks 0..m-1, modes m..2m-1)."""
    m = len(factors)
    operands = [np.asarray(core, np.float64), list(range(m))]
    for j, factor in enumerate(factors):
        operands += [np.asarray(factor, np.float64), [m + j, j]]
    return np.einsum(*operands, [m + j for j in range(m)])


def cp_tensor(factors):
    """Σ_r outer(U_1[:, r], ..., U_m[:, r])."""
    m = len(factors)
    operands = []
    for j, factor in enumerate(factors):
        operands += [np.asarray(factor, np.float64), [j, m]]
    return np.einsum(*operands, list(range(m)))


def tail_error(singular_values, keep):
    """sqrt(Σ_{j >= keep} σ_j²) / sqrt(Σ σ_j²): the Eckart–Young relative error."""
    s = np.asarray(singular_values, np.float64)
    return float(np.sqrt(np.sum(s[keep:] ** 2) / np.sum(s**2)))


def sqrt_psd(G):
    """Symmetric square root of a positive semi-definite matrix via eigh."""
    values, vectors = np.linalg.eigh(G)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def divisors(n):
    return [k for k in range(1, n + 1) if n % k == 0]


def brute_force_balanced(n, parts):
    """All sorted factorisations of n into `parts` factors, best by (largest, -smallest)."""
    candidates = [
        c for c in itertools.combinations_with_replacement(divisors(n), parts) if np.prod(c) == n
    ]
    return min(candidates, key=lambda c: (max(c), -min(c)))


def relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
