"""`tfreparam.report`: a per-layer table of what compression did to a model (module `compression_report`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional

import numpy as np
import tf_keras as keras

from tfreparam.layers.base import ReparameterizedDense
from tfreparam.layers.lora import LoRADense
from tfreparam.projections import projection


@dataclasses.dataclass(frozen=True)
class LayerRow:
    name: str
    type: str
    shape: tuple[int, int]
    structure: str
    params_before: int
    params_after: int
    flops_before: int  # per input row
    flops_after: int
    relative_error: Optional[float] = None
    output_error: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class CompressionReport:
    rows: tuple[LayerRow, ...]
    total_params_before: Optional[int]  # whole model; None when only one model is known
    total_params_after: int

    @property
    def params_before(self) -> int:
        return sum(row.params_before for row in self.rows)

    @property
    def params_after(self) -> int:
        return sum(row.params_after for row in self.rows)

    @property
    def flops_before(self) -> int:
        return sum(row.flops_before for row in self.rows)

    @property
    def flops_after(self) -> int:
        return sum(row.flops_after for row in self.rows)

    def to_dict(self) -> dict:
        return {
            "layers": [dataclasses.asdict(row) for row in self.rows],
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "total_params_before": self.total_params_before,
            "total_params_after": self.total_params_after,
        }

    def _table(self):
        header = ["layer", "type", "shape", "structure", "params", "FLOPs/row", "rel. error", "output error"]
        body = []
        for r in self.rows:
            body.append([
                r.name, r.type, f"{r.shape[0]}x{r.shape[1]}", r.structure,
                f"{r.params_before:,} -> {r.params_after:,}",
                f"{r.flops_before:,} -> {r.flops_after:,}",
                _fmt(r.relative_error), _fmt(r.output_error),
            ])
        ratio = self.params_after / self.params_before if self.params_before else math.nan
        body.append([
            "total", "", "", f"{ratio:.1%} of params",
            f"{self.params_before:,} -> {self.params_after:,}",
            f"{self.flops_before:,} -> {self.flops_after:,}", "", "",
        ])
        return header, body

    def to_markdown(self) -> str:
        header, body = self._table()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)

    def __str__(self) -> str:
        header, body = self._table()
        widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
        fmt = lambda row: "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        lines = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in body]
        if self.total_params_before is not None:
            lines.append(f"model parameters: {self.total_params_before:,} -> {self.total_params_after:,}")
        else:
            lines.append(f"model parameters: {self.total_params_after:,}")
        return "\n".join(lines)


def _fmt(value):
    return "" if value is None else f"{value:.4f}"


def _structure(layer) -> str:
    config = layer.get_config()
    if isinstance(layer, LoRADense):
        return f"lora rank={layer.rank}"
    keys = ["rank", "ranks", "num_terms", "num_blocks", "input_factors", "output_factors"]
    parts = [f"{k}={tuple(config[k]) if isinstance(config[k], list) else config[k]}" for k in keys if config.get(k) is not None]
    return ", ".join(parts)


def _row(layer, original=None, factorization=None) -> Optional[LayerRow]:
    if isinstance(layer, ReparameterizedDense):
        shape = (layer.in_features, layer.units)
        before, after = layer.dense_num_params, layer.num_params
        flops_before, flops_after = layer.dense_flops(), layer.flops()
        structure = _structure(layer)
    elif projection(layer) is not None:
        kernel, bias = projection(layer)
        shape = tuple(int(d) for d in kernel.shape)
        before = after = layer.count_params()
        flops_before = flops_after = 2 * shape[0] * shape[1] + (shape[1] if bias is not None else 0)
        structure = "dense"
    else:
        return None
    relative = output = None
    if factorization is not None:
        relative, output = factorization.relative_error, factorization.output_error
    if original is not None and isinstance(layer, ReparameterizedDense):
        reference = projection(original)
        if reference is not None:
            # Against the original model's kernel, whatever was decomposed in between.
            kernel = reference[0].numpy().astype(np.float64)
            delta = kernel - layer.dense_kernel().numpy().astype(np.float64)
            relative = float(np.linalg.norm(delta) / max(np.linalg.norm(kernel), 1e-30))
    return LayerRow(layer.name, type(layer).__name__, shape, structure, before, after,
                    flops_before, flops_after, relative, output)


def report(model_or_pair, factorizations: Optional[Mapping] = None) -> CompressionReport:
    """Per-layer report of a reparameterized model, or of an (original, compressed) pair.

    Lists every projection (Dense / plain EinsumDense / reparameterized layer)
    with parameters and FLOPs before -> after, and the relative weight error:
    measured against the original model's kernels when a pair is given, else
    the decomposition's own from `factorizations` ({layer name:
    `Factorization`}, as `reparameterize(..., return_factorizations=True)`
    returns them). The output error (on calibration data) is the
    decomposition's, when a data-aware method was used.
    """
    if isinstance(model_or_pair, (tuple, list)):
        original, model = model_or_pair
    else:
        original, model = None, model_or_pair
    if not isinstance(model, keras.Model):
        raise ValueError(f"report() takes a keras.Model or (original, compressed); got {type(model).__name__}.")
    factorizations = dict(factorizations or {})
    rows = []
    for layer in model.layers:
        source = None
        if original is not None:
            try:
                source = original.get_layer(layer.name)
            except ValueError:
                source = None
        row = _row(layer, source, factorizations.get(layer.name))
        if row is not None:
            rows.append(row)
    total_before = original.count_params() if original is not None else None
    return CompressionReport(tuple(rows), total_before, model.count_params())
