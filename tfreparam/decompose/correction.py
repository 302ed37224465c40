"""Least-squares re-targeting of a kernel at the original model's outputs (sequential whitening)."""

from __future__ import annotations

import numpy as np

# Ridge (× mean(diag G)) that keeps the least-squares correction well posed
# along input directions the calibration data barely excites.
CORRECTION_RIDGE = 1e-4


def corrected_kernel(kernel: np.ndarray, gram: np.ndarray, cross: np.ndarray, ridge: float = CORRECTION_RIDGE):
    """argmin_W' ||X̃ W' − X W||_F = (X̃ᵀX̃)⁻¹ X̃ᵀX W, from gram = X̃ᵀX̃ and cross = X̃ᵀX.

    X̃ are a layer's inputs in the partly compressed model, X the original
    model's; the result re-targets the layer at the original's outputs so
    errors of earlier layers are compensated rather than compounded.
    """
    gram = np.asarray(gram, np.float64)
    scale = float(np.mean(np.diag(gram))) or 1.0
    regularised = gram + ridge * scale * np.eye(gram.shape[0])
    return np.linalg.solve(regularised, np.asarray(cross, np.float64) @ np.asarray(kernel, np.float64))
