"""Command-line plumbing shared by the recipes: each is an absl app with its own flag set."""

from __future__ import annotations

from typing import Callable

from absl import app, flags


def flags_parser(flag_values: flags.FlagValues) -> Callable:
    """An `app.run(flags_parser=...)` that parses into the recipe's own `flag_values`.

    A bad flag ends the program with absl's one-line message, no traceback.
    """

    def parse(argv):
        flags.FLAGS(argv[:1])  # absl's own flag set must count as parsed; every recipe flag lives in flag_values
        try:
            return flag_values(argv)
        except flags.Error as error:
            raise SystemExit(f"FATAL Flags parsing error: {error}") from None

    return parse


def main(flag_values: flags.FlagValues, check_flags: Callable, run: Callable) -> Callable:
    """An absl `main`: validates the flags (`check_flags` raises `app.UsageError`), then `run`s the settings."""

    def main_fn(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
        run(check_flags(flag_values))

    return main_fn
