"""LoRA adapters around a kernel: W + (alpha / rank) · A B, with B = 0 so nothing changes at first.

Not a compression: the base kernel stays whole and frozen, and A (in, rank),
B (rank, out) are the trainable update (Hu et al., 2021). A is drawn
uniformly in ±1/sqrt(in) (PEFT's Kaiming-uniform default for `lora_A`), B is
zero, so the adapted layer computes exactly what the base did.
"""

from __future__ import annotations

import numbers

import numpy as np

import tfreparam.decompose.validation as validation
from tfreparam.decompose.factorization import Factorization
from tfreparam.decompose.form import Form, register_form


def _resolve(shape, *, rank, alpha=None, dropout=0.0):
    rank = validation.positive_int(rank, "rank")
    if alpha is not None and (not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not np.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number (the update is scaled by alpha / rank); got {alpha!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}.")
    return {"rank": rank, "alpha": float(rank if alpha is None else alpha), "dropout": float(dropout)}


def _limits(shape, config):
    return {"rank": (min(shape), f"min(in_features, out_features) for a kernel of shape {tuple(shape)}")}


def _rebuild(f, shape, config):
    return f["base"] + config["alpha"] / config["rank"] * (f["lora_a"] @ f["lora_b"])


LORA = register_form(Form(
    "lora", _resolve,
    # The whole base kernel stays, plus rank * (in + out) adapter weights.
    count=lambda shape, config: shape[0] * shape[1] + config["rank"] * (shape[0] + shape[1]),
    limits=_limits, rebuild=_rebuild,
))


def lora(W, rank, alpha=None, dropout=0.0, seed=0) -> Factorization:
    """Adapters for kernel W: factors "base" (= W), "lora_a" (uniform ±1/sqrt(in), drawn with `seed`), "lora_b" (0)."""
    W = validation.kernel(W)
    config = LORA.config(W.shape, rank=rank, alpha=alpha, dropout=dropout)
    in_features, out_features = W.shape
    bound = 1.0 / np.sqrt(in_features)
    a = np.random.default_rng(seed).uniform(-bound, bound, size=(in_features, config["rank"]))
    b = np.zeros((config["rank"], out_features))
    return Factorization.from_factors(
        method="lora", form=LORA, factors={"base": W, "lora_a": a, "lora_b": b},
        layer_config=config, kernel=W, info={"seed": seed},
    )
