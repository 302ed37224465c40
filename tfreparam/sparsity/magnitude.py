"""Magnitude pruning with TFMOT (`prune`), unwrapping (`strip`) and `sparsity_report`."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

import numpy as np
import tf_keras as keras

import tfreparam.sparsity.selection as selection
from tfreparam.sparsity._tfmot import PruneLowMagnitude, tfmot
from tfreparam.sparsity.masked import PRUNING_WRAPPERS, MaskedWeights
from tfreparam.sparsity.wrapping import refuse_wrapped, rewrap

UpdatePruningStep = tfmot.sparsity.keras.UpdatePruningStep


def prune(
    model: keras.Model,
    target_sparsity: Optional[float] = None,
    schedule: str = "polynomial",
    begin_step: int = 0,
    end_step: Optional[int] = None,
    frequency: int = 100,
    initial_sparsity: float = 0.0,
    m_by_n: Optional[tuple[int, int]] = None,
    policy: selection.Policy = None,
    skip_unsupported: bool = False,
) -> keras.Model:
    """A copy of `model` whose selected layers are wrapped for TFMOT magnitude pruning.

    Args:
      model: a Functional or Sequential tf_keras model (left unchanged).
      target_sparsity: fraction of each selected weight to zero, in [0, 1).
      schedule: "polynomial" (Zhu & Gupta's cubic ramp from `initial_sparsity`
        at `begin_step` to `target_sparsity` at `end_step`) or "constant"
        (`target_sparsity` from `begin_step`; `end_step` defaults to -1: keep
        re-pruning until training stops).
      frequency: steps between mask updates.
      m_by_n: e.g. (2, 4): `m` zeros in every `n` consecutive weights along the
        contracted axis (axis 0) of rank-2 (in, out) weights. Applies to Dense
        kernels, LowRankDense u/v and LoRADense A/B (see
        `selection.m_by_n_weights`); TFMOT sets this mask once, at the first
        training step, and the schedule arguments are ignored.
      policy: which layers (see `tfreparam.sparsity.selection`); default every
        Dense and tfreparam layer.
      skip_unsupported: with `m_by_n`, leave selected layers whose weights
        cannot take the pattern unpruned (with a warning) instead of raising.

    Returns:
      The wrapped copy, ready for `model.compile` and `model.fit`. **Train it
      with `callbacks=[tfreparam.sparsity.UpdatePruningStep()]`**; without it
      the first training step fails with TFMOT's error "Prune() wrapper
      requires the UpdatePruningStep callback". `strip` removes the wrappers.
    """
    if m_by_n is not None:
        m_by_n = _check_m_by_n(m_by_n, target_sparsity)
        pruning_schedule = tfmot.sparsity.keras.ConstantSparsity(
            m_by_n[0] / m_by_n[1], begin_step=0, end_step=0
        )  # end_step=0: no magnitude re-pruning after a reload drops the m:n setting
    else:
        pruning_schedule = make_schedule(
            target_sparsity, schedule, begin_step, end_step, frequency, initial_sparsity
        )
    refuse_wrapped(model, PRUNING_WRAPPERS)
    chosen = selection.select_layers(model, policy)
    if m_by_n is not None:
        chosen = _m_by_n_layers(chosen, m_by_n, skip_unsupported)

    def wrap(layer):
        kwargs = {"pruning_schedule": pruning_schedule}
        if m_by_n is not None:
            kwargs["sparsity_m_by_n"] = m_by_n
        return tfmot.sparsity.keras.prune_low_magnitude(layer, **kwargs)

    return rewrap(model, {layer.name for layer in chosen}, wrap)


def make_schedule(target_sparsity, schedule, begin_step, end_step, frequency, initial_sparsity=0.0):
    """The TFMOT `PruningSchedule` for `prune`'s arguments, with clear errors."""
    _check_fraction(target_sparsity, "target_sparsity")
    _check_fraction(initial_sparsity, "initial_sparsity")
    if not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"`frequency` must be a positive int (steps between mask updates), got {frequency!r}.")
    if not isinstance(begin_step, int) or begin_step < 0:
        raise ValueError(f"`begin_step` must be an int >= 0, got {begin_step!r}.")
    if schedule == "polynomial":
        if end_step is None or end_step <= begin_step:
            raise ValueError(
                "The polynomial schedule needs `end_step` > `begin_step` (the step at which "
                f"`target_sparsity` is reached, e.g. epochs * steps_per_epoch); got end_step={end_step}."
            )
        return tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity, target_sparsity, begin_step, end_step, power=3, frequency=frequency
        )
    if schedule == "constant":
        end = -1 if end_step is None else end_step
        if end != -1 and end < begin_step:
            raise ValueError(f"`end_step` ({end}) must be -1 or >= `begin_step` ({begin_step}).")
        return tfmot.sparsity.keras.ConstantSparsity(target_sparsity, begin_step, end, frequency)
    raise ValueError(f"`schedule` must be 'polynomial' or 'constant', got {schedule!r}.")


def _check_fraction(value, name):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}.")


def _check_m_by_n(m_by_n, target_sparsity):
    if (
        not isinstance(m_by_n, (tuple, list))
        or len(m_by_n) != 2
        or not all(isinstance(v, int) and v > 0 for v in m_by_n)
        or m_by_n[0] >= m_by_n[1]
    ):
        raise ValueError(f"`m_by_n` must be two ints (m, n) with 0 < m < n, e.g. (2, 4); got {m_by_n!r}.")
    m, n = m_by_n
    if target_sparsity is not None and not np.isclose(target_sparsity, m / n):
        raise ValueError(
            f"With m_by_n={tuple(m_by_n)} the sparsity is m/n = {m / n:g}; pass "
            f"target_sparsity=None (or {m / n:g}), got {target_sparsity}."
        )
    return (m, n)


def _m_by_n_layers(chosen, m_by_n, skip_unsupported):
    n = m_by_n[1]
    supported, problems = [], []
    for layer in chosen:
        names = selection.m_by_n_weights(layer)
        weights = dict(selection.prunable_weights(layer))
        if not names:
            problems.append(
                f"'{layer.name}' ({type(layer).__name__}): its factors are not (in, out) matrices"
            )
        elif any(weights[name].shape[0] % n for name in names):
            shapes = {name: tuple(weights[name].shape) for name in names}
            problems.append(f"'{layer.name}': contracted axis of {shapes} is not a multiple of {n}")
        else:
            supported.append(layer)
    if problems:
        message = (
            f"m_by_n={m_by_n} sparsity applies to rank-2 (contracted, output) weights whose "
            f"contracted size is a multiple of {n}: Dense kernels, LowRankDense u/v, LoRADense "
            "A/B. Not supported: " + "; ".join(problems) + "."
        )
        if not skip_unsupported:
            raise ValueError(
                message + " Exclude these layers with `policy`, fold them first with "
                "tfreparam.fold, or pass skip_unsupported=True to leave them unpruned."
            )
        warnings.warn(message + " They are left unpruned (skip_unsupported=True).", stacklevel=3)
    return supported


# -- stripping and reporting ------------------------------------------------------


def _wrapped_entries(layer):
    """(inner layer, [(weight name, variable, mask variable or None)]) for any layer."""
    if isinstance(layer, PruneLowMagnitude):
        names = {id(v): n for n, v in _named_prunable(layer.layer)}
        return layer.layer, [(names.get(id(w), w.name), w, m) for w, m, _ in layer.pruning_vars]
    if isinstance(layer, MaskedWeights):
        return layer.layer, [(e.name, e.weight, e.mask) for e in layer.entries]
    if selection.is_projection(layer) and layer.built:
        return layer, [(n, w, None) for n, w in selection.prunable_weights(layer)]
    return layer, []


def _named_prunable(layer):
    try:
        return selection.prunable_weights(layer)
    except ValueError:
        return []


def strip(model: keras.Model) -> keras.Model:
    """A plain copy of `model`: pruning wrappers (TFMOT's and tfreparam's) removed, masks applied.

    Every pruned weight of the result holds `weight * mask`, so the copy
    computes what the pruned model computes at inference, with no wrapper
    classes left (it loads without `prune_scope`).
    """
    selection.check_model(model, "strip")
    inner_of = {}

    def clone(layer):
        inner, _ = _wrapped_entries(layer)
        copy = inner.__class__.from_config(inner.get_config())
        inner_of[layer.name] = copy
        return copy

    stripped = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if not layer.weights:
            continue
        inner, entries = _wrapped_entries(layer)
        values = inner.get_weights()
        position = {id(w): i for i, w in enumerate(inner.weights)}
        for _, weight, mask in entries:
            if mask is not None:
                i = position[id(weight)]
                values[i] = values[i] * mask.numpy().astype(values[i].dtype)
        inner_of[layer.name].set_weights(values)
    return stripped


@dataclasses.dataclass(frozen=True)
class WeightSparsity:
    layer: str
    weight: str
    shape: tuple
    zeros: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size


@dataclasses.dataclass(frozen=True)
class SparsityReport:
    """Achieved sparsity of every prunable weight (effective value: weight * mask)."""

    rows: tuple

    def __getitem__(self, key) -> float:
        """Sparsity of 'layer/weight' (inner layer name, e.g. 'layer_0/attention/query/kernel')."""
        for row in self.rows:
            if f"{row.layer}/{row.weight}" == key:
                return row.sparsity
        raise KeyError(f"No prunable weight '{key}'; known: {[f'{r.layer}/{r.weight}' for r in self.rows]}.")

    def as_dict(self) -> dict:
        return {f"{r.layer}/{r.weight}": r.sparsity for r in self.rows}

    @property
    def overall(self) -> float:
        size = sum(r.size for r in self.rows)
        return sum(r.zeros for r in self.rows) / size if size else 0.0

    def __str__(self):
        lines = ["| weight | shape | zeros | sparsity |", "|---|---|---:|---:|"]
        for r in self.rows:
            lines.append(f"| {r.layer}/{r.weight} | {r.shape} | {r.zeros} | {r.sparsity:.4f} |")
        lines.append(f"| overall | | {sum(r.zeros for r in self.rows)} | {self.overall:.4f} |")
        return "\n".join(lines)


def sparsity_report(model: keras.Model) -> SparsityReport:
    """Per-weight achieved sparsity of the projections of `model` (wrapped or plain)."""
    selection.check_model(model, "sparsity_report")
    rows = []
    for layer in model.layers:
        inner, entries = _wrapped_entries(layer)
        for name, weight, mask in entries:
            value = weight.numpy()
            if mask is not None:
                value = value * mask.numpy()
            rows.append(WeightSparsity(inner.name, name, tuple(value.shape), int(np.sum(value == 0))))
    return SparsityReport(tuple(rows))
