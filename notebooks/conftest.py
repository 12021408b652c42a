"""nbval settings for the notebooks in this folder (``pytest --nbval``, see pyproject's addopts).

``tests/conftest.py`` only reaches what is collected under ``tests/``; pytest calls a
conftest's collection hooks for the nodes in its own folder. So the same two rules live here:
offline (the kernel inherits this environment), and compare stdout and rich outputs, not stderr
(bitsandbytes and transformers print machine- and version-dependent lines there) nor widget
views and HTML (progress bars and the Trainer's live table change every run).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

SKIP = ("stderr", "application/vnd.jupyter.widget-view+json", "text/html", "application/javascript")


def pytest_collectstart(collector):
    if getattr(collector, "fspath", None) is not None and str(collector.fspath).endswith(".ipynb"):
        collector.skip_compare += tuple(k for k in SKIP if k not in collector.skip_compare)
