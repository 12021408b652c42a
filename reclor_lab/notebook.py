"""The plumbing of each notebook's first cell, so the cell itself shows only the choices.

>>> start_notebook("torch", "transformers")     # doctest: +SKIP
python 3.11
reclor-lab    0.1.0
torch         2.13.0+cpu
transformers  5.24.0
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version

from reclor_lab.config import REPO_ROOT


def start_notebook(*packages: str) -> None:
    """Work from the repository root (relative paths then read like the README's commands) and
    print the Python version and those of ``reclor-lab`` and ``packages``."""
    os.chdir(REPO_ROOT)
    print(f"python {sys.version_info.major}.{sys.version_info.minor}")
    for package in ("reclor-lab", *packages):
        print(f"{package:<13} {version(package)}")
