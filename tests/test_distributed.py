"""Data parallel on a CPU: two processes with the gloo backend, as CI runs them.

One scenario, kept small for a 2-core CI machine (33 training examples, 11 validation examples,
2 epochs of 5 optimizer steps; three launches of ~15 s):

- ``reclor-lab train --processes 2`` at 4 examples per process, against one process at 8;
- the same 2-process run stopped after step 3 (inside epoch 1) and resumed under 2 processes,
  against the uninterrupted one, bit for bit.

33 = 4 × 8 + 1: the last batch of every epoch holds one example, so one process's part of it
is empty (it runs a weight-0 example to take part in the all-reduce). 11 validation examples
split 6 + 5: every example counts once, none is padded in.

LoRA dropout is 0 here: each process draws its own dropout masks for its own part of a batch,
which are other draws than one process makes for the whole batch. With dropout the two runs are
equally valid samples of the same training, not the same numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from procs import run
from reclor_lab.config import get_preset
from reclor_lab.runs.distributed import shard, shard_scale
from reclor_lab.runs.rundir import RunDir

pytestmark = pytest.mark.slow

COMMON = dict(train_limit=33, eval_limit=11, epochs=2, lora_dropout=0.0)
PER_PROCESS_BATCH = 4
#: Tolerance on each step's train loss and each eval loss between 2 processes at batch b and one
#: at 2b. The two compute the same sums in another order: DDP adds the two processes' gradients
#: (one fp32 rounding per element, u = 2^-24 ≈ 6e-8 relative) after each part was padded to its
#: own longest example (other matmul shapes, so other blocking of the same dot products: a few u
#: each). These perturb each step's update by ~1e-6 relative; Adam and clipping carry them over
#: 10 steps. Measured: at most 3e-7 on losses of about 1.3. 1e-5 (about 100 u per step over 10
#: steps) leaves a margin of 30x for other CPUs, and still catches any real mistake (a batch
#: counted twice, a wrong loss scale on an unequal part), which moves the loss by 1e-2 or more.
LOSS_TOLERANCE = 1e-5
#: Seconds one launch may take (~15 s idle): below pytest's per-test timeout (pyproject), so a
#: stuck launch fails here and its launcher and workers are killed (tests/procs.py), where
#: pytest-timeout would end the whole pytest process and leave them running.
LAUNCH_TIMEOUT = 600


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1", OMP_NUM_THREADS="1")


def _overrides(batch_size: int) -> list[str]:
    return [f"--set={k}={json.dumps(v)}" for k, v in {**COMMON, "batch_size": batch_size}.items() if k != "epochs"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "reclor_lab", "train", "--preset", "tiny", *args], env=_env(),
               timeout=LAUNCH_TIMEOUT)


def _adapter(run_dir: Path, epoch: int) -> dict:
    from safetensors.torch import load_file

    return load_file(RunDir(run_dir).checkpoint_dir(f"epoch-{epoch:03d}") / "adapter_model.safetensors")


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.name != ".lock"}


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    """The 2-process run, through the ``--processes`` command line."""
    run_dir = tmp_path_factory.mktemp("dist") / "two"
    r = _cli("--processes", "2", "--output-dir", str(run_dir), "--epochs", str(COMMON["epochs"]),
             *_overrides(PER_PROCESS_BATCH))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes, 4 examples each: effective batch 8" in r.stdout
    return run_dir


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    from reclor_lab.runs.job import train_run

    run_dir = tmp_path_factory.mktemp("dist") / "one"
    train_run(get_preset("tiny", output_dir=str(run_dir), **{**COMMON, "batch_size": 2 * PER_PROCESS_BATCH}),
              verbose=False)
    return run_dir


def test_shards_are_disjoint_and_cover_every_batch():
    for n in range(0, 12):
        batch = list(range(100, 100 + n))
        parts = [shard(batch, r, 3) for r in range(3)]
        assert sum(parts, []) == batch
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shard_scales_make_ddp_average_the_whole_batch_loss():
    """DDP averages the processes' gradients; each process's loss scale must turn that average
    into the gradient of the whole batch's weighted mean loss."""
    torch.manual_seed(0)
    labels = [0, 1, 1, 2, 3]
    weights = torch.tensor([1.0, 0.5, 2.0, 1.5])
    logits = torch.randn(5, 4, requires_grad=True)
    from reclor_lab.loss import weighted_cross_entropy

    whole = torch.autograd.grad(weighted_cross_entropy(logits, torch.tensor(labels), weights), logits)[0]
    batch, grads = list(range(5)), torch.zeros(5, 4)
    for r in range(2):
        part = shard(batch, r, 2)
        s = shard_scale(batch, part, labels, weights, 2)
        loss = weighted_cross_entropy(logits[part], torch.tensor([labels[i] for i in part]), weights) * s
        grads += torch.autograd.grad(loss, logits)[0]
    assert torch.allclose(grads / 2, whole, atol=1e-7)
    assert shard_scale([7], [], [0] * 8, None, 2) == 0.0


def test_two_processes_match_one_at_twice_the_batch(two, one):
    h2, h1 = (json.loads((d / "history.json").read_text()) for d in (two, one))
    assert len(h2["steps"]) == len(h1["steps"]) == 10
    np.testing.assert_allclose([s["loss"] for s in h2["steps"]], [s["loss"] for s in h1["steps"]],
                               rtol=0, atol=LOSS_TOLERANCE)
    assert [s["lr"] for s in h2["steps"]] == [s["lr"] for s in h1["steps"]]
    np.testing.assert_allclose([e["eval_loss"] for e in h2["evals"]], [e["eval_loss"] for e in h1["evals"]],
                               rtol=0, atol=LOSS_TOLERANCE)
    # tokens per epoch count the whole batch, whoever processed it
    assert [e["tokens"] for e in h2["epochs"]] == [e["tokens"] for e in h1["epochs"]]
    m2, m1 = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    assert m2["best_epoch"] == m1["best_epoch"]
    # logits agree to ~1e-6: a prediction could only flip on a near-tie, so allow one example
    assert abs(m2["accuracy"] - m1["accuracy"]) <= 1 / 11 + 1e-12
    # The weights: Adam divides each gradient element by its running RMS, so an element whose
    # gradient is near zero turns a 1e-7 difference into a step of up to ~lr in another
    # direction. Bound: every element within 2 lr (one step each way); nearly all within 1e-5.
    lr = get_preset("tiny").learning_rate
    a, b = _adapter(two, 2), _adapter(one, 2)
    assert a.keys() == b.keys()
    diffs = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    assert diffs.max() <= 2 * lr
    assert (diffs <= LOSS_TOLERANCE).float().mean() >= 0.99


def test_evaluation_counts_each_example_once(two, one):
    """11 validation examples over 2 processes: 6 + 5, gathered in order, none duplicated. The
    baseline is the untrained model, the same on both, so its numbers agree exactly."""
    h2, h1 = (json.loads((d / "history.json").read_text()) for d in (two, one))
    for e in h2["evals"]:
        assert np.asarray(e["confusion_matrix"]).sum() == 11
    assert h2["evals"][0]["accuracy"] == h1["evals"][0]["accuracy"]
    assert h2["evals"][0]["eval_loss"] == pytest.approx(h1["evals"][0]["eval_loss"], abs=1e-6)
    rows = json.loads((two / "val-predictions.json").read_text())
    assert len(rows) == 11 and len({r["id_string"] for r in rows}) == 11


def test_two_processes_write_the_run_directory_a_single_process_writes(two, one):
    assert _files(two) == _files(one)
    cfg = json.loads((two / "config.json").read_text())
    assert cfg["batch_size"] == PER_PROCESS_BATCH  # per process, as given


def test_stop_inside_an_epoch_and_resume_under_two_processes_is_bit_identical(two, tmp_path):
    run_dir = tmp_path / "split"
    script = Path(__file__).parent / "distributed_run.py"
    overrides = json.dumps({**COMMON, "batch_size": PER_PROCESS_BATCH})
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(script), str(run_dir), overrides, "--stop-after-step", "3"], env=_env(), timeout=LAUNCH_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    state = RunDir(run_dir).read_state()
    assert (state["last"], state["last_step"]) == ("step-000003", 3)

    r = _cli("--resume", "--processes", "2", "--output-dir", str(run_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout and r.stdout.count("resuming") == 1  # only the main process prints
    h_split, h_two = (json.loads((d / "history.json").read_text()) for d in (run_dir, two))
    assert [s["loss"] for s in h_split["steps"]] == [s["loss"] for s in h_two["steps"]]
    assert [e["eval_loss"] for e in h_split["evals"]] == [e["eval_loss"] for e in h_two["evals"]]
    a, b = _adapter(run_dir, 2), _adapter(two, 2)
    for k in a:
        assert torch.equal(a[k], b[k]), k

    r = _cli("--resume", "--output-dir", str(run_dir), "--epochs", "3")  # one process: refused, clearly
    assert r.returncode == 1 and "trained on 2 processes" in r.stderr and "Traceback" not in r.stderr
