"""Layer policies: which spec each projection of a model gets.

One set of rules for every place that reads a policy (`reparameterize`, the
BERT builder's `layer_policy`):

- a spec: every candidate layer gets it;
- any `Mapping` of layer-name regex -> spec (full match, first pattern wins;
  `Keep()` or None keeps the layer as it is);
- a callable on the layer, returning a spec or None.

A pattern that matches no candidate layer is an error once every candidate
has been seen (`check_all_matched`): a typo must not silently leave a model
uncompressed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Callable, Optional, Union

from tfreparam.specs import Keep, Spec

PolicyLike = Union[None, Spec, Mapping, Callable]

_SPEC_NAMES = "tfreparam.LowRank, Kronecker, TensorTrain, Tucker, CP, BlockTerm, LoRA or Keep"


class LayerPolicy:
    """A validated policy; `spec_for(layer)` answers per layer, `check_all_matched()` at the end."""

    def __init__(self, policy: PolicyLike, argument: str = "policy"):
        self.argument = argument
        self._spec = self._callable = None
        self._patterns: list[tuple[str, re.Pattern, Optional[Spec]]] = []
        self._hits: dict[str, int] = {}
        self._seen: list[str] = []
        if policy is None or isinstance(policy, Spec):
            self._spec = policy
        elif isinstance(policy, Mapping):
            for pattern, spec in policy.items():
                if not isinstance(pattern, str):
                    raise ValueError(f"{argument}: keys must be layer-name regexes (str); got {pattern!r}.")
                if spec is not None and not isinstance(spec, Spec):
                    raise ValueError(
                        f"{argument}: entry {pattern!r} maps to {spec!r}, which is not a spec; use {_SPEC_NAMES}."
                    )
                try:
                    regex = re.compile(pattern)
                except re.error as error:
                    raise ValueError(f"{argument}: {pattern!r} is not a valid regular expression ({error}).") from None
                self._patterns.append((pattern, regex, spec))
                self._hits[pattern] = 0
        elif callable(policy):
            self._callable = policy
        else:
            raise ValueError(
                f"{argument} must be a spec (e.g. tfreparam.LowRank(rank=64)), a mapping of layer-name regex -> "
                f"spec, or a callable(layer) -> spec or None; got {type(policy).__name__}."
            )

    @property
    def is_empty(self) -> bool:
        """True for `None`: nothing is selected and nothing needs to match."""
        return self._spec is None and self._callable is None and not self._patterns

    def spec_for(self, layer) -> Optional[Spec]:
        """The spec for `layer` (anything with a `.name`), or None to keep it as it is."""
        name = layer.name
        self._seen.append(name)
        spec = None
        if self._spec is not None:
            spec = self._spec
        elif self._callable is not None:
            spec = self._callable(layer)
            if spec is not None and not isinstance(spec, Spec):
                raise ValueError(f"{self.argument} returned {spec!r} for '{name}', which is not a spec.")
        else:
            for pattern, regex, candidate in self._patterns:
                if regex.fullmatch(name):
                    self._hits[pattern] += 1
                    spec = candidate
                    break
        return None if isinstance(spec, Keep) else spec

    def unmatched_patterns(self) -> list[str]:
        """Patterns that matched none of the layers seen so far."""
        return [pattern for pattern, count in self._hits.items() if count == 0]

    def check_all_matched(self, candidates: str = "projection layers", also: Callable[[str], str] = None) -> None:
        """Raise if a pattern matched no layer; call once every candidate has gone through `spec_for`.

        `also(pattern)` may add a sentence (e.g. "it names a LayerNormalization, which cannot be
        reparameterized") to the message.
        """
        missing = self.unmatched_patterns()
        if not missing:
            return
        pattern = missing[0]
        extra = (also(pattern) if also else "") or ""
        shown = ", ".join(self._seen[:8]) + (", ..." if len(self._seen) > 8 else "")
        raise ValueError(
            f"{self.argument}: pattern {pattern!r} matches no layer (patterns must match the whole name). "
            f"{extra}{' ' if extra else ''}The {candidates} are: {shown or 'none'}."
        )
