"""The atheris harness (tests/fuzz/fuzz_gateway.py) run for a bounded number of inputs.

A fixed seed and run count keep it the same from run to run (about ten
seconds); `python tests/fuzz/fuzz_gateway.py -max_total_time=600` is the
long run. atheris is a test dependency: missing, this fails (never skips).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_gateway.py"
RUNS = 30_000
TIMEOUT = 300  # seconds: a liveness bound for the whole run (it takes about ten)


def test_atheris_harness_finds_nothing_in_a_bounded_run(tmp_path: Path) -> None:
    assert importlib.util.find_spec("atheris") is not None, (
        "atheris is not installed: it is a test dependency (pip install atheris)"
    )
    result = subprocess.run(
        [sys.executable, str(HARNESS), f"-runs={RUNS}", "-seed=20170217", "-max_len=1024", "-print_final_stats=1"],
        cwd=tmp_path,  # where libFuzzer would write a crash-* file
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    crashes = sorted(path.name for path in tmp_path.glob("crash-*"))
    assert result.returncode == 0 and not crashes, f"exit {result.returncode}, {crashes}:\n{output[-6000:]}"
    assert f"Done {RUNS} runs" in output, output[-3000:]
