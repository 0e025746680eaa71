"""The atheris harnesses (tests/fuzz/) run for a bounded number of inputs.

`fuzz_gateway.py` drives the parsers (tokens, confinement, ranges,
conditions, dispositions); `fuzz_media.py` probes and converts recordings
whose container headers lie. A fixed seed and run count keep each the same
from run to run (about twenty seconds each); `-max_total_time=600` is the
long run. atheris is a test dependency: missing, this fails (never skips).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
TIMEOUT = 300  # seconds: a liveness bound for each whole run (they take about twenty)


@pytest.mark.parametrize(
    ("harness", "runs", "options"),
    [
        ("fuzz_gateway.py", 30_000, ["-max_len=1024"]),
        # Each input is a few header patches: short inputs, at full length from the start.
        ("fuzz_media.py", 3_000, ["-max_len=128", "-len_control=0"]),
    ],
)
def test_atheris_harness_finds_nothing_in_a_bounded_run(tmp_path: Path, harness: str, runs: int, options: list[str]):
    assert importlib.util.find_spec("atheris") is not None, (
        "atheris is not installed: it is a test dependency (pip install atheris)"
    )
    result = subprocess.run(
        [sys.executable, str(FUZZ / harness), f"-runs={runs}", "-seed=20170217", *options, "-print_final_stats=1"],
        cwd=tmp_path,  # where libFuzzer would write a crash-* file
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    crashes = sorted(path.name for path in tmp_path.glob("crash-*"))
    assert result.returncode == 0 and not crashes, f"exit {result.returncode}, {crashes}:\n{output[-6000:]}"
    assert f"Done {runs} runs" in output, output[-3000:]
