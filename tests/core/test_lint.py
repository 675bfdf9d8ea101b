"""The linter is part of the suite, so CI and the README's test command run it: ruff, as
configured in pyproject.toml (line length, import order, unused imports)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.daemon_harness import REPO


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    command = [str(ruff)] if ruff.exists() else [shutil.which("ruff") or "ruff"]
    result = subprocess.run([*command, "check", "syncd", "tests", "bench"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
