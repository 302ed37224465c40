"""The benchmark scripts run end to end (tiny --quick configs; no timing is asserted)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("script, flags, marker", [
    # Other test workers keep the CPU busy: do not wait for an idle machine.
    ("bench.layers", ["--max_foreign_load=1.0", "--noxla"], "LowRankDense"),
    ("bench.decompose", [], "Whole encoder"),
])
def test_quick_run(script, flags, marker, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", script, "--quick", f"--out_dir={tmp_path}", *flags],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert marker in result.stdout
