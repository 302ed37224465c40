"""`LayerBuilder`: names, shares and creates the layers of one BERT graph.

The builder owns the three decisions every layer goes through, so the
embedding, block and head functions only say what they need:

- the class: from the injected layer kit (`bert.kits`);
- the projection type: from the `layer_policy`, a `tfreparam.policy.LayerPolicy`
  (the same rules as `tfreparam.reparameterize`: a pattern that matches no
  projection is an error, raised by `check_policy` once the graph is built);
- sharing: with `share_layers` (ALBERT) every block reuses block 0's layers,
  named "shared/...".
"""

from __future__ import annotations

from typing import Optional

from bert.config import BertConfig
from bert.kits import StandardKit, kit_for
from tfreparam.policy import LayerPolicy


class LayerBuilder:
    """Creates the named layers of one BERT graph (encoder and heads), honouring the layer policy."""

    def __init__(self, config: BertConfig, layer_policy=None, kit: Optional[type[StandardKit]] = None):
        self.config = config
        self.kit = (kit or kit_for(config))(config)
        self.policy = (layer_policy if isinstance(layer_policy, LayerPolicy)
                       else LayerPolicy(layer_policy, argument="layer_policy"))
        self._layers = {}

    def projection(self, name, in_features, units, activation=None):
        """A Dense-like projection `name` (in_features -> units): the kit's Dense, or the policy's spec."""
        name = self._shared_name(name)
        if name not in self._layers:
            # The policy sees the (unbuilt, weightless) Dense this projection would otherwise be.
            dense = self.kit.dense(units, name=name, activation=activation)
            spec = self.policy.spec_for(dense)
            self._layers[name] = dense if spec is None else self.kit.factorized(
                spec, in_features, units, name=name, activation=activation)
        return self._layers[name]

    def layer(self, name, factory):
        """A non-projection layer `factory(name)` (LayerNorm, dropout...), shared across depth if configured."""
        name = self._shared_name(name)
        if name not in self._layers:
            self._layers[name] = factory(name)
        return self._layers[name]

    def layer_norm(self, name):
        return self.layer(name, self.kit.layer_norm)

    def check_policy(self) -> None:
        """Raises if a `layer_policy` pattern matched none of the projections built so far."""
        self.policy.check_all_matched(also=self._sharing_hint)

    def _sharing_hint(self, pattern) -> str:
        if self.config.share_layers and pattern.startswith("layer_"):
            return "With share_layers=True the block projections are named 'shared/...'."
        return ""

    def _shared_name(self, name):
        if self.config.share_layers and name.startswith("layer_"):
            return "shared/" + name.split("/", 1)[1]
        return name
