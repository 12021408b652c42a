"""Stress the tests that start process groups or child processes: N pytest runs of them, each a
fresh pytest process under a hard wall-clock limit, in a random order mixed with a neighbour, and
a table of hangs (a run still going at the limit, idle) and failures. Not part of ``make test``.

Issue 33: ``make test`` once hung for good inside ``~ProcessGroupGloo`` (a DDP wrapper that outlived
its gloo group in the pytest process); it showed in about 1 of 2 runs of three files together and
never in the test alone, so one passing run proves nothing and each run here starts clean.

Every run shuffles the order of the files and the order of the tests within each file (tests of
one file stay together: test_distributed's module fixtures launch runs, and would launch again if
its tests were interleaved with other files'). ``--load K`` keeps K busy-loop processes running
through all the runs (the loaded case: CI's 2 cores shared) and always stops them.

    python bench/stress_processes.py [--runs 30] [--load K] [--limit 600] [--quick] [--seed S]
        [--files tests/a.py tests/b.py ...] [--json PATH]

``--quick``: only the in-process check of issue 33 and its neighbours, without the two-process
launches (test_distributed's and test_faults' ~15-30 s launches); about 25 s a run idle.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO_ROOT, Report, finish, parser

sys.path.insert(0, str(REPO_ROOT / "tests"))
from procs import descendants, kill_tree  # noqa: E402  (tests/procs.py: kills a child and everything below it)

#: What starts a process group or child processes in the suite (grep for init_process_group,
#: Popen, multiprocessing, torch.distributed.run), and the neighbour it hung beside.
FILES = ["tests/test_private_apis.py", "tests/test_distributed.py", "tests/test_eval_loss.py",
         "tests/test_faults.py::test_a_two_process_run_killed_or_stopped_is_one_line_and_leaves_the_checkpoint_intact"]
#: ``--quick``: the same, less the launches of two-process runs.
QUICK = ["tests/test_private_apis.py", "tests/test_eval_loss.py",
         "tests/test_distributed.py::test_shards_are_disjoint_and_cover_every_batch",
         "tests/test_distributed.py::test_shard_scales_make_ddp_average_the_whole_batch_loss"]


def collect(targets: list[str]) -> dict[str, list[str]]:
    """The test ids under each target, grouped by file, in collection order."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          *targets], cwd=REPO_ROOT, capture_output=True, text=True)
    ids = [line for line in out.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if out.returncode != 0 or not ids:
        sys.exit(f"collection failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    files: dict[str, list[str]] = {}
    for i in ids:
        files.setdefault(i.split("::")[0], []).append(i)
    return files


def busy_loops(k: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes have used so far (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


#: Seconds over which a run past its limit is watched: a hang uses (almost) no CPU, a slow run does.
IDLE_WINDOW = 5.0


def one_run(ids: list[str], limit: float, env: dict) -> tuple[str, float, str]:
    """(``passed`` / ``failed`` / ``hang`` / ``slow``, seconds, the output's tail). A run still
    going at ``limit`` is a hang if its processes used under 5 % of a core over the next 5 s,
    else ``slow`` (a loaded machine, not a deadlock); either way it is killed there."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *ids], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=limit)
        status = "passed" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        family = [proc.pid, *descendants(proc.pid)]
        before = cpu_seconds(family)
        time.sleep(IDLE_WINDOW)
        used = cpu_seconds(family) - before
        status = "hang" if used < 0.05 * IDLE_WINDOW else "slow"
        kill_tree(proc)  # the stuck pytest and whatever it started
        out, _ = proc.communicate()  # what it printed before
        out += f"\n[{status}: {used:.2f} CPU s in the {IDLE_WINDOW:.0f} s after the limit]"
    finally:
        kill_tree(proc)  # also on Ctrl-C
    return status, time.perf_counter() - start, out[-3000:]


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=30, help="pytest runs (default 30)")
    p.add_argument("--load", type=int, default=0, metavar="K", help="busy-loop processes running meanwhile")
    p.add_argument("--limit", type=float, default=600.0, help="seconds a run may take before it counts as a hang")
    p.add_argument("--seed", type=int, default=None, help="the orders' seed (default: drawn, and printed)")
    p.add_argument("--files", nargs="+", help="test files or ids to run instead of the default set")
    args = p.parse_args()
    targets = args.files or (QUICK if args.quick else FILES)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    files = collect(targets)
    env = dict(os.environ, TQDM_DISABLE="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    report = Report("stress: process groups and child processes under pytest",
                    settings=dict(runs=args.runs, load=args.load, limit_s=args.limit, seed=seed,
                                  tests=sum(map(len, files.values())), files=" ".join(files),
                                  OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "unset"),
                                  avx512_bf16="avx512_bf16" in Path("/proc/cpuinfo").read_text()))
    print(f"seed {seed}; {args.runs} runs of {report.settings['tests']} tests; load {args.load}", flush=True)
    results = []
    loops = busy_loops(args.load)
    try:
        for n in range(1, args.runs + 1):
            order = list(files)
            rng.shuffle(order)
            ids = [i for f in order for i in rng.sample(files[f], len(files[f]))]
            status, seconds, tail = one_run(ids, args.limit, env)
            load1 = os.getloadavg()[0]
            results.append((status, seconds, load1))
            names = " ".join(Path(f).stem.removeprefix("test_") for f in order)
            print(f"run {n:3d}  {status:6s}  {seconds:6.1f} s  load {load1:4.1f}  {names}", flush=True)
            if status != "passed":
                print("    " + "\n    ".join(tail.splitlines()[-12:]), flush=True)
    finally:
        for proc in loops:
            proc.kill()
            proc.wait()
    times = [s for _, s, _ in results]
    report.add("runs", len(results))
    report.add("hangs", sum(r[0] == "hang" for r in results), note=f"idle at {args.limit:.0f} s, killed")
    report.add("too slow", sum(r[0] == "slow" for r in results), note=f"busy at {args.limit:.0f} s, killed")
    report.add("failures", sum(r[0] == "failed" for r in results))
    report.add("time per run, median", statistics.median(times), "s", f"min {min(times):.1f}, max {max(times):.1f}")
    report.add("load average (1 min) after a run, median", statistics.median(r[2] for r in results), "",
               f"min {min(r[2] for r in results):.1f}, max {max(r[2] for r in results):.1f}")
    report.goal("no hang", not any(r[0] == "hang" for r in results))
    report.goal("every run within the limit", not any(r[0] == "slow" for r in results))
    report.goal("no failure", not any(r[0] == "failed" for r in results))
    finish(report, args.json)


if __name__ == "__main__":
    main()
