"""``bench/gpu_llama7b.py --dry-run``: every variant of the GPU benchmark runs on the CPU with a
tiny model of the same architecture, and the table has a row for each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from reclor_lab.config import REPO_ROOT

pytestmark = pytest.mark.slow


def test_gpu_bench_dry_run_runs_every_variant_on_the_cpu(tmp_path):
    out = tmp_path / "dry.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, also on a machine with a GPU
    proc = subprocess.run([sys.executable, "bench/gpu_llama7b.py", "--dry-run", "--json", str(out),
                           "--variants", "trainer,kit-auto,kit-ref,kit-sqrt"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout[proc.stdout.index("variant "):]
    for name in ("reference Trainer", "kit default (auto)", "kit at the reference's shape", "kit auto sqrt-lr"):
        assert name in table
    result = json.loads(out.read_text())
    assert result["goals"] == [{"goal": "every variant ran", "met": True, "detail": "CPU dry run"}]
    names = {r["name"] for r in result["rows"]}
    assert "kit default (auto): tokens_per_second" in names and "reference Trainer: predicted_gib" in names
    assert "2x1, ckpt off" in table  # auto at the default 24 GiB: the reference's 2 a step, no checkpointing
