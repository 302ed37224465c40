"""Model surgery: swap trained `Dense` layers for reparameterized ones, and back.

`reparameterize` clones a Functional or Sequential model, replacing the layers
a policy selects (`tfreparam.policy.LayerPolicy`) by their spec's family
layer, initialised from the trained kernel by the spec's decomposition.
`fold` materialises every reparameterized layer back into a plain `Dense`.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import tf_keras as keras

from tfreparam.calibration import fisher_row_importance, input_grams, layer_input, paired_grams
from tfreparam.layers.base import ReparameterizedDense
from tfreparam.policy import LayerPolicy, PolicyLike
from tfreparam.projections import projection

Policy = PolicyLike


def _check_model(model):
    if isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False):
        return
    raise ValueError(
        f"Model surgery needs a Functional or Sequential model; {type(model).__name__} is a "
        "subclassed model, whose layers Keras cannot clone or rewire. Build it with the "
        "functional API, or use tfreparam layers directly inside your subclass."
    )


def select(model: keras.Model, policy) -> dict:
    """Layer name -> spec for every projection of `model` the policy reparameterizes."""
    layer_policy = policy if isinstance(policy, LayerPolicy) else LayerPolicy(policy, argument="policy")
    plan = {}
    for layer in model.layers:
        if projection(layer) is None:
            continue
        spec = layer_policy.spec_for(layer)
        if spec is not None:
            plan[layer.name] = spec

    def also(pattern):
        named = [f"{l.name} ({type(l).__name__})" for l in model.layers if re.fullmatch(pattern, l.name)]
        if named:
            return (f"It names {', '.join(named)}, but only Dense layers and plain-projection EinsumDense "
                    "layers can be reparameterized.")
        return ""

    layer_policy.check_all_matched("projection layers", also=also)
    return plan


# -- reparameterize ------------------------------------------------------------


def reparameterize(model: keras.Model, policy: Policy, calibration_data=None, loss_fn=None,
                   objective=None, statistics=None, sequential: bool = False,
                   return_factorizations: bool = False):
    """A copy of `model` whose selected projections are reparameterized.

    Args:
      model: a Functional or Sequential tf_keras model.
      policy: a spec for every projection, a mapping of layer-name regex (full
        match, first wins; every pattern must match a projection) -> spec, or
        a callable(layer) -> spec or None (see `tfreparam.policy`).
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
      return_factorizations: also return {layer name: `Factorization`}, e.g.
        for `tfreparam.report((model, new), factorizations)`.

    Layers the policy does not select are copied with their weights.
    Returns the new model, or (new model, factorizations).
    """
    _check_model(model)
    plan = select(model, policy)
    if sequential and calibration_data is None:
        raise ValueError("sequential=True refits layers on the compressed model's activations: pass calibration_data.")
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
        kernel, bias = projection(layer)
        return plan[layer.name].replacement(
            factorizations[layer.name], int(kernel.shape[1]), activation=layer.activation,
            use_bias=bias is not None, name=layer.name, dtype=layer.dtype_policy)

    new_model = keras.models.clone_model(model, clone_function=clone)
    for layer in new_model.layers:
        old = by_name[layer.name]
        if layer.name in factorizations:
            plan[layer.name].load(layer, factorizations[layer.name], projection(old)[1])
        else:
            layer.set_weights(old.get_weights())
    if sequential:
        _refit_sequentially(model, new_model, plan, factorizations, calibration_data)
    return (new_model, factorizations) if return_factorizations else new_model


def _input_groups(model, names) -> list[list[str]]:
    """`names` in graph order, grouped by the tensor they read (e.g. q, k, v of one block)."""
    groups, keys = [], []
    for layer in model.layers:
        if layer.name not in names:
            continue
        key = id(layer_input(layer))
        if keys and keys[-1] == key:
            groups[-1].append(layer.name)
        else:
            groups.append([layer.name])
            keys.append(key)
    return groups


def _refit_sequentially(original, compressed, plan, factorizations, data):
    names = {name for name, spec in plan.items() if spec.needs == "gram"}
    for group in _input_groups(original, names):
        stats = paired_grams(original, compressed, group, data)
        for name in group:
            spec, first = plan[name], factorizations[name]
            fixed = dataclasses.replace(spec, rank=first.layer_config["rank"], energy=None, param_budget=None)
            kernel, _ = projection(original.get_layer(name))
            try:
                refit = fixed.factorize(kernel.numpy().astype(np.float64), stats[name])
            except ValueError as error:
                raise ValueError(f"Cannot refit layer '{name}' sequentially with {spec}: {error}") from error
            compressed.get_layer(name).set_factors(refit.factors)
            factorizations[name] = refit


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
        stats.update(input_grams(model, targets, data))
    if "fisher" in needs:
        targets = [by_name[n] for n, s in plan.items() if s.needs == "fisher"]
        kernels = {layer.name: projection(layer)[0] for layer in targets}
        stats.update(fisher_row_importance(model, targets, kernels, data, loss_fn, objective))
    return stats


# -- fold ------------------------------------------------------------------------


def fold(model: keras.Model) -> keras.Model:
    """A copy of `model` with every reparameterized layer materialised as a `Dense`."""
    _check_model(model)
    folded = {}
    for layer in model.layers:
        if isinstance(layer, ReparameterizedDense):
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
