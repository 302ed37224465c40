"""Command-line plumbing shared by the recipes: each is an absl app with its own flag set."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Callable

from absl import app, flags

HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def usage(flag_values: flags.FlagValues, doc: str | None = None) -> str:
    """The recipe's description (its module docstring) and every flag with its help and default."""
    doc = (doc if doc is not None else sys.modules["__main__"].__doc__) or ""
    return f"{doc.strip()}\n\nFlags:\n{flag_values.get_help().strip()}\n"


def flags_parser(flag_values: flags.FlagValues, doc: str | None = None) -> Callable:
    """An `app.run(flags_parser=...)` that parses into the recipe's own `flag_values`.

    A bad flag ends the program with absl's one-line message, no traceback.
    `--help` (or `-h`, `--helpfull`) prints `usage` and exits 0: absl's own help
    flags live in its global flag set, which never sees the recipe's flags.
    """

    def parse(argv):
        # TensorFlow's C++ INFO/WARNING lines (oneDNN, CUDA probing, one "Reading SavedModel" block per TFLite
        # conversion) would bury the recipe's own progress lines; a user's own setting wins.
        if "tensorflow" not in sys.modules:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        options = argv[1:argv.index("--")] if "--" in argv else argv[1:]
        if any(arg in HELP_FLAGS for arg in options):
            sys.stdout.write(usage(flag_values, doc))
            sys.stdout.flush()
            raise SystemExit(0)
        flags.FLAGS(argv[:1])  # absl's own flag set must count as parsed; every recipe flag lives in flag_values
        try:
            return flag_values(argv)
        except flags.Error as error:
            raise SystemExit(f"FATAL Flags parsing error: {error}") from None

    return parse


def check_output_dir(path: str, flag: str) -> str:
    """`path` if a directory can be created (or already is) there and written to; else ValueError.

    Nothing is left behind: a missing directory is not created here, only its
    nearest existing parent is tried with a throwaway subdirectory.
    """
    if not path:
        raise ValueError(f"{flag} is empty; give a directory for the outputs.")
    path = os.path.abspath(path)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is" if existing == path else f"is below {existing!r}, which is"
        raise ValueError(f"{flag}: {path!r} {what} a file, not a directory; give a directory path.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write_check_", dir=existing))
    except OSError as error:
        raise ValueError(f"{flag}: {path!r} cannot be created or written ({error.strerror} in {existing!r}); "
                         "give a writable directory.") from None
    return path


def main(flag_values: flags.FlagValues, check_flags: Callable, run: Callable) -> Callable:
    """An absl `main`: validates the flags (`check_flags` raises `app.UsageError`), then `run`s the settings."""

    def main_fn(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
        run(check_flags(flag_values))

    return main_fn
