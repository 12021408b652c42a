#!/usr/bin/env bash
# The instructor's GPU run as one prepared command (see bench/README.md, "On a lent GPU"):
# the kit's GPU tests, the side-by-side bench with planner-check rows, and the planner's table.
# Writes logs and JSON to $OUT (default bench/results). Wheels in .whl/ (pinned versions the
# machine lacks) are installed to /tmp/site first; nothing is downloaded.
set -uo pipefail
OUT=${OUT:-bench/results}
STEPS=${STEPS:-15}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft, bitsandbytes as b; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', b.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" 2>&1 | tee "$OUT/versions.txt" || exit 1
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu-tests.log"
python3 bench/gpu_llama7b.py --steps "$STEPS" --gpu-memory 24GiB \
  --variants trainer,kit-auto,kit-ref,kit-sqrt,kit-1-on,kit-8-on,kit-16-on,kit-1-off,kit-2-off,kit-4-off \
  --json "$OUT/gpu_llama7b.json" 2>&1 | tee "$OUT/gpu_llama7b.log"
python3 -m reclor_lab plan --preset llama2-7b --gpu-memory 24GiB --breakdown > "$OUT/plan.txt" 2>&1
