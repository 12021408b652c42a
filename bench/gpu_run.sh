#!/usr/bin/env bash
# The instructor's GPU run as one prepared command (bench/README.md, "On a lent GPU"): on the
# machine's image as it is, after installing only the wheels in .whl/ (bench/gpu_wheels.py
# prepares them; nothing is downloaded there). In order of what matters most, each figure printed
# as soon as it is known, so a run cut off still reports:
#   1. versions, the GPU and whether it has bf16;
#   2. the side-by-side bench (reference Trainer, kit default, kit at the reference's shape, the
#      kit default in fp16) and six planner-check rows;
#   3. the kit's GPU tests (pytest -m gpu);
#   4. the planner's table for 24 GiB and for a 15 GiB T4 in fp16.
# Logs and JSON go to $OUT (default bench/results). The whole script stops itself after
# $BUDGET_S seconds (default 450: under the 8 minutes a lent call allows, with room to spare).
#
#   OUT=$OUT bash bench/gpu_run.sh            # on the GPU machine, carrying .whl
#   bash bench/gpu_run.sh --dry-run           # anywhere: every stage on the CPU with a tiny model
#
# PYTHON (default python3) and SITE (default /tmp/site, where the wheels go) may be set; the
# dry run of `make gpu-check-dry` sets both to its own venv and folder.
set -uo pipefail
DRY=""
[[ "${1:-}" == "--dry-run" ]] && DRY="--dry-run"
OUT=${OUT:-bench/results}
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
STEPS=${STEPS:-15}
BUDGET_S=${BUDGET_S:-450}
VARIANTS=trainer,kit-auto,kit-ref,kit-fp16,kit-1-on,kit-8-on,kit-16-on,kit-1-off,kit-2-off,kit-4-off
START=$SECONDS
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
stamp() { echo "[gpu_run +$((SECONDS - START)) s] $*"; }
left() { local s=$((BUDGET_S - (SECONDS - START))); echo $((s > 1 ? s : 1)); }

stamp "installing .whl/ into $SITE"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH=$SITE:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

stamp "versions"
"$PYTHON" -c "
import reclor_lab, torch, transformers, peft, accelerate, bitsandbytes as b, pytest  # reclor_lab first: it quiets a bitsandbytes CPU notice
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device'
bf16 = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None
print('python', __import__('sys').version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__,
      '| peft', peft.__version__, '| accelerate', accelerate.__version__, '| bitsandbytes', b.__version__,
      '| pytest', pytest.__version__, '|', gpu, '| bf16', bf16)
" 2>&1 | tee "$OUT/versions.txt"
[[ ${PIPESTATUS[0]} -eq 0 ]] || exit 1

stamp "bench: $VARIANTS"
timeout "$(left)" "$PYTHON" bench/gpu_llama7b.py $DRY --steps "$STEPS" --gpu-memory 24GiB --variants "$VARIANTS" \
  --json "$OUT/gpu_llama7b.json" 2>&1 | tee "$OUT/gpu_llama7b.log"
bench=${PIPESTATUS[0]}

stamp "GPU tests"
timeout "$(left)" "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" -m gpu -rs tests/test_gpu.py 2>&1 \
  | tee "$OUT/gpu-tests.log"
tests=${PIPESTATUS[0]}

stamp "planner"
{ "$PYTHON" -m reclor_lab plan --preset llama2-7b --gpu-memory 24GiB --breakdown
  "$PYTHON" -m reclor_lab plan --preset llama2-7b --gpu-memory 15GiB --set compute_dtype=float16 --max-len 512
} > "$OUT/plan.txt" 2>&1
plan=$?
tail -n 2 "$OUT/plan.txt"

stamp "done: bench exit $bench, GPU tests exit $tests, plan exit $plan (124: cut off by the ${BUDGET_S} s budget)"
[[ $bench -eq 0 && $plan -eq 0 && ( $tests -eq 0 || -n "$DRY" && $tests -eq 5 ) ]]
