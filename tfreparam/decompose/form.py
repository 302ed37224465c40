"""`Form`: the numpy side of a factorization family, and the registry of forms.

A form knows everything about one factored kernel layout that needs no
TensorFlow: which arguments size it (`config`), its parameter count, the
largest useful value of each size argument (its cap), which size a
parameter budget buys, and how its factors rebuild the (in, out) kernel
(`reconstruct`, as TensorLy's `CPTensor.to_tensor()` does). Each family
module in this package registers its form next to its decomposition;
`tfreparam.families` adds the layer class, spec and QAT config on top.

The cap rule is the same for every family: a size argument may not exceed
the smallest value at which the form can already write every kernel of that
shape exactly (the algebraic maximum rank). Larger sizes only add redundant
parameters.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Optional

import numpy as np

from tfreparam.decompose.validation import at_most, shape as check_shape

Shape = tuple[int, int]
Config = dict[str, Any]


@dataclasses.dataclass(frozen=True, eq=False)
class Form:
    """One factored kernel layout.

    Attributes:
      name: the family name ("low_rank", "kronecker", ...).
      resolve: (shape, **arguments) -> the full, validated layer config (defaults
        filled in, int ranks expanded per bond or mode). Raises on bad values.
      count: (shape, config) -> parameters of the factors (bias excluded).
      limits: (shape, config) -> {size argument: (largest useful value, why)}.
        An int is checked by `config`; a tuple of per-entry caps is applied by
        `resolve` itself.
      rebuild: (factors, shape, config) -> the (in, out) kernel, float64.
      budget_size: the size argument a parameter budget chooses, or None.
    """

    name: str
    resolve: Callable[..., Config]
    count: Callable[[Shape, Config], int]
    limits: Callable[[Shape, Config], dict]
    rebuild: Callable[[Mapping[str, np.ndarray], Shape, Config], np.ndarray]
    budget_size: Optional[str] = None

    def config(self, shape, **arguments) -> Config:
        """The validated layer config for a kernel of `shape`; raises past a cap."""
        shape = check_shape(shape)
        self._check_names(arguments)
        config = self.resolve(shape, **arguments)
        self.check(shape, config)
        return config

    def check(self, shape: Shape, config: Config) -> None:
        """Raises if an int size argument of `config` exceeds its cap for `shape`."""
        for name, (limit, why) in self.limits(shape, config).items():
            value = config.get(name)
            if isinstance(value, int) and isinstance(limit, int):
                at_most(value, limit, name, why)

    def param_count(self, shape, **arguments) -> int:
        """Exact factor-parameter count (bias excluded) of this form for a kernel of `shape`."""
        shape = check_shape(shape)
        return int(self.count(shape, self.config(shape, **arguments)))

    def reconstruct(self, factors: Mapping[str, np.ndarray], shape, config: Config) -> np.ndarray:
        """The (in, out) float64 kernel that `factors` (in this form's layout) imply."""
        as64 = {name: np.asarray(value, dtype=np.float64) for name, value in factors.items()}
        return np.asarray(self.rebuild(as64, tuple(shape), config), dtype=np.float64).reshape(shape)

    def size_for_budget(self, shape, params: int, **arguments) -> int:
        """The largest `budget_size` whose parameter count fits `params`, at least 1, at most the cap.

        The other arguments (e.g. the factor shapes) come from `arguments`.
        """
        if self.budget_size is None:
            raise ValueError(f"The {self.name} form has no size a parameter budget can choose.")
        shape = check_shape(shape)

        def count(size):
            return self.count(shape, self.resolve(shape, **{**arguments, self.budget_size: size}))

        probe = self.resolve(shape, **{**arguments, self.budget_size: 1})
        limit = self.limits(shape, probe)[self.budget_size][0]
        limit = max(limit) if isinstance(limit, tuple) else limit
        # Counts grow with the size: bisect for the last one that fits.
        low, high = 1, int(limit)
        while low < high:
            middle = (low + high + 1) // 2
            if count(middle) <= params:
                low = middle
            else:
                high = middle - 1
        return low

    def _check_names(self, arguments: Mapping[str, Any]) -> None:
        parameters = list(inspect.signature(self.resolve).parameters.values())[1:]
        known = {p.name for p in parameters}
        missing = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in arguments]
        if missing:
            raise ValueError(f"The {self.name} form needs the keyword argument {missing[0]!r}.")
        unexpected = sorted(set(arguments) - known)
        if unexpected:
            raise ValueError(f"The {self.name} form got unexpected arguments {unexpected}; it takes {sorted(known)}.")

    def __repr__(self) -> str:
        return f"Form({self.name!r})"


_FORMS: dict[str, Form] = {}


def register_form(form: Form) -> Form:
    """Adds `form` to the registry (a later registration of the same name replaces it)."""
    if not isinstance(form, Form):
        raise TypeError(f"register_form() takes a Form; got {type(form).__name__}.")
    _FORMS[form.name] = form
    return form


def get_form(name) -> Form:
    """The registered form called `name` (a Form passes through)."""
    if isinstance(name, Form):
        return name
    if name not in _FORMS:
        raise ValueError(f"Unknown factorization family {name!r}; registered: {', '.join(sorted(_FORMS))}.")
    return _FORMS[name]


def form_names() -> tuple[str, ...]:
    return tuple(_FORMS)
