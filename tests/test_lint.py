"""The linter runs with the tests: `ruff check` over the repository, with the rules of
pyproject.toml's [tool.ruff] (pyflakes and pycodestyle, lines of at most 120 characters)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    """ruff comes with the dev extra (`make install`); the lock pins its version, so a new ruff
    release cannot start failing the suite."""
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert "No module named ruff" not in done.stderr, "ruff is missing: install the dev extra (make install)"
    assert done.returncode == 0, f"ruff check (rules: pyproject.toml's [tool.ruff]) found:\n{done.stdout}"
