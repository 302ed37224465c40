"""The registry of factorization families: one registration ties together everything about a family.

A `Family` joins
- its numpy side, the `decompose.Form` (reconstruction, parameter count, the
  size caps, the size a budget buys), which its layer class declares as `form`;
- its Keras layer class;
- its policy spec (the decomposition that initialises the layer from a
  trained kernel, and the sizes a spec asks for);
- the name of its QuantizeConfig in `tfreparam.quantization.configs`
  (looked up by name there, so this module imports no TFMOT).

A family is registered by decorating its spec class:

    @register_family(CPDense)
    @dataclasses.dataclass(frozen=True)
    class CP(Spec): ...

after which `CP.family` is the family, `get_family("cp")` finds it, and
surgery, QAT and reports all go through it. Adding a family = its
decomposition (with its form), its layer, its spec, and this one line.
"""

from __future__ import annotations

import dataclasses

from tfreparam.decompose.form import Form

# The QuantizeConfig of every factored layer; LoRA quantizes its merged kernel instead.
REPARAMETERIZED_QAT = "ReparameterizedDenseQuantizeConfig"


@dataclasses.dataclass(frozen=True, eq=False)
class Family:
    name: str
    form: Form
    layer_class: type
    spec_class: type
    quantize_config: str = REPARAMETERIZED_QAT

    def __repr__(self) -> str:
        return f"Family({self.name!r}: {self.layer_class.__name__}, {self.spec_class.__name__})"


_FAMILIES: dict[str, Family] = {}


def register_family(layer_class: type, quantize_config: str = REPARAMETERIZED_QAT):
    """Class decorator for a spec: registers the family of `layer_class` (named by its `form`)."""
    form = getattr(layer_class, "form", None)
    if not isinstance(form, Form):
        raise TypeError(
            f"{getattr(layer_class, '__name__', layer_class)!r} declares no `form` (a tfreparam.decompose.Form); "
            "a family's layer class names the numpy side of its factorization."
        )

    def register(spec_class: type) -> type:
        family = Family(form.name, form, layer_class, spec_class, quantize_config)
        _FAMILIES[family.name] = family
        spec_class.family = family
        return spec_class

    return register


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise ValueError(f"Unknown factorization family {name!r}; registered: {', '.join(sorted(_FAMILIES))}.")
    return _FAMILIES[name]


def families() -> tuple[Family, ...]:
    """Every registered family, in registration order."""
    return tuple(_FAMILIES.values())

