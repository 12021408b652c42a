"""Data-parallel scaling on the tiny preset: training tokens/s of ``reclor-lab train --processes N``
for N = 1, 2, … side by side, in one run on one machine.

Each N trains the same examples for the same epochs at the same *effective* batch (``--batch``
examples per optimizer step, ``batch / N`` per process), so every run computes the same steps
and only the division of work differs. tokens/s is the run's own figure (history.json: the real
tokens of every whole batch over the main process's training time, evaluation excluded); the
median epoch is reported (epoch 1 includes the warm-up). The cores are shared out evenly:
``OMP_NUM_THREADS = cores // N`` per process, so N = 1 uses every core too.

On a 2-core CPU expect little or nothing from 2 processes: the gradient all-reduce (gloo) and a
second copy of the model's work compete for the same two cores that one process's two threads
already use. The figure is stated honestly either way; on GPUs each process has its own.

    python bench/processes.py [--processes 1,2] [--examples 64] [--epochs 3] [--batch 8] [--quick] [--json PATH]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, Report, finish, parser


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--processes", default="1,2", help="comma-separated process counts (default 1,2)")
    p.add_argument("--examples", type=int, default=64, help="training examples (cfg.train_limit)")
    p.add_argument("--eval-examples", type=int, default=8, help="validation examples (kept small)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the median epoch is reported")
    p.add_argument("--batch", type=int, default=8, help="effective batch: examples per optimizer step")
    args = p.parse_args()
    if args.quick:
        args.examples, args.epochs = 16, 2
    counts = [int(n) for n in args.processes.split(",")]
    if any(args.batch % n for n in counts):
        raise SystemExit(f"--batch {args.batch} must divide by every process count {counts}")
    cores = os.cpu_count() or 1

    report = Report("data-parallel scaling on the tiny preset: reclor-lab train --processes N")
    report.settings = {"examples": args.examples, "epochs": args.epochs, "effective_batch": args.batch,
                       "eval_examples": args.eval_examples}
    tps = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            run_dir = Path(tmp) / f"p{n}"
            cmd = [sys.executable, "-m", "reclor_lab", "train", "--preset", "tiny", "--processes", str(n),
                   "--output-dir", str(run_dir), "--epochs", str(args.epochs),
                   f"--set=train_limit={args.examples}", f"--set=eval_limit={args.eval_examples}",
                   f"--set=batch_size={args.batch // n}"]
            threads = max(1, cores // n)
            env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", OMP_NUM_THREADS=str(threads))
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                raise SystemExit(f"--processes {n} failed (exit {proc.returncode}); its output is above")
            epochs = json.loads((run_dir / "history.json").read_text())["epochs"]
            tps[n] = statistics.median(e["tokens_per_second"] for e in epochs)
            report.add(f"{n} process{'es' if n > 1 else ''}: tokens/s", tps[n], "tokens/s",
                       f"{args.batch // n} examples per process, {threads} thread(s) each; epochs: "
                       + ", ".join(f"{e['tokens_per_second']:,.0f}" for e in epochs), show=True)
            report.add(f"{n} process{'es' if n > 1 else ''}: wall time", time.perf_counter() - t0, "s",
                       "launch + imports + setup + training + evaluation")
    base = counts[0]
    for n in counts[1:]:
        report.add(f"{n} vs {base} process{'es' if base > 1 else ''}", tps[n] / tps[base], "x",
                   f"ideal {n / base:.0f}x; same steps, same tokens")
    finish(report, args.json)


if __name__ == "__main__":
    main()
