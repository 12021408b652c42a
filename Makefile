# The two commands of the README's Quickstart. Each creates .venv on first use (Python 3.11, 3.12
# or 3.13 and pip are all it needs), installs the kit at the exact versions of
# requirements-lock.txt, registers the notebooks' Jupyter kernel, then runs. Offline at run time:
# nothing is fetched from the Hugging Face hub.
#
# Python: the newest of python3.13, python3.12, python3.11 that runs here (a pyenv shim of a
# version that pyenv has not selected does not run, so it does not count); override with
# `make test PYTHON=python3.11`. Another version than the one .venv was made with rebuilds .venv.
# What it costs: on 3.12 and 3.13, torch comes from PyPI as its CUDA build (it runs on a CPU too,
# but the download is a few GB); the course machines keep the CPU build for 3.11 on disk.
SUPPORTED := 3.13 3.12 3.11
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach v,$(SUPPORTED),$(shell python$(v) -c '' >/dev/null 2>&1 && echo python$(v))))
endif
PYVER  := $(if $(PYTHON),$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null))
LOCK   := requirements-lock.txt
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install demo test lab lock gpu-wheels gpu-check-dry sandbox-tools

# One stamp per interpreter version: switching PYTHON to another version starts a fresh .venv.
$(VENV)/.python-$(PYVER):
	$(if $(filter $(PYVER),$(SUPPORTED)),,@echo "error: '$(PYTHON)' is not a Python 3.11, 3.12 or 3.13 that runs here; \
	  install one, or name it: make test PYTHON=/usr/bin/python3.12" >&2; exit 1)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	touch $@

# Re-run the install whenever the ranges, the pins or the interpreter change. The display name
# carries no minor version: the notebooks' stored metadata is the same on every Python.
$(VENV)/.installed: pyproject.toml $(LOCK) $(VENV)/.python-$(PYVER)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -c $(LOCK)
	$(BIN)/python -m ipykernel install --sys-prefix --name reclor-lab --display-name "reclor-lab (Python 3)"
	touch $@

# nbconvert's settings (drop progress bars from executed notebooks), read from the environment.
$(VENV)/etc/jupyter/jupyter_nbconvert_config.py: notebooks/jupyter_nbconvert_config.py $(VENV)/.installed
	mkdir -p $(dir $@)
	cp $< $@

install: $(VENV)/.installed $(VENV)/etc/jupyter/jupyter_nbconvert_config.py

# The kit's main job: fine-tune the tiny offline model on the bundled data (about a minute on a
# 2-core CPU). Each run gets its own directory, so a run is never overwritten.
demo: install
	$(BIN)/reclor-lab train --preset tiny --output-dir runs/tiny-$$(date +%Y%m%d-%H%M%S)

# The grader's OS sandbox: bubblewrap (util-linux's prlimit, unshare and setpriv come with Debian).
# Installed with apt-get when `bwrap` is missing and this is root on a Debian-like system (CI);
# elsewhere one line says how, and the grading tests skip.
sandbox-tools:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; \
	  else \
	    echo "note: bubblewrap is missing, so the grading tests will skip: sudo apt-get install -y bubblewrap"; \
	  fi; }

# Unit tests, the tiny end-to-end run, and every notebook under nbval.
test: install sandbox-tools
	$(BIN)/python -m pytest --durations=20

lab: install
	$(BIN)/jupyter lab notebooks/

# Re-resolve the lock after editing a pin in it or a range in pyproject.toml: a fresh venv on
# $(PYTHON), the kit under the current lock, then pip freeze (its header kept, torch's local label
# such as +cpu dropped so that the same line matches the CPU and the CUDA builds).
lock:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/python" -m pip install --quiet -e '.[dev]' -c $(LOCK) && \
	{ sed -n '1,/^$$/p' $(LOCK); "$$tmp/venv/bin/python" -m pip freeze --exclude-editable | sed 's/+[A-Za-z0-9.]*$$//'; } > "$$tmp/lock" && \
	mv "$$tmp/lock" $(LOCK) && echo "$(LOCK): $$(grep -c '==' $(LOCK)) pins, resolved on $(PYTHON) ($(PYVER))"

# --- the lent GPU's one call, prepared and proven here ------------------------------------------
# `make gpu-wheels`: download into .whl/ (git-ignored) what the GPU machine's image lacks and
# check that it and the working tree fit what one call carries (bench/gpu_wheels.py).
# `make gpu-check-dry`: that, then a Python 3.12 venv holding the image's torch 2.11 and
# transformers 5.17, the wheels installed with gpu_run.sh's own command, and gpu_run.sh --dry-run
# end to end on the CPU. Not part of `make test`: the first build downloads torch 2.11 (its 530 MB
# CUDA wheel from PyPI, no CPU build there) and the CUDA libraries it links against: a 4.4 GB
# venv, a few minutes.
DRY       := build/gpu-dry
PY312     ?= $(firstword $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
               $$p -c '' >/dev/null 2>&1 && echo $$p; done))
# torch's own requirements: the pure-Python ones, and the CUDA libraries libtorch links against
# (it does not import without them, even on a CPU), but not triton or cuda-bindings, which
# `import torch` does not load. Then the image's other packages: transformers with its
# requirements (it requires no torch), peft and accelerate without theirs (torch, transformers,
# and what transformers brought, plus psutil).
TORCH_DEPS := filelock typing-extensions 'setuptools<82' sympy networkx jinja2 fsspec
TORCH_CUDA := 'cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.0.2' \
              nvidia-cudnn-cu13==9.19.0.56 nvidia-cusparselt-cu13==0.8.0 nvidia-nccl-cu13==2.28.9 \
              nvidia-nvshmem-cu13==3.4.5
IMAGE_PKGS := transformers==5.17.0 pyarrow xxhash psutil
NO_DEPS    := peft==0.21.2 accelerate==1.15.0

gpu-wheels:
	python3 bench/gpu_wheels.py

$(DRY)/venv/.ready:
	$(if $(PY312),,@echo "error: no Python 3.12 runs here; install one or name it: make gpu-check-dry PY312=/path/to/python3.12" >&2; exit 1)
	rm -rf $(DRY)/venv && mkdir -p $(DRY)/wheels
	$(PY312) -m venv $(DRY)/venv
	$(DRY)/venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d $(DRY)/wheels torch==2.11.0
	$(DRY)/venv/bin/python -m pip install -q --no-deps $(DRY)/wheels/torch-2.11.0-*.whl
	$(DRY)/venv/bin/python -m pip install -q $(TORCH_DEPS)
	$(DRY)/venv/bin/python -m pip install -q --no-cache-dir $(TORCH_CUDA)
	$(DRY)/venv/bin/python -m pip install -q $(IMAGE_PKGS)
	$(DRY)/venv/bin/python -m pip install -q --no-deps $(NO_DEPS)
	$(DRY)/venv/bin/python -c "import torch, transformers; print('dry venv: torch', torch.__version__, '| transformers', transformers.__version__)"
	touch $@

gpu-check-dry: gpu-wheels $(DRY)/venv/.ready
	rm -rf $(DRY)/site $(DRY)/out
	PYTHON=$(DRY)/venv/bin/python SITE=$(DRY)/site OUT=$(DRY)/out bash bench/gpu_run.sh --dry-run
