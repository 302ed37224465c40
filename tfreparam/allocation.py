"""Non-uniform rank allocation: spend one parameter budget where it buys the most.

A uniform "50 % of every layer" policy treats a layer whose spectrum decays
fast like one that is nearly full rank, and a layer the model barely notices
like one it depends on. `allocate_ranks` instead hands out rank one unit at a
time to the layer whose next singular value removes the most *weighted*
output error per parameter:

    gain(layer, r -> r + 1) = sensitivity · σ_r² / Σ_j σ_j²  /  (in + out)

With whitened spectra, σ_r² / Σσ² is exactly the share of the layer's output
energy ||XW||² that rank r + 1 restores, and `sensitivity` says how much the
model's final output moves per unit of that layer's relative output error
(`measure_sensitivity` measures it). Each layer's gains decrease with r, so
picking the best next step greedily is the exact optimum of the relaxed
(fractional) problem and never overshoots the budget.
"""

from __future__ import annotations

import dataclasses
import heapq
import numbers
from typing import Mapping, Optional, Sequence

import numpy as np

from tfreparam.decompose.budget import budget_params
from tfreparam.decompose.factorization import output_error
from tfreparam.decompose.svd import whitened_svd
from tfreparam.projections import projection


@dataclasses.dataclass
class LayerSpectrum:
    """What the allocator needs to know about one (in, out) projection.

    `singular_values`: the (whitened) spectrum, in decreasing order.
    `sensitivity`: weight of this layer's relative output error (>= 0).
    `min_rank` / `max_rank`: bounds; `max_rank` defaults to the break-even rank
    floor(in·out / (in + out)), above which a factorization is no smaller
    than the dense kernel.
    """

    name: str
    in_features: int
    out_features: int
    singular_values: np.ndarray
    sensitivity: float = 1.0
    min_rank: int = 1
    max_rank: Optional[int] = None

    def __post_init__(self):
        s = np.asarray(self.singular_values, np.float64)
        if s.ndim != 1 or s.size == 0:
            raise ValueError(f"Layer '{self.name}': singular_values must be a non-empty 1-D array, got shape {s.shape}.")
        if np.any(np.diff(s) > 1e-9 * max(float(s.max()), 1e-300)) or np.any(s < 0):
            raise ValueError(f"Layer '{self.name}': singular_values must be non-negative and in decreasing order.")
        self.singular_values = s
        if not isinstance(self.sensitivity, numbers.Real) or not np.isfinite(self.sensitivity) or self.sensitivity < 0:
            raise ValueError(f"Layer '{self.name}': sensitivity must be a finite number >= 0, got {self.sensitivity!r}.")
        limit = min(s.size, self.break_even_rank)
        self.max_rank = limit if self.max_rank is None else min(int(self.max_rank), s.size)
        if not 1 <= self.min_rank <= self.max_rank:
            raise ValueError(
                f"Layer '{self.name}': need 1 <= min_rank <= max_rank; got min_rank={self.min_rank}, "
                f"max_rank={self.max_rank}."
            )

    @property
    def cost_per_rank(self) -> int:
        return self.in_features + self.out_features

    @property
    def break_even_rank(self) -> int:
        return max(1, (self.in_features * self.out_features) // self.cost_per_rank)

    @property
    def dense_params(self) -> int:
        return self.in_features * self.out_features

    def error_share(self, rank: int) -> float:
        """σ²-share left out at `rank`: the squared relative (output) error of the truncation."""
        s2 = self.singular_values**2
        total = float(s2.sum())
        return float(s2[rank:].sum() / total) if total > 0 else 0.0


def total_budget(layers: Sequence[LayerSpectrum], budget) -> int:
    """A parameter count from an int count or a float share of Σ in·out (kernels only)."""
    dense = sum(layer.dense_params for layer in layers)
    if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, numbers.Real):
        raise ValueError(f"budget must be an int parameter count or a float share in (0, 1]; got {budget!r}.")
    if isinstance(budget, numbers.Integral):
        if budget <= 0:
            raise ValueError(f"budget must be a positive parameter count; got {budget}.")
        return int(budget)
    if not 0 < budget <= 1:
        raise ValueError(f"A float budget is a share of the {dense:,} dense kernel parameters and must be in (0, 1]; got {budget!r}.")
    return budget_params(budget, dense)


def allocate_ranks(layers: Sequence[LayerSpectrum], budget) -> dict[str, int]:
    """Ranks maximising the weighted restored output energy with Σ rank·(in+out) <= budget.

    `budget`: a parameter count (int) or a share of the layers' dense kernel
    parameters (float in (0, 1]). Greedy by gain per parameter; it stops when
    no layer's next rank fits, so the leftover is smaller than every
    remaining layer's (in + out).
    """
    layers = list(layers)
    if not layers:
        raise ValueError("allocate_ranks needs at least one layer.")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"Layer names must be unique; got duplicates in {names}.")
    limit = total_budget(layers, budget)
    ranks = {layer.name: layer.min_rank for layer in layers}
    spent = sum(layer.min_rank * layer.cost_per_rank for layer in layers)
    if spent > limit:
        raise ValueError(
            f"The budget of {limit:,} parameters is below the {spent:,} that the minimum ranks already need; "
            "raise the budget or lower min_rank."
        )

    def entry(index):
        layer = layers[index]
        r = ranks[layer.name]
        s2 = layer.singular_values**2
        total = float(s2.sum()) or 1.0
        gain = layer.sensitivity * float(s2[r]) / total / layer.cost_per_rank
        return (-gain, index)  # heapq is a min-heap; ties go to the earlier layer

    heap = [entry(i) for i, layer in enumerate(layers) if ranks[layer.name] < layer.max_rank]
    heapq.heapify(heap)
    while heap:
        _, index = heapq.heappop(heap)
        layer = layers[index]
        if spent + layer.cost_per_rank > limit:
            continue  # this layer can no longer grow; others with smaller (in+out) may
        ranks[layer.name] += 1
        spent += layer.cost_per_rank
        if ranks[layer.name] < layer.max_rank:
            heapq.heappush(heap, entry(index))
    return ranks


def allocation_params(layers: Sequence[LayerSpectrum], ranks: Mapping[str, int]) -> int:
    """Σ rank·(in + out) of an allocation (kernel factors only)."""
    return sum(ranks[layer.name] * layer.cost_per_rank for layer in layers)


def weighted_error(layers: Sequence[LayerSpectrum], ranks: Mapping[str, int]) -> float:
    """Σ sensitivity · (left-out σ² share): the objective `allocate_ranks` minimises."""
    return sum(layer.sensitivity * layer.error_share(ranks[layer.name]) for layer in layers)


def measure_sensitivity(model, approximations: Mapping[str, np.ndarray], batches, relative_errors: Mapping[str, float],
                        output: str = "sequence_output", mask_key: Optional[str] = "input_mask") -> dict[str, float]:
    """How much the model's `output` moves per unit of each layer's squared relative output error.

    For each layer name in `approximations` (name -> an approximate (in, out)
    kernel), the layer's kernel is swapped for the approximation alone, the
    model's output on `batches` is compared with the unmodified output
    (squared error relative to its energy, over real tokens), and the kernel
    is restored. Returns that final error divided by
    `relative_errors[name]**2` (the layer's own relative output error of the
    same approximation), i.e. a first-order sensitivity coefficient.
    """
    def outputs():
        result = []
        for x in batches:
            y = model(x, training=False)
            y = y[output] if isinstance(y, dict) else y
            y = np.asarray(y, np.float64)
            if mask_key is not None and isinstance(x, Mapping) and mask_key in x and y.ndim == 3:
                y = y[np.asarray(x[mask_key]).astype(bool)]
            result.append(y.reshape(-1, y.shape[-1]))
        return np.concatenate(result)

    reference = outputs()
    energy = float(np.sum(reference**2)) or 1.0
    sensitivity = {}
    for name, approx in approximations.items():
        found = projection(model.get_layer(name))
        if found is None:
            raise ValueError(f"Layer '{name}' is not a plain projection (Dense); cannot measure its sensitivity.")
        kernel = found[0]
        original = kernel.numpy()
        try:
            kernel.assign(np.asarray(approx, original.dtype))
            moved = float(np.sum((outputs() - reference) ** 2)) / energy
        finally:
            kernel.assign(original)
        error = float(relative_errors[name]) ** 2
        sensitivity[name] = moved / error if error > 0 else 0.0
    return sensitivity


def allocate_for_model(model, names, grams: Mapping[str, object], budget, sensitivity_batches=None,
                       probe_fraction: float = 0.5, output: str = "sequence_output") -> tuple[dict, dict]:
    """(ranks, sensitivities) for the named projections of `model` under one total budget.

    Spectra come from the whitened SVD of each kernel with its input Gram
    matrix (`grams[name].gram`, e.g. from `calibration.input_grams`). With
    `sensitivity_batches`, each layer's sensitivity is measured by
    `measure_sensitivity` at the uniform `probe_fraction` truncation;
    otherwise every layer weighs 1 (pure output-energy allocation).
    `budget` is a float share of the layers' Σ in·out or an int count.
    """
    spectra, probes, errors = {}, {}, {}
    for name in names:
        found = projection(model.get_layer(name))
        if found is None:
            raise ValueError(f"Layer '{name}' is not a plain projection (Dense); it cannot get a rank.")
        kernel = found[0].numpy().astype(np.float64)
        if name not in grams or getattr(grams[name], "gram", None) is None:
            raise ValueError(f"No input Gram matrix for layer '{name}'; collect calibration statistics first.")
        gram = grams[name].gram
        f = whitened_svd(kernel, gram, param_budget=probe_fraction)
        spectra[name] = (kernel.shape, f.info["singular_values"])
        probes[name] = f.reconstruct()
        errors[name] = output_error(kernel, probes[name], gram)
    if sensitivity_batches is not None:
        sensitivity = measure_sensitivity(model, probes, sensitivity_batches, errors, output=output)
    else:
        sensitivity = {name: 1.0 for name in names}
    layers = [LayerSpectrum(name, shape[0], shape[1], s, sensitivity[name]) for name, (shape, s) in spectra.items()]
    return allocate_ranks(layers, budget), sensitivity
