"""The fault table (:mod:`faults`): every fault against a finished tiny run ends in a survival
or one clear error line, with nothing lost; and the run-start, ensure_trained and token-cache
guarantees that the table cannot express as one command."""

from __future__ import annotations

import json
import shutil

import pytest

import faults
from procs import children, started
from reclor_lab.runs.rundir import RunDir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return faults.make_base(tmp_path_factory.mktemp("faults-base"))


@pytest.mark.parametrize("fault", faults.FAULTS, ids=[f.name for f in faults.FAULTS])
def test_a_fault_ends_in_a_survival_or_one_clear_line_and_loses_nothing(base, tmp_path, monkeypatch, fault):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    outcome, seen = faults.classify(fault, faults.make_case(*base, tmp_path / "case"))
    assert outcome == ("survived" if fault.expect is None else "clear error"), seen


def test_one_resume_decides_once_checks_its_config_once_and_reads_config_json_once(base, tmp_path, monkeypatch):
    """The run is started in one place (RunDir.open): the lock, one decision, one config check,
    one read of config.json, for `train --resume` all the way to its metrics."""
    from reclor_lab import cli, config
    from reclor_lab.runs.rundir import RunDir as RD

    case = faults.make_case(*base, tmp_path / "case")
    (case.run / "metrics.json").unlink()
    counts = {"decide": 0, "check_resume_config": 0, "load": 0}

    def counting(owner, name, key):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            counts[key] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapper if not isinstance(real, classmethod) else classmethod(wrapper))

    counting(RD, "decide", "decide")
    counting(RD, "check_resume_config", "check_resume_config")
    real_load = config.RunConfig.load.__func__
    monkeypatch.setattr(config.RunConfig, "load",
                        classmethod(lambda cls, path: (counts.__setitem__("load", counts["load"] + 1),
                                                       real_load(cls, path))[1]))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert cli.main(["train", "--resume", "--output-dir", str(case.run)]) == 0
    assert counts == {"decide": 1, "check_resume_config": 1, "load": 1}
    assert (case.run / "metrics.json").is_file()


def test_ensure_trained_finishes_a_run_that_only_lacks_metrics_and_deletes_nothing(base, tmp_path, monkeypatch):
    from reclor_lab.runs.job import ensure_trained

    case = faults.make_case(*base, tmp_path / "case")
    (case.run / "metrics.json").unlink()
    checkpoints = faults.snapshot(case.run / "checkpoints")
    cfg = RunDir(case.run).load_config()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert "was missing or unfinished" in ensure_trained(cfg)
    assert faults.snapshot(case.run / "checkpoints") == checkpoints  # not retrained, nothing removed
    assert json.loads((case.run / "metrics.json").read_text())["best_epoch"] == 1
    # a different run in the folder is refused, and kept
    (case.run / "metrics.json").unlink()
    with pytest.raises(faults_error(), match="holds another run"):
        ensure_trained(cfg.replace(lora_r=4))
    assert faults.snapshot(case.run / "checkpoints") == checkpoints


def faults_error():
    from reclor_lab.errors import RunDirError

    return RunDirError


def test_the_class_weights_come_from_the_run_not_its_data_folder(base, tmp_path):
    from reclor_lab.runs.job import _reloaded

    case = faults.make_case(*base, tmp_path / "case")
    saved = json.loads((case.run / "data.json").read_text())["class_weights"]
    records = json.loads((case.data / "train.json").read_text())
    for r in records:
        r["label"] = 0  # the data folder's labels change: the run's weights do not
    (case.data / "train.json").write_text(json.dumps(records))
    _, run = _reloaded(case.run)
    assert run.weights.tolist() == pytest.approx(saved)


def test_a_token_cache_entry_rewritten_with_a_recomputed_inner_checksum_is_not_served(tmp_path, tiny_tokenizer):
    import datasets

    from reclor_lab.runs import cache as token_cache
    from reclor_lab.config import BUNDLED_DATA_DIR
    from reclor_lab.data import load_split, tokenize_records

    records = load_split(BUNDLED_DATA_DIR, "val")[:8]
    good, _ = tokenize_records(records, tiny_tokenizer, 256, cache=tmp_path)
    (entry,) = (tmp_path / token_cache.SUBDIR).iterdir()
    bad = good.to_dict()
    bad["labels"] = [(x + 1) % 4 for x in bad["labels"]]
    shutil.rmtree(entry)
    forged = datasets.Dataset.from_dict(bad)
    forged.save_to_disk(str(entry))
    (entry / token_cache.CHECKSUM_FILE).write_text(token_cache.checksum(forged, entry.name) + "\n")
    with pytest.warns(UserWarning, match="checksum that does not match"):
        again, _ = tokenize_records(records, tiny_tokenizer, 256, cache=tmp_path)
    assert again.to_dict() == good.to_dict()


def test_a_live_reader_retries_when_training_prunes_the_checkpoint_it_read(tmp_path, monkeypatch):
    """A reader that read state.json naming a checkpoint that training pruned right after (a new
    state.json written) reads the new state instead of reporting damage."""
    from reclor_lab.runs import rundir as rundir_module

    rd = RunDir(tmp_path)
    old = {"version": 3, "last": "step-000003", "best": "step-000003", "last_epoch": 0, "last_step": 3,
           "total_steps": 9, "warmup_steps": 1, "config": {}, "data_sha256": "0" * 64,
           "checkpoints": [{"name": "step-000003", "epoch": 1, "step": 3, "epoch_end": False,
                            "sha256": {"trainer_state.pt": "0" * 64}}]}
    new = json.loads(json.dumps(old).replace("000003", "000004").replace('"step": 3', '"step": 4'))
    (rd.checkpoint_dir("step-000004")).mkdir(parents=True)
    (rd.checkpoint_dir("step-000004") / "trainer_state.pt").write_bytes(b"x")
    rd.state_path.write_text(json.dumps(new))
    reads = iter([old, new])
    real = rundir_module.read_json
    monkeypatch.setattr(rundir_module, "read_json",
                        lambda path, what: next(reads) if path == rd.state_path else real(path, what))
    assert rd.read_state()["last"] == "step-000004"


def test_the_trainer_path_stops_on_sigterm_after_the_step_with_a_checkpoint_and_resumes(tmp_path, monkeypatch):
    import signal

    from reclor_lab.config import get_preset
    from reclor_lab.errors import TrainingInterrupted
    from reclor_lab.train import setup
    from reclor_lab.runs.trainer import HistoryCallback, fit_with_trainer

    monkeypatch.setenv("TQDM_DISABLE", "1")
    cfg = get_preset("tiny", output_dir=str(tmp_path / "run"), train_limit=48, eval_limit=16, epochs=1)
    real = HistoryCallback.on_step_end

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 2 and self.stop.signum is None:
            signal.raise_signal(signal.SIGTERM)  # arrives during step 2
        return real(self, args, state, control, **kw)

    monkeypatch.setattr(HistoryCallback, "on_step_end", on_step_end)
    with pytest.raises(TrainingInterrupted) as e:
        fit_with_trainer(setup(cfg, verbose=False), cfg.output_dir, verbose=False)
    assert e.value.exit_code == 143
    assert str(e.value).endswith(f"resume with: reclor-lab train --resume --output-dir {cfg.output_dir} --trainer")
    assert RunDir(cfg.output_dir).read_state()["last"] == "step-000002"
    monkeypatch.setattr(HistoryCallback, "on_step_end", real)
    history = fit_with_trainer(setup(cfg, verbose=False), cfg.output_dir, resume=True, verbose=False)
    assert [s["step"] for s in history.steps] == list(range(1, 7))  # no step twice, none missing
    assert [e["epoch"] for e in history.evals] == [0, 1]


def test_the_launcher_s_own_failure_report_is_left_out_and_said_in_one_line():
    """`train --processes 2` with a process killed (or SIGTERM): the launcher's traceback and
    its ChildFailedError / SignalException table are not shown; what the processes printed is."""
    import io

    from reclor_lab.cli import launcher_stderr

    report = [
        "W1203 08:30:01.123000 1234 torch/distributed/elastic/multiprocessing/api.py:900] Sending process 7 closing signal SIGTERM\n",  # noqa: E501
        "E1203 08:30:01.456000 1234 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: -9) local_rank: 1\n",  # noqa: E501
        "Traceback (most recent call last):\n",
        '  File "<frozen runpy>", line 198, in _run_module_as_main\n',
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n",
        "============================================================\n",
        "reclor_lab FAILED\n",
    ]
    mine = ["reclor-lab: SIGTERM: stopped after step 3, checkpoint written; resume with: ...\n"]
    bug = ["Traceback (most recent call last):\n", '  File "x.py", line 1, in <module>\n', "ValueError: a bug\n"]
    out = io.StringIO()
    assert launcher_stderr(mine + bug + report, out) is True
    assert out.getvalue() == "".join(mine + bug)  # a process's own traceback (a bug) still shows
    out = io.StringIO()
    assert launcher_stderr(mine, out) is False and out.getvalue() == mine[0]


def _rank(pid: int) -> str | None:
    from pathlib import Path

    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"RANK=")), None)


#: Seconds the stopped two-process run may take to finish: below pytest's per-test timeout
#: (pyproject), so a stuck run fails here and its launcher and workers are killed on the way out.
RUN_TIMEOUT = 600


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="finds the processes through /proc")
@pytest.mark.parametrize("fault", ["a process killed", "SIGTERM"])
def test_a_two_process_run_killed_or_stopped_is_one_line_and_leaves_the_checkpoint_intact(tmp_path, fault):
    import os
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "two"
    cmd = [sys.executable, "-m", "reclor_lab", "train", "--preset", "tiny", "--processes", "2",
           "--output-dir", str(run_dir), "--epochs", "2", "--set", "train_limit=64", "--set", "eval_limit=16",
           "--set", "batch_size=4", "--set", "save_every_steps=1"]
    rd = RunDir(run_dir)
    with started(cmd, env={**os.environ, "TQDM_DISABLE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True) as proc:  # on any way out, the launcher and its workers go too
        deadline = time.monotonic() + RUN_TIMEOUT  # a safety net only: progress, not time, decides
        while not (rd.has_run() and rd.read_state()["last_step"] >= 2):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, f"no step 2 within {RUN_TIMEOUT} s"
            time.sleep(0.05)
        if fault == "SIGTERM":  # a scheduler preempting the job
            proc.send_signal(signal.SIGTERM)
        else:
            workers = [w for launcher in children(proc.pid) for w in children(launcher)]
            (victim,) = [w for w in workers if _rank(w) == "1"]
            os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if fault == "SIGTERM":
        assert proc.returncode == 143, err[-3000:]
        assert lines[-1].startswith("reclor-lab: SIGTERM: stopped after step "), err[-3000:]
    else:
        assert proc.returncode != 0
        assert lines[-1].startswith("reclor-lab: error: a training process failed or was killed"), err[-3000:]
    assert lines[-1].endswith(f"--output-dir {run_dir} --processes 2")
    state = rd.read_state()
    rd.verify_checkpoint(state["last"], state)  # complete, and every file as written
