"""The plumbing of each notebook's first cell, so the cell itself shows only the choices.

>>> start_notebook("torch", "transformers")     # doctest: +SKIP
python 3.11
reclor-lab    0.1.0
torch         2.13.0+cpu
transformers  5.24.0
torch threads 1
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version

from reclor_lab.config import REPO_ROOT


#: Set by ``reclor-lab course grade``: the notebooks then work (write ``runs/``) in a temporary
#: directory instead of the repository, so grading never touches an instructor's own runs.
WORKDIR_ENV = "RECLOR_LAB_WORKDIR"
#: torch's intra-op threads in a notebook, unless ``OMP_NUM_THREADS`` names another number. One:
#: on a machine whose cores other work shares (a class's JupyterHub, a laptop running a browser),
#: torch's default of one thread per core makes its threads wait for each other, and notebook 04
#: took several times longer; one thread cost the idle machine little (bench/README.md,
#: "Notebook threads", measured with bench/notebook_threads.py).
NOTEBOOK_THREADS = 1
THREADS_ENV = "OMP_NUM_THREADS"


def notebook_threads() -> int:
    """The torch threads a notebook uses: ``$OMP_NUM_THREADS`` when it is a positive whole number,
    else :data:`NOTEBOOK_THREADS`."""
    value = os.environ.get(THREADS_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else NOTEBOOK_THREADS


def start_notebook(*packages: str) -> None:
    """Work from the repository root (relative paths then read like the README's commands), or
    from ``$RECLOR_LAB_WORKDIR`` when set; set torch's threads (:func:`notebook_threads`); print
    the Python version, those of ``reclor-lab`` and ``packages``, and the thread count."""
    import torch

    os.chdir(os.environ.get(WORKDIR_ENV) or REPO_ROOT)
    torch.set_num_threads(notebook_threads())
    print(f"python {sys.version_info.major}.{sys.version_info.minor}")
    for package in ("reclor-lab", *packages):
        print(f"{package:<13} {version(package)}")
    print(f"{'torch threads':<13} {torch.get_num_threads()}")
