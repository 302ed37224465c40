"""Which layers are plain projections `x @ W (+ b)` that a spec can replace."""

from __future__ import annotations

import re

import tf_keras as keras


def projection(layer):
    """(kernel variable (in, out), bias variable or None) if `layer` is a plain projection, else None.

    A `Dense`, or an `EinsumDense` whose equation is `...i,io->...o` in any
    letters (2-D kernel, bias on the output axis only).
    """
    if type(layer) is keras.layers.Dense:
        return layer.kernel, layer.bias
    if isinstance(layer, keras.layers.EinsumDense) and _is_plain_projection(layer):
        return layer.kernel, layer.bias
    return None


def _is_plain_projection(layer) -> bool:
    match = re.fullmatch(r"\s*(\.\.\.)?(\w*),(\w\w)->(\.\.\.)?(\w*)\s*", layer.equation)
    if not match or bool(match.group(1)) != bool(match.group(4)):
        return False
    x, kernel, out = match.group(2), match.group(3), match.group(5)
    contracted, new = kernel
    if not x or x[-1] != contracted or out != x[:-1] + new or contracted in out:
        return False
    return layer.bias_axes in (None, "", new)
