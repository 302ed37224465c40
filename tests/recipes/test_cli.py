"""`python -m recipes.<name> --help` lists the recipe's flags (issue 16.11: it used to say "Unknown command line flag")."""

import os
import subprocess
import sys

import pytest
from absl import flags

from recipes import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("recipe, flag, help_text", [
    ("compress", "--budget", "Share of the encoder-projection kernel parameters to keep"),
    ("finetune", "--label_field", "Label column."),
    ("pretrain", "--train_files", None),
    ("sweep", "--budgets", "Budgets to sweep"),
])
def test_help_lists_the_flags_and_exits_0(recipe, flag, help_text):
    argv = ["--help"] if recipe != "finetune" else ["-h"]
    done = subprocess.run([sys.executable, "-m", f"recipes.{recipe}", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Unknown command line flag" not in done.stdout + done.stderr
    assert f"  {flag}:" in done.stdout
    if help_text:
        assert help_text in done.stdout
    assert "Flags:" in done.stdout and f"recipes.{recipe}" in done.stdout  # the module docstring's usage lines
    if recipe == "sweep":  # sweep's own flags and every compress flag
        assert "  --distill_steps:" in done.stdout


def test_parser_help_in_process_and_after_double_dash(capsys):
    values = flags.FlagValues()
    flags.DEFINE_integer("steps", 3, "How many steps.", flag_values=values)
    parse = cli.flags_parser(values, doc="Does a thing.")
    with pytest.raises(SystemExit) as exit_info:
        parse(["prog", "--steps=4", "--helpfull"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("Does a thing.\n\nFlags:\n") and "--steps: How many steps." in out
    assert parse(["prog", "--steps=5", "--", "--help"]) == ["prog", "--help"] and values.steps == 5
    with pytest.raises(SystemExit, match="FATAL Flags parsing error: Unknown command line flag 'stpes'"):
        parse(["prog", "--stpes=1"])
