"""How many torch threads should a notebook use on a shared machine?

Executes notebooks 04-06 (``jupyter nbconvert --execute``, kernel start included, into a
temporary folder; the repository's notebooks and runs are not touched: the kernels work in a
temporary ``RECLOR_LAB_WORKDIR``) at each thread setting, idle and with the cores loaded by two
busy processes per core (``python3 -c 'while True: pass'``, always stopped afterwards). The
setting reaches the kernel as ``OMP_NUM_THREADS``, which torch reads at start and
``start_notebook`` honours. Settings alternate within each load level, so the ratios compare runs
made side by side; the load average (1 min) is recorded before each notebook, because "idle" on
a shared machine is rarely idle.

A notebook still running after ``--timeout`` seconds is stopped and recorded as ``> timeout``
(a lower bound): on a loaded machine torch's default can take many times the idle time. The
notebooks after it at that setting are then not measured (05 and 06 read 04's run).

    python bench/notebook_threads.py [--threads 1,2] [--rounds 1] [--levels idle,loaded]
                                     [--notebooks 04_training_loop,...] [--timeout 900] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("04_training_loop", "05_results", "06_baselines_and_errors")


def load_average() -> float:
    return os.getloadavg()[0]


def start_busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def execute(notebook: str, threads: int, workdir: Path, out_dir: Path, timeout: int) -> float | None:
    """Seconds to execute one notebook at ``threads`` torch threads (None: past ``timeout``)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), RECLOR_LAB_WORKDIR=str(workdir),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    jupyter = Path(sys.executable).with_name("jupyter")
    cmd = [str(jupyter), "nbconvert", "--to", "notebook", "--execute", f"--ExecutePreprocessor.timeout={timeout}",
           "--output-dir", str(out_dir), str(REPO_ROOT / "notebooks" / f"{notebook}.ipynb")]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None  # subprocess.run killed the nbconvert process; its kernel exits with it
    if done.returncode != 0:
        raise RuntimeError(f"{notebook} at {threads} threads failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default=f"1,{os.cpu_count()}", help="thread settings to compare")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--busy-per-core", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per notebook")
    ap.add_argument("--notebooks", default=",".join(NOTEBOOKS))
    ap.add_argument("--levels", default="idle,loaded", help="idle, loaded or both")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    settings = [int(t) for t in args.threads.split(",")]
    notebooks = args.notebooks.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir, out_dir = Path(tmp) / "work", Path(tmp) / "out"
        workdir.mkdir()
        for rnd in range(args.rounds):
            for loaded in [level == "loaded" for level in args.levels.split(",")]:
                order = settings if (rnd + loaded) % 2 == 0 else settings[::-1]
                busy = start_busy(args.busy_per_core * os.cpu_count()) if loaded else []
                try:
                    time.sleep(5 if loaded else 0)
                    for threads in order:
                        for nb in notebooks:
                            la = load_average()
                            seconds = execute(nb, threads, workdir, out_dir, args.timeout)
                            row = dict(round=rnd, loaded=loaded, threads=threads, notebook=nb,
                                       seconds=None if seconds is None else round(seconds, 1),
                                       timed_out=seconds is None, load_avg_before=round(la, 2))
                            rows.append(row)
                            print(json.dumps(row), flush=True)
                            if seconds is None:
                                break  # the next notebooks read this one's run: not measured at this setting
                finally:
                    stop(busy)
    print()
    print(f"{'notebook':<26}{'load':>8}" + "".join(f"{f'{t} thr (s)':>12}" for t in settings))
    for nb in notebooks:
        for loaded in (False, True):
            cells = []
            for t in settings:
                xs = [r["seconds"] if r["seconds"] is not None else float("inf") for r in rows
                      if r["notebook"] == nb and r["loaded"] == loaded and r["threads"] == t]
                median = sorted(xs)[len(xs) // 2] if xs else None
                cells.append(f"{'-':>12}" if median is None else f"{'> ' + str(args.timeout):>12}"
                             if median == float("inf") else f"{median:>12.1f}")
            print(f"{nb:<26}{'loaded' if loaded else 'idle':>8}" + "".join(cells))
    if args.json:
        args.json.write_text(json.dumps({"cpu": _cpu(), "rows": rows}, indent=2))
    return 0


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
