"""Registers this distribution's Keras layers with tf_keras without making `import tfreparam` import TensorFlow.

tf_keras finds custom layers of a saved model only in its registry of
`register_keras_serializable` classes (for a layer it never imports the module
named in the config), so `keras.models.load_model` after a bare
`import tfreparam` must already see them. Importing the layers pulls in
TensorFlow (seconds), which `import tfreparam` promises not to do. So: if
tf_keras is already imported, register now (free); otherwise register the
moment tf_keras finishes importing, through a one-shot import hook. The BERT's
layers (`bert`, shipped in the same distribution) register too: a saved
compressed encoder holds both kinds.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

KERAS = "tf_keras"
LAYER_MODULES = ("tfreparam.layers", "bert")


def register_layers() -> None:
    for name in LAYER_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)  # the classes register themselves (register_keras_serializable)


class _RegisterAfterExec(importlib.abc.Loader):
    """Runs tf_keras's own loader, then registers our layers; everything else is the wrapped loader's."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register_layers()

    def __getattr__(self, name):  # get_data, get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _KerasImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != KERAS:
            return None
        remove_hook()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def remove_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _KerasImportHook)]


def install() -> None:
    """Registers now if tf_keras is imported, else once it is (idempotent)."""
    if KERAS in sys.modules:
        register_layers()
    elif not any(isinstance(finder, _KerasImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KerasImportHook())
