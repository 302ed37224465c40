"""Policy specs: which reparameterization a layer gets and how it is initialised.

A spec turns a trained kernel W (in, out) into a `Factorization` whose factors
load into its family's layer (`factorize`), or gives the constructor
arguments of a fresh layer (`layer_config`, `make_layer`). Each spec class
registers its family (`tfreparam.families`), so `spec.family.name` is e.g.
"low_rank". Specs are small frozen dataclasses, so policies are plain data
that can be printed, compared and reused.

Sizes are worked out once, in `_config(shape)`, and used by both paths; a
size chosen from the trained weights (`energy`, `eps`) needs `factorize`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional, Sequence

import numpy as np
import tf_keras as keras

from tfreparam.decompose.block_term import BLOCK_TERM, block_term
from tfreparam.decompose.budget import budget_count
from tfreparam.decompose.correction import corrected_kernel
from tfreparam.decompose.cp import CP as CP_FORM, cp_als
from tfreparam.decompose.factorization import Factorization
from tfreparam.decompose.kronecker import KRONECKER, nearest_kronecker
from tfreparam.decompose.lora import LORA, lora
from tfreparam.decompose.svd import LOW_RANK, fisher_svd, svd, whitened_svd
from tfreparam.decompose.tensor_train import TENSOR_TRAIN, tt_svd
from tfreparam.decompose.tucker import TUCKER, tucker
from tfreparam.decompose.validation import balanced_factors
from tfreparam.families import Family, register_family
from tfreparam.layers.cp import CPDense
from tfreparam.layers.kronecker import KroneckerDense
from tfreparam.layers.lora import LoRADense
from tfreparam.layers.low_rank import LowRankDense
from tfreparam.layers.tensor_train import TTDense
from tfreparam.layers.tucker import BlockTermDense, TuckerDense


class Spec:
    """Base of all specs. `needs` names the calibration statistics it uses; `family` is set on registration."""

    needs: Optional[str] = None  # None | "gram" | "fisher"
    family: ClassVar[Optional[Family]] = None

    def factorize(self, kernel: np.ndarray, stats=None) -> Factorization:
        """Factors of a trained kernel (in, out), for `reparameterize`."""
        raise NotImplementedError

    def layer_config(self, in_features: int, units: int) -> dict:
        """Constructor arguments (besides `units` and the Dense ones) of a fresh layer of this shape."""
        raise NotImplementedError

    def make_layer(self, in_features: int, units: int, **dense_kwargs):
        """A freshly initialised layer of this spec's family, for building models from scratch."""
        return self.family.layer_class(units, **self.layer_config(in_features, units), **dense_kwargs)

    def replacement(self, factorization: Factorization, units: int, **dense_kwargs):
        """An unbuilt layer shaped for `factorization`, to stand in for a trained projection."""
        return self.family.layer_class(units, **factorization.layer_config, **dense_kwargs)

    def load(self, layer, factorization: Factorization, bias) -> None:
        """Puts the factors (and the original bias, if any) into the built `layer`."""
        layer.set_factors(factorization.factors)
        if bias is not None:
            layer.bias.assign(bias)


def _modes(spec, shape, count: int = 2):
    """The spec's input/output factors, or the most balanced `count`-way splits."""
    ins = tuple(spec.input_factors or balanced_factors(shape[0], count))
    outs = tuple(spec.output_factors or balanced_factors(shape[1], count))
    return ins, outs


def _budget(spec, shape) -> int:
    return budget_count(spec.param_budget, shape[0] * shape[1])


def _needs_weights(spec, field):
    raise ValueError(
        f"{type(spec).__name__}({field}=...) chooses its size from trained weights; to build a "
        "layer from scratch give an explicit size or a param_budget."
    )


def _exactly_one(spec, names):
    given = [name for name in names if getattr(spec, name) is not None]
    if len(given) != 1:
        raise ValueError(
            f"{type(spec).__name__} needs exactly one of {', '.join(names)}; got "
            f"{', '.join(f'{n}={getattr(spec, n)!r}' for n in given) if given else 'none'}."
        )


def _shape(kernel) -> tuple[int, int]:
    return int(kernel.shape[0]), int(kernel.shape[1])


@dataclasses.dataclass(frozen=True)
class Keep(Spec):
    """Leave the layer as it is (useful to exempt layers from a broad pattern)."""


@register_family(LowRankDense)
@dataclasses.dataclass(frozen=True)
class LowRank(Spec):
    """`LowRankDense` by truncated SVD ("svd"), activation-aware SVD ("whitened",
    needs calibration data) or Fisher-weighted SVD ("fisher", needs labelled
    calibration data and a loss). Rank from `rank`, kept `energy`, or
    `param_budget` (a fraction of in·out, or a parameter count)."""

    rank: Optional[int] = None
    energy: Optional[float] = None
    param_budget: Optional[float] = None
    method: str = "svd"

    _METHODS: ClassVar[dict] = {"svd": None, "whitened": "gram", "fisher": "fisher"}

    def __post_init__(self):
        if self.method not in self._METHODS:
            raise ValueError(f"LowRank method must be one of {sorted(self._METHODS)}, got {self.method!r}.")
        _exactly_one(self, ("rank", "energy", "param_budget"))

    @property
    def needs(self):
        return self._METHODS[self.method]

    def _config(self, shape):
        """{"rank": r}, or {} when `energy` picks the rank from the spectrum."""
        if self.energy is not None:
            return {}
        rank = self.rank
        if self.param_budget is not None:
            rank = LOW_RANK.size_for_budget(shape, _budget(self, shape))
        return LOW_RANK.config(shape, rank=rank)

    def layer_config(self, in_features, units):
        if self.energy is not None:
            _needs_weights(self, "energy")
        return self._config((in_features, units))

    def factorize(self, kernel, stats=None):
        selection = self._config(_shape(kernel)) or {"energy": self.energy}
        if self.method == "svd":
            return svd(kernel, **selection)
        if self.method == "whitened":
            if getattr(stats, "cross", None) is not None:
                kernel = corrected_kernel(kernel, stats.gram, stats.cross)
            return whitened_svd(kernel, stats.gram, **selection)
        return fisher_svd(kernel, stats.row_importance, **selection)


@register_family(KroneckerDense)
@dataclasses.dataclass(frozen=True)
class Kronecker(Spec):
    """`KroneckerDense` by the nearest Kronecker product (Van Loan–Pitsianis).
    Factors default to the most balanced split; `num_terms` (default 1) or `param_budget`."""

    input_factors: Optional[Sequence[int]] = None
    output_factors: Optional[Sequence[int]] = None
    num_terms: Optional[int] = None
    param_budget: Optional[float] = None

    def __post_init__(self):
        if self.num_terms is not None and self.param_budget is not None:
            raise ValueError("Kronecker takes num_terms or param_budget, not both.")

    def _config(self, shape):
        ins, outs = _modes(self, shape)
        terms = self.num_terms or 1
        if self.param_budget is not None:
            terms = KRONECKER.size_for_budget(shape, _budget(self, shape), input_factors=ins, output_factors=outs)
        return KRONECKER.config(shape, input_factors=ins, output_factors=outs, num_terms=terms)

    def layer_config(self, in_features, units):
        return self._config((in_features, units))

    def factorize(self, kernel, stats=None):
        return nearest_kronecker(kernel, **self._config(_shape(kernel)))


@register_family(TTDense)
@dataclasses.dataclass(frozen=True)
class TensorTrain(Spec):
    """`TTDense` by TT-SVD. Factors default to balanced splits into `num_cores`;
    `ranks` (int or tuple), `eps` (relative error bound) or `param_budget`."""

    input_factors: Optional[Sequence[int]] = None
    output_factors: Optional[Sequence[int]] = None
    ranks: Optional[object] = None
    eps: Optional[float] = None
    param_budget: Optional[float] = None
    num_cores: int = 3

    def __post_init__(self):
        _exactly_one(self, ("ranks", "eps", "param_budget"))

    def _config(self, shape):
        """Factors and ranks; ranks stay None when `eps` picks them."""
        ins, outs = _modes(self, shape, count=self.num_cores)
        if self.eps is not None:
            return {"input_factors": ins, "output_factors": outs, "ranks": None}
        ranks = self.ranks
        if self.param_budget is not None:
            ranks = TENSOR_TRAIN.size_for_budget(shape, _budget(self, shape), input_factors=ins, output_factors=outs)
        return TENSOR_TRAIN.config(shape, input_factors=ins, output_factors=outs, ranks=ranks)

    def layer_config(self, in_features, units):
        if self.eps is not None:
            _needs_weights(self, "eps")
        return self._config((in_features, units))

    def factorize(self, kernel, stats=None):
        return tt_svd(kernel, **self._config(_shape(kernel)), eps=self.eps)


@register_family(TuckerDense)
@dataclasses.dataclass(frozen=True)
class Tucker(Spec):
    """`TuckerDense` by HOSVD (+ `n_iter` HOOI sweeps); `ranks` or `param_budget`."""

    input_factors: Optional[Sequence[int]] = None
    output_factors: Optional[Sequence[int]] = None
    ranks: Optional[object] = None
    param_budget: Optional[float] = None
    n_iter: int = 0

    def __post_init__(self):
        _exactly_one(self, ("ranks", "param_budget"))

    def _config(self, shape):
        ins, outs = _modes(self, shape)
        ranks = self.ranks
        if self.param_budget is not None:
            ranks = TUCKER.size_for_budget(shape, _budget(self, shape), input_factors=ins, output_factors=outs)
        return TUCKER.config(shape, input_factors=ins, output_factors=outs, ranks=ranks)

    def layer_config(self, in_features, units):
        return self._config((in_features, units))

    def factorize(self, kernel, stats=None):
        return tucker(kernel, **self._config(_shape(kernel)), n_iter=self.n_iter)


@register_family(CPDense)
@dataclasses.dataclass(frozen=True)
class CP(Spec):
    """`CPDense` by CP-ALS; `rank` or `param_budget`."""

    input_factors: Optional[Sequence[int]] = None
    output_factors: Optional[Sequence[int]] = None
    rank: Optional[int] = None
    param_budget: Optional[float] = None
    n_iter: int = 200
    seed: int = 0

    def __post_init__(self):
        _exactly_one(self, ("rank", "param_budget"))

    def _config(self, shape):
        ins, outs = _modes(self, shape)
        rank = self.rank
        if self.param_budget is not None:
            rank = CP_FORM.size_for_budget(shape, _budget(self, shape), input_factors=ins, output_factors=outs)
        return CP_FORM.config(shape, input_factors=ins, output_factors=outs, rank=rank)

    def layer_config(self, in_features, units):
        return self._config((in_features, units))

    def factorize(self, kernel, stats=None):
        return cp_als(kernel, **self._config(_shape(kernel)), n_iter=self.n_iter, seed=self.seed)


@register_family(BlockTermDense)
@dataclasses.dataclass(frozen=True)
class BlockTerm(Spec):
    """`BlockTermDense` (a sum of Tucker blocks of `ranks`) by deflation + back-fitting
    (`n_iter` sweeps); `num_blocks`, or `param_budget` for the most blocks that fit."""

    ranks: object = None
    input_factors: Optional[Sequence[int]] = None
    output_factors: Optional[Sequence[int]] = None
    num_blocks: Optional[int] = None
    param_budget: Optional[float] = None
    n_iter: int = 10

    def __post_init__(self):
        if self.ranks is None:
            raise ValueError("BlockTerm needs ranks (an int for every mode, or one rank per mode).")
        _exactly_one(self, ("num_blocks", "param_budget"))

    def _config(self, shape):
        ins, outs = _modes(self, shape)
        blocks = self.num_blocks
        if self.param_budget is not None:
            blocks = BLOCK_TERM.size_for_budget(
                shape, _budget(self, shape), input_factors=ins, output_factors=outs, ranks=self.ranks)
        return BLOCK_TERM.config(shape, input_factors=ins, output_factors=outs, ranks=self.ranks, num_blocks=blocks)

    def layer_config(self, in_features, units):
        return self._config((in_features, units))

    def factorize(self, kernel, stats=None):
        return block_term(kernel, **self._config(_shape(kernel)), n_iter=self.n_iter)


@register_family(LoRADense, quantize_config="LoRAQuantizeConfig")
@dataclasses.dataclass(frozen=True)
class LoRA(Spec):
    """Inject a `LoRADense` adapter around the layer (PEFT's `get_peft_model`, Keras 3's
    `enable_lora`): the trained kernel and bias are copied into a frozen base `Dense`, A is
    drawn with `seed`, B starts at zero, so the model's outputs are unchanged until training.
    Not a compression: `rank`, `alpha` (default `rank`: scaling 1) and adapter `dropout`."""

    rank: int = None
    alpha: Optional[float] = None
    dropout: float = 0.0
    seed: int = 0

    def __post_init__(self):
        LORA.resolve(None, rank=self.rank, alpha=self.alpha, dropout=self.dropout)

    def layer_config(self, in_features, units):
        return LORA.config((in_features, units), rank=self.rank, alpha=self.alpha, dropout=self.dropout)

    def factorize(self, kernel, stats=None):
        return lora(kernel, rank=self.rank, alpha=self.alpha, dropout=self.dropout, seed=self.seed)

    def make_layer(self, in_features, units, **dense_kwargs):
        return self._wrap(units, self.layer_config(in_features, units), **dense_kwargs)

    def replacement(self, factorization, units, **dense_kwargs):
        return self._wrap(units, factorization.layer_config, **dense_kwargs)

    def load(self, layer, factorization, bias):
        layer.base_layer.kernel.assign(factorization.factors["base"])
        if bias is not None:
            layer.base_layer.bias.assign(bias)
        layer.set_factors({name: factorization.factors[name] for name in ("lora_a", "lora_b")})

    @staticmethod
    def _wrap(units, config, name=None, dtype=None, **dense_kwargs):
        base = keras.layers.Dense(units, name="base", dtype=dtype, **dense_kwargs)
        wrapper = {"name": name} if name is not None else {}
        return LoRADense(base, **config, dtype=dtype, **wrapper)


# The built-in specs, one per registered family.
SPECS = (LowRank, Kronecker, TensorTrain, Tucker, CP, BlockTerm, LoRA)
