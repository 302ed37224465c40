"""The registry of layer types that every cross-cutting test iterates over.

Each `LayerCase` knows how to build its layer for a given (in, units) shape,
how to draw random valid configurations for property tests, and how to
rebuild the kernel from the layer's factors with plain numpy, independently
of the layer's own `dense_kernel()`. Later test matrices (pruning, QAT,
export, distribution) parametrise over `LAYER_CASES`, so registering a layer
here enrolls it in all of them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable

import numpy as np
import pytest
import tf_keras as keras
from hypothesis import strategies as st

import tfreparam as tr


@dataclasses.dataclass(frozen=True)
class LayerCase:
    name: str
    # make(in_features, units, dtype=None, **overrides) -> unbuilt layer
    make: Callable[..., keras.layers.Layer]
    # draw(hypothesis_draw) -> (in_features, units, constructor kwargs)
    draw_config: Callable
    # build(in, units, kwargs, dtype) -> layer, for drawn configs
    build: Callable[..., keras.layers.Layer]
    # reference_kernel(layer) -> (in, units) numpy array from its factors
    reference_kernel: Callable[[keras.layers.Layer], np.ndarray]
    # make_wide(dtype=None) -> unbuilt layer at 768 -> 768, for size checks
    make_wide: Callable[..., keras.layers.Layer]


def _factors(layer):
    return {name: value.astype(np.float64) for name, value in layer.get_factors().items()}


# -- independent numpy references ----------------------------------------------


def _low_rank_reference(layer):
    f = _factors(layer)
    return f["u"] @ f["v"]


def _kronecker_reference(layer):
    f = _factors(layer)
    return sum(np.kron(a, b) for a, b in zip(f["a"], f["b"]))


def _tt_reference(layer):
    """Entry by entry: W[i, o] = product of the cores' (i_k, o_k) slices."""
    f = _factors(layer)
    ins, outs = layer.input_factors, layer.output_factors
    kernel = np.zeros((math.prod(ins), math.prod(outs)))
    for row, i_multi in enumerate(itertools.product(*map(range, ins))):
        for col, o_multi in enumerate(itertools.product(*map(range, outs))):
            product = np.eye(1)
            for k, (i, o) in enumerate(zip(i_multi, o_multi)):
                product = product @ f[f"core_{k}"][:, i, o, :]
            kernel[row, col] = product[0, 0]
    return kernel


def _mode_product_tensor(core, matrices):
    """core ×_1 U_1 ×_2 U_2 ... with U_j (n_j, R_j), by moving each mode into place."""
    tensor = core
    for j, matrix in enumerate(matrices):
        tensor = np.moveaxis(np.tensordot(matrix, tensor, axes=([1], [j])), 0, j)
    return tensor


def _tucker_reference(layer):
    f = _factors(layer)
    m = len(layer.mode_sizes)
    tensor = _mode_product_tensor(f["core"], [f[f"factor_{j}"] for j in range(m)])
    return tensor.reshape(layer.in_features, layer.units)


def _block_term_reference(layer):
    f = _factors(layer)
    m = len(layer.mode_sizes)
    tensor = sum(
        _mode_product_tensor(f["core"][b], [f[f"factor_{j}"][b] for j in range(m)])
        for b in range(layer.num_blocks)
    )
    return tensor.reshape(layer.in_features, layer.units)


def _cp_reference(layer):
    f = _factors(layer)
    m = len(layer.mode_sizes)
    tensor = 0
    for r in range(layer.rank):
        outer = f["factor_0"][:, r]
        for j in range(1, m):
            outer = np.multiply.outer(outer, f[f"factor_{j}"][:, r])
        tensor = tensor + outer
    return np.asarray(tensor).reshape(layer.in_features, layer.units)


def _lora_reference(layer):
    base = layer.base_layer
    if isinstance(base, tr.ReparameterizedDense):
        base_kernel = REFERENCE_BY_TYPE[type(base)](base)
    else:
        base_kernel = base.kernel.numpy().astype(np.float64)
    f = _factors(layer)
    return base_kernel + layer.alpha / layer.rank * f["lora_a"] @ f["lora_b"]


# -- hypothesis strategies for valid configurations ----------------------------

_small = st.integers(1, 4)


@st.composite
def _draw_low_rank(draw):
    n_in, units = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    return n_in, units, {"rank": draw(st.integers(1, min(n_in, units)))}


@st.composite
def _draw_kronecker(draw):
    ins, outs = (draw(_small), draw(_small)), (draw(_small), draw(_small))
    # At most the rank of the rearranged kernel, min(in1*out1, in2*out2).
    terms = draw(st.integers(1, min(3, ins[0] * outs[0], ins[1] * outs[1])))
    kwargs = {"input_factors": ins, "output_factors": outs, "num_terms": terms}
    return math.prod(ins), math.prod(outs), kwargs


@st.composite
def _draw_tt(draw):
    d = draw(st.integers(2, 3))
    ins = tuple(draw(_small) for _ in range(d))
    outs = tuple(draw(_small) for _ in range(d))
    return math.prod(ins), math.prod(outs), {"input_factors": ins, "output_factors": outs, "ranks": draw(st.integers(1, 4))}


@st.composite
def _draw_modes(draw):
    ins = tuple(draw(_small) for _ in range(draw(st.integers(1, 2))))
    outs = tuple(draw(_small) for _ in range(draw(st.integers(1, 2))))
    return ins, outs


@st.composite
def _draw_tucker(draw):
    ins, outs = draw(_draw_modes())
    ranks = tuple(draw(st.integers(1, n)) for n in ins + outs)
    return math.prod(ins), math.prod(outs), {"input_factors": ins, "output_factors": outs, "ranks": ranks}


def _most_blocks(modes, ranks):
    """Blocks of `ranks` that write any tensor of `modes` exactly: slabs of every mode but the best one."""
    slabs = [-(-n // r) for n, r in zip(modes, ranks)]
    options = [math.prod(slabs)] + [
        math.prod(slabs[:j] + slabs[j + 1:]) for j in range(len(modes))
        if ranks[j] >= min(modes[j], math.prod(ranks[:j] + ranks[j + 1:]))
    ]
    return min(options)


@st.composite
def _draw_block_term(draw):
    n_in, units, kwargs = draw(_draw_tucker())
    cap = _most_blocks(kwargs["input_factors"] + kwargs["output_factors"], kwargs["ranks"])
    return n_in, units, dict(kwargs, num_blocks=draw(st.integers(1, min(3, cap))))


@st.composite
def _draw_cp(draw):
    ins, outs = draw(_draw_modes())
    modes = ins + outs
    cap = math.prod(modes) // max(modes)  # every tensor of these modes has CP rank <= cap
    kwargs = {"input_factors": ins, "output_factors": outs, "rank": draw(st.integers(1, min(5, cap)))}
    return math.prod(ins), math.prod(outs), kwargs


def _draw_lora(base):
    @st.composite
    def draw_config(draw):
        n_in, units = draw(st.integers(1, 16)), draw(st.integers(1, 16))
        kwargs = {
            "rank": draw(st.integers(1, min(n_in, units))),
            "alpha": draw(st.sampled_from([None, 1.0, 16.0])),
            "base": base,
        }
        return n_in, units, kwargs

    return draw_config


def _build_lora(n_in, units, kwargs, dtype=None):
    kwargs = dict(kwargs)
    base_kind, activation = kwargs.pop("base"), kwargs.pop("activation", None)
    if base_kind == "dense":
        base = keras.layers.Dense(units, activation=activation, dtype=dtype)
    else:
        base_rank = min(n_in, units, 32)
        base = tr.LowRankDense(units, rank=base_rank, activation=activation, dtype=dtype)
    return tr.LoRADense(base, dtype=dtype, **kwargs)


def _plain(cls):
    def build(n_in, units, kwargs, dtype=None):
        return cls(units, dtype=dtype, **kwargs)

    return build


# -- default shapes for the cross-cutting matrix --------------------------------
# in = 24 = 2·3·4, units = 12 = 3·2·2; big enough to exercise every code path,
# small enough that a full matrix of checks stays fast on two CPU cores.
MATRIX_IN, MATRIX_UNITS = 24, 12

_DEFAULTS = {
    "low_rank": {"rank": 4},
    "kronecker": {"input_factors": (4, 6), "output_factors": (3, 4), "num_terms": 2},
    "tensor_train": {"input_factors": (2, 3, 4), "output_factors": (3, 2, 2), "ranks": 3},
    "tucker": {"input_factors": (4, 6), "output_factors": (3, 4), "ranks": (3, 4, 2, 3)},
    "cp": {"input_factors": (4, 6), "output_factors": (3, 4), "rank": 5},
    "block_term": {"input_factors": (4, 6), "output_factors": (3, 4), "ranks": 2, "num_blocks": 3},
    "lora_dense": {"rank": 3, "alpha": 6.0, "base": "dense"},
    "lora_low_rank": {"rank": 3, "alpha": 6.0, "base": "low_rank"},
}


# Configs at a BERT-like width (768 -> 768), where a converter that
# constant-folds the factors back into W would show up in the file size.
WIDE = 768
_WIDE_CONFIGS = {
    "low_rank": {"rank": 32},
    "kronecker": {"input_factors": (24, 32), "output_factors": (24, 32), "num_terms": 4},
    "tensor_train": {"input_factors": (8, 8, 12), "output_factors": (8, 8, 12), "ranks": 8},
    "tucker": {"input_factors": (24, 32), "output_factors": (24, 32), "ranks": 8},
    "cp": {"input_factors": (24, 32), "output_factors": (24, 32), "rank": 32},
    "block_term": {"input_factors": (24, 32), "output_factors": (24, 32), "ranks": 4, "num_blocks": 4},
    "lora_dense": {"rank": 4, "base": "dense"},
    "lora_low_rank": {"rank": 4, "base": "low_rank"},
}


def _case(name, draw_config, build, reference):
    def make(n_in=MATRIX_IN, units=MATRIX_UNITS, dtype=None, **overrides):
        return build(n_in, units, dict(_DEFAULTS[name], **overrides), dtype=dtype)

    def make_wide(dtype=None, **overrides):
        return build(WIDE, WIDE, dict(_WIDE_CONFIGS[name], **overrides), dtype=dtype)

    return LayerCase(name, make, draw_config, build, reference, make_wide)


REFERENCE_BY_TYPE = {
    tr.LowRankDense: _low_rank_reference,
    tr.KroneckerDense: _kronecker_reference,
    tr.TTDense: _tt_reference,
    tr.TuckerDense: _tucker_reference,
    tr.BlockTermDense: _block_term_reference,
    tr.CPDense: _cp_reference,
}

LAYER_CASES = [
    _case("low_rank", _draw_low_rank, _plain(tr.LowRankDense), _low_rank_reference),
    _case("kronecker", _draw_kronecker, _plain(tr.KroneckerDense), _kronecker_reference),
    _case("tensor_train", _draw_tt, _plain(tr.TTDense), _tt_reference),
    _case("tucker", _draw_tucker, _plain(tr.TuckerDense), _tucker_reference),
    _case("cp", _draw_cp, _plain(tr.CPDense), _cp_reference),
    _case("block_term", _draw_block_term, _plain(tr.BlockTermDense), _block_term_reference),
    _case("lora_dense", _draw_lora("dense"), _build_lora, _lora_reference),
    _case("lora_low_rank", _draw_lora("low_rank"), _build_lora, _lora_reference),
]


def layer_params():
    """`pytest.param`s of every registered layer case, with readable ids."""
    return [pytest.param(case, id=case.name) for case in LAYER_CASES]


def randomize_lora(layer, seed=0):
    """LoRA's B starts at zero; give it values so the update path is tested."""
    if isinstance(layer, tr.LoRADense):
        rng = np.random.default_rng(seed)
        b = layer.factor_weights["lora_b"]
        b.assign(rng.normal(0, 0.3, size=b.shape).astype(b.dtype.as_numpy_dtype))
