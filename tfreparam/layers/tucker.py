"""`TuckerDense` and `BlockTermDense`: kernels in Tucker / block-term form."""

from __future__ import annotations

import math

import tensorflow as tf
import tf_keras as keras

from tfreparam.decompose.block_term import BLOCK_TERM
from tfreparam.decompose.tucker import TUCKER
from tfreparam.layers.contraction import Operand
from tfreparam.layers.tensorized import TensorizedDense, einsum_letters


@keras.utils.register_keras_serializable(package="tfreparam")
class BlockTermDense(TensorizedDense):
    """Kernel tensor = a sum of `num_blocks` Tucker blocks (block-term decomposition).

    Block b has a core (R_1..R_m) and factor matrices U_j^b: (n_j, R_j) for the
    m = d + e modes (in_1..in_d, out_1..out_e). Stored stacked over blocks:
    `core` (num_blocks, R_1..R_m) and `factor_j` (num_blocks, n_j, R_j).
    Tucker is the one-block case and CP the case of all ranks 1. `ranks` is an
    int (capped at each mode's size) or a tuple of m ranks; `num_blocks` is at
    most the number of such blocks that already writes every kernel exactly.
    """

    form = BLOCK_TERM

    def __init__(self, units, input_factors, output_factors, ranks, num_blocks=1, **kwargs):
        super().__init__(units, input_factors, output_factors, **kwargs)
        config = self._check_sizes(math.prod(self.input_factors), **self._size_arguments(ranks, num_blocks))
        self.ranks = config["ranks"]
        self.num_blocks = config.get("num_blocks", 1)

    def _size_arguments(self, ranks, num_blocks):
        return dict(input_factors=self.input_factors, output_factors=self.output_factors, ranks=ranks,
                    num_blocks=num_blocks)

    @property
    def _block_axis(self) -> tuple[int, ...]:
        return (self.num_blocks,)

    def _factor_specs(self):
        specs = {"core": self._block_axis + self.ranks}
        for j, (size, rank) in enumerate(zip(self.mode_sizes, self.ranks)):
            specs[f"factor_{j}"] = self._block_axis + (size, rank)
        return specs

    def _network(self):
        block = ("b",) if self._block_axis else ()
        rank_labels = tuple(f"t{j}" for j in range(len(self.ranks)))
        operands = [Operand(block + rank_labels, self._block_axis + self.ranks)]
        for mode, rank_label, size, rank in zip(
            self.mode_labels, rank_labels, self.mode_sizes, self.ranks
        ):
            operands.append(Operand(block + (mode, rank_label), self._block_axis + (size, rank)))
        return self.input_labels, self.input_factors, operands, self.output_labels

    def _init_terms(self):
        return self.num_blocks * math.prod(self.ranks), len(self.ranks) + 1

    def _kernel_from_factors(self, factors):
        m = len(self.ranks)
        ranks, modes = einsum_letters(2 * m + 1)[:m], einsum_letters(2 * m + 1)[m : 2 * m]
        block = einsum_letters(2 * m + 1)[-1] if self._block_axis else ""
        inputs = [block + ranks] + [block + modes[j] + ranks[j] for j in range(m)]
        equation = ",".join(inputs) + "->" + modes
        operands = [factors["core"]] + [factors[f"factor_{j}"] for j in range(m)]
        return self._tensor_to_kernel(tf.einsum(equation, *operands))

    def get_config(self):
        config = super().get_config()
        config.update(ranks=list(self.ranks), num_blocks=self.num_blocks)
        return config


@keras.utils.register_keras_serializable(package="tfreparam")
class TuckerDense(BlockTermDense):
    """Kernel tensor in Tucker form: core (R_1..R_m) ×_j U_j, U_j: (n_j, R_j).

    The modes are (in_1..in_d, out_1..out_e); the input is contracted with the
    input-mode factors, then the core, then the output-mode factors expand it,
    in the order with the fewest FLOPs.
    """

    form = TUCKER

    def __init__(self, units, input_factors, output_factors, ranks, **kwargs):
        kwargs.pop("num_blocks", None)
        super().__init__(units, input_factors, output_factors, ranks, num_blocks=1, **kwargs)

    def _size_arguments(self, ranks, num_blocks):
        return dict(input_factors=self.input_factors, output_factors=self.output_factors, ranks=ranks)

    @property
    def _block_axis(self):
        return ()

    def get_config(self):
        config = super().get_config()
        del config["num_blocks"]
        return config
