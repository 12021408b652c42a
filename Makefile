# The two commands of the README's Quickstart. Each creates .venv on first use (Python 3.11 and
# pip are all it needs), installs the pinned packages, registers the notebooks' Jupyter kernel,
# then runs. Offline at run time: nothing is fetched from the Hugging Face hub.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install demo test notebooks lab clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-run the install whenever the pins change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name reclor-lab --display-name "reclor-lab (Python 3.11)"
	touch $@

install: $(VENV)/.installed

# The kit's main job: fine-tune the tiny offline model on the bundled data (about a minute on a
# 2-core CPU). Each run gets its own directory, so a run is never overwritten.
demo: install
	$(BIN)/reclor-lab train --preset tiny --output-dir runs/tiny-$$(date +%Y%m%d-%H%M%S)

# Unit tests, the tiny end-to-end run, and every notebook under nbval.
test: install
	$(BIN)/python -m pytest

lab: install
	$(BIN)/jupyter lab notebooks/
