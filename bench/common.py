"""Shared plumbing of the benchmark scripts: machine info, timing, the ReClor-size data set,
result tables and ``--json`` output.

Every script in ``bench/`` is a plain Python program run from the repository root::

    python bench/data_prep.py [--quick] [--json bench/results/data_prep.json]

Timings use ``time.perf_counter``: a few warm-up calls that are thrown away, then several
repetitions, and the median is reported (it ignores the odd slow run caused by another process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

# Benchmarks never touch the network: fail fast instead of waiting for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/x.py` puts bench/, not the root, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

#: The official ReClor release, when someone has put it here (see data/README.md).
OFFICIAL_RECLOR_DIR = REPO_ROOT / "data" / "reclor"
#: Split sizes of the official ReClor release.
RECLOR_SIZES = {"train": 4638, "val": 500, "test": 1000}
#: Seed of the generated ReClor-size set (independent of the bundled data's seed).
BENCH_SEED = 1234
#: Context length in words of the generated set: log-normal around ~94 words (5 %-95 %:
#: ~55-150), like ReClor's passages, which are longer than the bundled ones.
CONTEXT_WORDS_MEDIAN = 90
CONTEXT_WORDS_SIGMA = 0.3
#: Versions printed with every result.
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "tokenizers", "accelerate")


# --- machine ------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, cores, GPU (if any), Python and package versions."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }
    for pkg in PACKAGES:
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    return info


# --- timing -------------------------------------------------------------------------------------

@dataclass
class Timing:
    """Median and every sample (seconds) of :func:`timeit`."""

    median: float
    samples: list[float]


def timeit(fn: Callable[[], Any], warmup: int = 1, repeat: int = 5) -> Timing:
    """Call ``fn`` ``warmup`` times (not timed), then ``repeat`` times timed with perf_counter."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing(statistics.median(samples), samples)


# --- results ------------------------------------------------------------------------------------

@dataclass
class Report:
    """One benchmark's results: rows of (name, value, unit, note) plus goals met or missed."""

    title: str
    machine: dict[str, Any] = field(default_factory=machine_info)
    settings: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, value: Any, unit: str = "", note: str = "", show: bool = False) -> Any:
        self.rows.append({"name": name, "value": value, "unit": unit, "note": note})
        if show:  # print as soon as it is known (long runs, lent GPUs)
            print(f"  {name}: {_fmt(value)} {unit}" + (f"  ({note})" if note else ""), flush=True)
        return value

    def goal(self, text: str, met: bool | None, detail: str = "") -> None:
        """``met=None``: not measured on this machine (e.g. no GPU)."""
        self.goals.append({"goal": text, "met": met, "detail": detail})

    def table(self) -> str:
        m = self.machine
        lines = [f"== {self.title} ==",
                 f"machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
                 f"GPU: {m['gpu'] or 'none'}",
                 "versions: " + ", ".join(f"{k} {m[k]}" for k in ("python", *PACKAGES) if m.get(k))]
        if self.settings:
            lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()))
        w0 = max([len(r["name"]) for r in self.rows] + [6])
        w1 = max([len(_fmt(r["value"])) for r in self.rows] + [5])
        w2 = max([len(r["unit"]) for r in self.rows] + [4])
        lines.append(f"{'figure':<{w0}}  {'value':>{w1}}  {'unit':<{w2}}  note")
        lines.append(f"{'-' * w0}  {'-' * w1}  {'-' * w2}  ----")
        for r in self.rows:
            lines.append(f"{r['name']:<{w0}}  {_fmt(r['value']):>{w1}}  {r['unit']:<{w2}}  {r['note']}".rstrip())
        for g in self.goals:
            mark = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[g["met"]]
            lines.append(f"goal: {g['goal']}: {mark}" + (f" ({g['detail']})" if g["detail"] else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def reference_cleanup(device) -> None:
    """What the reference solution does after every step, measured as it is: clear the CUDA
    cache (on a CPU, which has none, ``gc.collect()`` stands in: a forced clean-up per step)."""
    import gc

    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        gc.collect()


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--quick", action="store_true", help="fewer repetitions / steps: a smoke run in seconds")
    return p


def finish(report: Report, json_path: str | None) -> None:
    """Print the table; write the JSON when asked."""
    print()
    print(report.table(), flush=True)
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")


# --- the ReClor-size data set ---------------------------------------------------------------------

def _extend_contexts(records: list[dict], rng: random.Random) -> list[dict]:
    """Lengthen each context to a log-normal target word count by appending other records'
    passages (lengths matter here, not meaning)."""
    pool = [r["context"] for r in records]
    out = []
    for rec in records:
        target = rng.lognormvariate(0.0, CONTEXT_WORDS_SIGMA) * CONTEXT_WORDS_MEDIAN
        context = rec["context"]
        while len(context.split()) < target:
            context += " " + rng.choice(pool)
        out.append({**rec, "context": context})
    return out


def reclor_size_records(seed: int = BENCH_SEED) -> tuple[dict[str, list[dict]], str]:
    """The three splits of a ReClor-size set and where they came from.

    The official files in ``data/reclor/`` when all three are there; otherwise records written by
    :func:`reclor_lab.tools.synth.generate_split` in the official sizes, with contexts lengthened to
    ReClor-like lengths (the bundled passages are shorter).
    """
    from reclor_lab.data import load_split

    if all((OFFICIAL_RECLOR_DIR / f"{s}.json").exists() for s in RECLOR_SIZES):
        return {s: load_split(OFFICIAL_RECLOR_DIR, s) for s in RECLOR_SIZES}, f"official ReClor ({OFFICIAL_RECLOR_DIR})"
    from reclor_lab.tools.synth import generate_split

    rng = random.Random(seed)
    splits = {s: _extend_contexts(generate_split(s, n, seed=seed), rng) for s, n in RECLOR_SIZES.items()}
    return splits, f"generated by reclor_lab.tools.synth (seed {seed}), contexts lengthened to ReClor-like lengths"


def write_splits(splits: dict[str, list[dict]], folder: Path) -> Path:
    """Write the splits as ``train.json`` / ``val.json`` / ``test.json`` (official layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        (folder / f"{split}.json").write_text(json.dumps(records), encoding="utf-8")
    return folder


def default_tokenizer_path() -> str:
    from reclor_lab.config import TINY_MODEL_DIR

    return str(TINY_MODEL_DIR)


def check_model_dir(path: str, what: str = "--tokenizer") -> None:
    """Fail with a fix when a local model / tokenizer folder is missing (never download)."""
    if not Path(path).exists():
        raise SystemExit(f"{path} does not exist. Build the tiny model first (reclor-lab tiny build) "
                         f"or pass {what} PATH to a local model folder (nothing is downloaded).")
