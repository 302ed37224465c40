"""Model surgery: swap trained `Dense` layers for reparameterized ones, and back.

`reparameterize` clones a Functional or Sequential model, replacing the layers
a policy selects by the spec's layer type, initialised from the trained
kernel by the spec's decomposition. `fold` materialises every reparameterized
layer back into a plain `Dense`.
"""

from __future__ import annotations

import re
import weakref
from typing import Callable, Mapping, Union

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfreparam import calibration, layers as layers_lib
from tfreparam.specs import Keep, Spec

LAYER_CLASSES = {
    "low_rank": layers_lib.LowRankDense,
    "kronecker": layers_lib.KroneckerDense,
    "tensor_train": layers_lib.TTDense,
    "tucker": layers_lib.TuckerDense,
    "cp": layers_lib.CPDense,
}

Policy = Union[Spec, Mapping[str, Spec], Callable[[keras.layers.Layer], "Spec | None"]]

# Factorizations behind each reparameterized model, for `tfreparam.report`.
FACTORIZATIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


# -- which layers can be reparameterized ------------------------------------------


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


def _check_model(model):
    if isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False):
        return
    raise ValueError(
        f"Model surgery needs a Functional or Sequential model; {type(model).__name__} is a "
        "subclassed model, whose layers Keras cannot clone or rewire. Build it with the "
        "functional API, or use tfreparam layers directly inside your subclass."
    )


def _select(model, policy) -> dict[str, Spec]:
    """Layer name -> spec for every layer the policy reparameterizes."""
    candidates = [layer for layer in model.layers if projection(layer) is not None]
    chosen = {}
    if isinstance(policy, Spec):
        chosen = {layer.name: policy for layer in candidates}
    elif isinstance(policy, Mapping):
        for pattern, spec in policy.items():
            if not isinstance(spec, Spec):
                raise ValueError(
                    f"Policy entry {pattern!r} maps to {spec!r}, which is not a spec; use "
                    "tfreparam.LowRank, Kronecker, TensorTrain, Tucker, CP or Keep."
                )
            regex = re.compile(pattern)
            hits = [layer for layer in candidates if regex.fullmatch(layer.name)]
            if not hits:
                named = [f"{l.name} ({type(l).__name__})" for l in model.layers if regex.fullmatch(l.name)]
                if named:
                    raise ValueError(
                        f"Policy pattern {pattern!r} names {named}, but only Dense layers and "
                        "plain-projection EinsumDense layers can be reparameterized."
                    )
                raise ValueError(
                    f"Policy pattern {pattern!r} matches no layer (patterns must match the whole "
                    f"name). Projection layers: {[l.name for l in candidates]}."
                )
            for layer in hits:
                chosen.setdefault(layer.name, spec)  # first matching pattern wins
    elif callable(policy):
        for layer in candidates:
            spec = policy(layer)
            if spec is not None:
                if not isinstance(spec, Spec):
                    raise ValueError(f"The policy returned {spec!r} for '{layer.name}', not a spec.")
                chosen[layer.name] = spec
    else:
        raise ValueError(
            "policy must be a spec (e.g. tfreparam.LowRank(rank=64)), a dict of layer-name "
            f"regex -> spec, or a callable(layer) -> spec; got {type(policy).__name__}."
        )
    return {name: spec for name, spec in chosen.items() if not isinstance(spec, Keep)}


# -- reparameterize ------------------------------------------------------------


def reparameterize(model: keras.Model, policy: Policy, calibration_data=None, loss_fn=None,
                   objective=None, statistics=None, sequential: bool = False) -> keras.Model:
    """A copy of `model` whose selected projections are reparameterized.

    Args:
      model: a Functional or Sequential tf_keras model.
      policy: a spec for every projection, a dict of layer-name regex (full
        match, first wins) -> spec, or a callable(layer) -> spec or None.
      calibration_data: batches of model inputs (or (x, y) for "fisher"),
        a `tf.data.Dataset` or arrays; needed by data-aware specs.
      loss_fn: loss for Fisher statistics (default: the compiled loss).
      objective: callable(model, x) -> loss, for Fisher statistics on
        unlabelled data (instead of loss_fn).
      statistics: per-layer `calibration.LayerStats` already collected (e.g.
        by `calibration.input_grams`), used instead of a pass over the data.
      sequential: refit the whitened (`needs == "gram"`) layers one group at a
        time, in graph order, on the inputs they get in the *already
        compressed* model, re-targeted at the original layer's outputs (see
        `calibration.paired_grams`), so each layer compensates the error of
        the layers before it. Ranks stay those of the first (one-shot) pass.
        Costs one calibration pass per group of layers sharing an input.

    Layers the policy does not select are copied with their weights.
    """
    _check_model(model)
    plan = _select(model, policy)
    by_name = {layer.name: layer for layer in model.layers}
    stats = statistics if statistics is not None else _statistics(
        model, plan, by_name, calibration_data, loss_fn, objective)

    factorizations = {}
    for name, spec in plan.items():
        kernel, _ = projection(by_name[name])
        try:
            factorizations[name] = spec.factorize(kernel.numpy().astype(np.float64), stats.get(name))
        except ValueError as error:
            raise ValueError(f"Cannot reparameterize layer '{name}' with {spec}: {error}") from error

    def clone(layer):
        if layer.name not in factorizations:
            return layer.__class__.from_config(layer.get_config())
        return _replacement(layer, factorizations[layer.name])

    new_model = keras.models.clone_model(model, clone_function=clone)
    for layer in new_model.layers:
        old = by_name[layer.name]
        if layer.name in factorizations:
            layer.set_factors(factorizations[layer.name].factors)
            _, bias = projection(old)
            if bias is not None:
                layer.bias.assign(bias)
        else:
            layer.set_weights(old.get_weights())
    if sequential:
        if calibration_data is None:
            raise ValueError("sequential=True refits layers on the compressed model's activations: pass calibration_data.")
        _refit_sequentially(model, new_model, plan, factorizations, calibration_data)
    FACTORIZATIONS[new_model] = factorizations
    return new_model


def _input_groups(model, names) -> list[list[str]]:
    """`names` in graph order, grouped by the tensor they read (e.g. q, k, v of one block)."""
    groups, keys = [], []
    for layer in model.layers:
        if layer.name not in names:
            continue
        key = id(calibration._layer_input(layer))
        if keys and keys[-1] == key:
            groups[-1].append(layer.name)
        else:
            groups.append([layer.name])
            keys.append(key)
    return groups


def _refit_sequentially(original, compressed, plan, factorizations, data):
    import dataclasses

    names = {name for name, spec in plan.items() if spec.needs == "gram"}
    for group in _input_groups(original, names):
        stats = calibration.paired_grams(original, compressed, group, data)
        for name in group:
            spec, first = plan[name], factorizations[name]
            fixed = dataclasses.replace(spec, rank=first.layer_kwargs["rank"], energy=None, param_budget=None)
            kernel, _ = projection(original.get_layer(name))
            try:
                refit = fixed.factorize(kernel.numpy().astype(np.float64), stats[name])
            except ValueError as error:
                raise ValueError(f"Cannot refit layer '{name}' sequentially with {spec}: {error}") from error
            compressed.get_layer(name).set_factors(refit.factors)
            factorizations[name] = refit


def _replacement(layer, factorization):
    kernel, bias = projection(layer)
    cls = LAYER_CLASSES[factorization.layer]
    return cls(
        int(kernel.shape[1]),
        activation=layer.activation,
        use_bias=bias is not None,
        name=layer.name,
        dtype=layer.dtype_policy,
        **factorization.layer_kwargs,
    )


def _statistics(model, plan, by_name, data, loss_fn, objective):
    needs = {spec.needs for spec in plan.values()} - {None}
    if not needs:
        return {}
    if data is None:
        users = [name for name, spec in plan.items() if spec.needs]
        raise ValueError(
            f"Layers {users} use data-aware decompositions; pass calibration_data "
            "(a few hundred representative inputs)."
        )
    stats = {}
    if "gram" in needs:
        targets = [by_name[n] for n, s in plan.items() if s.needs == "gram"]
        stats.update(calibration.input_grams(model, targets, data))
    if "fisher" in needs:
        targets = [by_name[n] for n, s in plan.items() if s.needs == "fisher"]
        kernels = {layer.name: projection(layer)[0] for layer in targets}
        stats.update(calibration.fisher_row_importance(model, targets, kernels, data, loss_fn, objective))
    return stats


# -- fold ------------------------------------------------------------------------


def fold(model: keras.Model) -> keras.Model:
    """A copy of `model` with every reparameterized layer materialised as a `Dense`."""
    _check_model(model)
    folded = {}
    for layer in model.layers:
        if isinstance(layer, layers_lib.ReparameterizedDense):
            # Keep the layer's own name so the graph and later policies still match.
            folded[layer.name] = layer.to_dense()

    def clone(layer):
        if layer.name in folded:
            dense = folded[layer.name]
            return dense.__class__.from_config(dense.get_config())
        return layer.__class__.from_config(layer.get_config())

    new_model = keras.models.clone_model(model, clone_function=clone)
    for layer in new_model.layers:
        source = folded.get(layer.name) or model.get_layer(layer.name)
        layer.set_weights(source.get_weights())
    return new_model
