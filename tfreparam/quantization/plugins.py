"""Modules that register QuantizeConfigs, imported only when quantization is used.

Importing TFMOT sets `TF_USE_LEGACY_KERAS=1` in the process environment, so
packages must not import it (nor their QuantizeConfig modules) on import.
They name the module here instead (`bert` registers "bert.quantization"),
and `quantize_model` / `quantize_scope` import it on first use. This module
imports nothing heavy.
"""

from __future__ import annotations

import importlib

_MODULES: list[str] = []


def register_config_module(module_name: str) -> None:
    """Imports `module_name` (which calls `register_quantize_config`) before the next quantization."""
    if module_name not in _MODULES:
        _MODULES.append(module_name)


def load_registered() -> None:
    for name in list(_MODULES):
        importlib.import_module(name)
