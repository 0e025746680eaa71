"""The packages are layers, and the imports keep to them: `lint-imports` (import-linter) checks the contracts.

The contracts live in pyproject.toml (`[tool.importlinter]`): HTTP semantics
know no tokens or storage, link logic and storage know nothing of HTTP,
storage knows no configuration, and the apps sit on the shared services.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_imports_keep_to_the_layers() -> None:
    command = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    assert Path(command).exists(), "lint-imports is not installed: it is a test dependency (import-linter)"
    done = subprocess.run([command], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout, done.stdout[-4000:]
