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


#: Set by ``reclor-lab course grade``: the notebooks then work (write ``runs/``) in a temporary
#: directory instead of the repository, so grading never touches an instructor's own runs.
WORKDIR_ENV = "RECLOR_LAB_WORKDIR"


def start_notebook(*packages: str) -> None:
    """Work from the repository root (relative paths then read like the README's commands), or
    from ``$RECLOR_LAB_WORKDIR`` when set, and print the Python version and those of
    ``reclor-lab`` and ``packages``."""
    os.chdir(os.environ.get(WORKDIR_ENV) or REPO_ROOT)
    print(f"python {sys.version_info.major}.{sys.version_info.minor}")
    for package in ("reclor-lab", *packages):
        print(f"{package:<13} {version(package)}")
