"""What a kit process pays before its first useful line, with bitsandbytes' compiles deferred or not.

Each round starts fresh Python processes (``python -I``, one torch thread), alternating the two
settings of ``RECLOR_LAB_EAGER_BNB_COMPILE`` (``reclor_lab/runs/bnb_import.py``), so that a shared
machine's load falls on both. Two jobs are timed, start to exit of the process:

* ``imports``: ``import reclor_lab``, bitsandbytes and transformers' sequence-classification model
  (what every notebook kernel, command and test process that touches the model imports);
* ``grading sandbox start``: the grading runner's start as in ``course grade``'s sandbox: the
  runner's imports and the tiny 4-bit model with its LoRA adapters built from the kit's files.

Medians per setting and their ratio; the 1-minute load average at the start and the end.

    python bench/import_cost.py [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
JOBS = {
    "imports": "import reclor_lab, bitsandbytes\nfrom transformers import AutoModelForSequenceClassification",
    "grading sandbox start": "import reclor_lab.course.runner as r\nr.with_lora(r.tiny_model())",
}
SETTINGS = {"deferred (the kit's default)": "0", "eager (bitsandbytes as it comes)": "1"}


def seconds(code: str, eager: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", RECLOR_LAB_EAGER_BNB_COMPILE=eager, HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO_ROOT))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO_ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="two rounds")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    load_start = os.getloadavg()[0]
    times: dict[str, dict[str, list[float]]] = {job: {s: [] for s in SETTINGS} for job in JOBS}
    for k in range(rounds):
        for job, code in JOBS.items():
            order = list(SETTINGS.items()) if k % 2 == 0 else list(SETTINGS.items())[::-1]
            for name, eager in order:
                times[job][name].append(seconds(code, eager))
    load_end = os.getloadavg()[0]
    info = machine_info()
    print("== start-up cost of a kit process: bitsandbytes' compiles deferred vs eager ==")
    bf16 = "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    print(f"machine: {info.get('cpu')}, {info.get('cores')} cores, avx512_bf16: {bf16}")
    print(f"load average (1 min): {load_start:.1f} at the start, {load_end:.1f} at the end")
    print(f"{rounds} rounds, settings alternating; medians, seconds from start to exit")
    deferred, eager = SETTINGS
    rows = []
    for job in JOBS:
        d, e = statistics.median(times[job][deferred]), statistics.median(times[job][eager])
        rows.append({"job": job, "deferred_s": d, "eager_s": e, "eager_over_deferred": e / d,
                     "deferred_all": times[job][deferred], "eager_all": times[job][eager]})
        print(f"  {job:<24} deferred {d:6.2f} s   eager {e:6.2f} s   eager / deferred {e / d:4.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "load_start": load_start, "load_end": load_end,
                                         "rounds": rounds, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
