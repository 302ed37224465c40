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

When one of our own modules is what imports tf_keras (`tr.LowRank` or
`tr.reparameterize` touched first), registering at once would import `bert`,
which imports that module back half-made. Registration then waits until none
of our modules is mid-import: the lazy `tfreparam.<name>` lookup, or the next
import of anything else, does it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

KERAS = "tf_keras"
LAYER_MODULES = ("tfreparam.layers", "bert")
PACKAGES = ("tfreparam", "bert")


def register_layers() -> None:
    for name in LAYER_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)  # the classes register themselves (register_keras_serializable)


def ours_initializing() -> bool:
    """Whether a module of this distribution is still executing its body.

    `__spec__._initializing` is the flag CPython's import system sets for that
    (and reads itself to call a module "partially initialized").
    """
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in PACKAGES and getattr(getattr(module, "__spec__", None), "_initializing", False):
            return True
    return False


def register_when_safe() -> None:
    """Registers now, or (while one of our modules is mid-import) once none is."""
    if ours_initializing():
        if not any(isinstance(finder, _RegisterOnNextImport) for finder in sys.meta_path):
            sys.meta_path.insert(0, _RegisterOnNextImport())
    else:
        register_layers()


def flush() -> None:
    """Runs a registration that was waiting, if none of our modules is mid-import any more."""
    waiting = [finder for finder in sys.meta_path if isinstance(finder, _RegisterOnNextImport)]
    if waiting and KERAS in sys.modules and not ours_initializing():
        sys.meta_path[:] = [finder for finder in sys.meta_path if finder not in waiting]
        register_layers()


class _RegisterOnNextImport(importlib.abc.MetaPathFinder):
    """Registers at the first import of a module not ours after ours have finished (finds nothing itself)."""

    def find_spec(self, fullname, path=None, target=None):
        # Not on an import of ours: registering imports `bert`, and that import would then run twice.
        if fullname.partition(".")[0] not in PACKAGES:
            flush()
        return None


class _RegisterAfterExec(importlib.abc.Loader):
    """Runs tf_keras's own loader, then registers our layers; everything else is the wrapped loader's."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register_when_safe()

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
        register_layers()  # mid-import of tfreparam/__init__ itself, but bert needs only its submodules
    elif not any(isinstance(finder, _KerasImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KerasImportHook())
