"""`TensorizedDense`: the base of layers that view the kernel as a higher-order tensor."""

from __future__ import annotations

import string

import tensorflow as tf

from tfreparam.decompose.validation import factors, int_tuple
from tfreparam.layers.base import ReparameterizedDense


class TensorizedDense(ReparameterizedDense):
    """A kernel (in, units) viewed as a tensor of modes (in_1..in_d, out_1..out_e).

    The views use row-major order: input feature i = ((i_1·in_2) + i_2)·in_3 + ...,
    i.e. `W.reshape(input_factors + output_factors)`. Subclasses choose how
    that tensor is factored.
    """

    def __init__(self, units, input_factors, output_factors, **kwargs):
        super().__init__(units, **kwargs)
        if input_factors is None or output_factors is None:
            raise ValueError(
                f"{type(self).__name__} needs input_factors and output_factors "
                "(e.g. tfreparam.layers.balanced_factors(size, num_factors))."
            )
        self.input_factors = int_tuple(input_factors, "input_factors")
        self.output_factors = factors(output_factors, self.units, "output_factors", "output")

    def _configure(self, in_features):
        factors(self.input_factors, in_features, "input_factors", "input")

    @property
    def mode_sizes(self) -> tuple[int, ...]:
        return self.input_factors + self.output_factors

    @property
    def input_labels(self) -> tuple[str, ...]:
        return tuple(f"i{j}" for j in range(len(self.input_factors)))

    @property
    def output_labels(self) -> tuple[str, ...]:
        return tuple(f"o{j}" for j in range(len(self.output_factors)))

    @property
    def mode_labels(self) -> tuple[str, ...]:
        return self.input_labels + self.output_labels

    def _tensor_to_kernel(self, tensor):
        return tf.reshape(tensor, (self.in_features, self.units))

    def get_config(self):
        config = super().get_config()
        config.update(
            input_factors=list(self.input_factors), output_factors=list(self.output_factors)
        )
        return config


def einsum_letters(count: int, skip: str = "") -> str:
    """`count` distinct einsum letters, avoiding those in `skip`."""
    letters = [c for c in string.ascii_letters if c not in skip]
    if count > len(letters):
        raise ValueError(f"Too many tensor modes ({count}) for one einsum.")
    return "".join(letters[:count])
