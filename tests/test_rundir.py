"""The run directory (RunDir) without a model: the new/resume/refuse decision, atomic
checkpoints under injected faults, keep-K bookkeeping, the lock, damaged state files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reclor_lab.runs import rundir as rundir_module
from reclor_lab.errors import RunDirError
from reclor_lab.runs.rundir import RunDir, _next_state


class FakeModel:
    """Stands in for a PeftModel: save_pretrained writes an adapter file."""

    def __init__(self, value: float = 0.0):
        self.value = value

    def save_pretrained(self, folder):
        (Path(folder) / "adapter_model.safetensors").write_text(str(self.value))


def trainer_state(step: int) -> dict:
    return {"step": step, "total_steps": 10, "warmup_steps": 1}


def save(rd: RunDir, step: int, epoch_end: bool = False, accuracy=None, keep_last: int = 1, history=None):
    epoch = step // 5 if epoch_end else step // 5 + 1
    return rd.save_checkpoint(FakeModel(step), trainer_state(step), history or {"steps": list(range(step))},
                              epoch=epoch, step=step, epoch_end=epoch_end, accuracy=accuracy, keep_last=keep_last)


def test_decide_new_resume_restart_and_the_messages_offer_the_command_that_works(tmp_path):
    rd = RunDir(tmp_path / "run")
    with pytest.raises(RunDirError, match="nothing to resume"):
        rd.decide(resume=True)
    assert rd.decide(resume=False) == "new"
    # defect 3: interrupted before the first checkpoint (config written, no state)
    rd.config_path.write_text("{}")
    with pytest.raises(RunDirError,
                       match=r"stopped before its first checkpoint; `reclor-lab train --resume --output-dir"):
        rd.decide(resume=False)
    assert rd.decide(resume=True) == "restart"
    save(rd, 5, epoch_end=True, accuracy=0.5)
    assert rd.decide(resume=True) == "resume"
    with pytest.raises(RunDirError, match="already holds a run .*pass --resume"):
        rd.decide(resume=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="already exists and is not empty"):
        RunDir(other).decide(resume=False)
    assert (other / "notes.txt").read_text() == "mine"


def test_an_unwritable_output_dir_is_reported_before_anything_loads(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match="cannot write the run directory"):
        RunDir(blocker / "run").decide(resume=False)


def test_keep_last_k_plus_the_best(tmp_path):
    rd = RunDir(tmp_path)
    save(rd, 2)
    save(rd, 5, epoch_end=True, accuracy=0.7)
    save(rd, 7)
    save(rd, 10, epoch_end=True, accuracy=0.6, keep_last=2)
    state = rd.read_state()
    assert state["last"] == "epoch-002" and state["best"] == "epoch-001" and state["best_epoch"] == 1
    assert [c["name"] for c in state["checkpoints"]] == ["epoch-001", "step-000007", "epoch-002"]
    assert sorted(p.name for p in rd.checkpoints_dir.iterdir()) == ["epoch-001", "epoch-002", "step-000007"]
    save(rd, 12, keep_last=1)
    assert sorted(p.name for p in rd.checkpoints_dir.iterdir()) == ["epoch-001", "step-000012"]
    assert rd.read_state()["last_epoch"] == 2


def test_equally_good_epochs_keep_the_earliest_as_best():
    s = None
    for step, acc in ((5, 0.6), (10, 0.6)):
        s = _next_state(s, rundir_module.Checkpoint(f"epoch-{step // 5:03d}", step // 5, step, True, acc), 1,
                        trainer_state(step))
    assert s["best"] == "epoch-001"


@pytest.mark.parametrize("fail_at", ["adapter", "trainer_state", "history", "state", "disk_full"])
def test_a_crash_while_saving_leaves_the_previous_checkpoint_and_its_history(tmp_path, monkeypatch, fail_at):
    """Defect 4: state and history are one unit. Whatever write fails, state.json still names
    the previous checkpoint, whose history is the one that goes with it (no duplicated epoch)."""
    rd = RunDir(tmp_path)
    save(rd, 5, epoch_end=True, accuracy=0.5, history={"evals": [0, 1]})
    before = rd.state_path.read_bytes()
    boom = OSError(28, "No space left on device")
    if fail_at == "adapter":
        monkeypatch.setattr(FakeModel, "save_pretrained", lambda self, f: (_ for _ in ()).throw(boom))
    elif fail_at in ("trainer_state", "disk_full"):
        err = RuntimeError("basic_ios::clear: iostream error") if fail_at == "disk_full" else boom
        monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(err))
    else:
        real = rundir_module.write_json
        name = "history.json" if fail_at == "history" else "state.json"

        def failing(path, obj):
            if Path(path).name == name:
                raise boom
            real(path, obj)

        monkeypatch.setattr(rundir_module, "write_json", failing)
    with pytest.raises(RunDirError, match="cannot write the checkpoint .*previous checkpoint is intact"):
        save(rd, 10, epoch_end=True, accuracy=0.9, history={"evals": [0, 1, 2]})
    monkeypatch.undo()
    assert rd.state_path.read_bytes() == before
    assert rd.load_history() == {"evals": [0, 1]}
    # the next save removes whatever the failed one left behind
    save(rd, 10, epoch_end=True, accuracy=0.9, history={"evals": [0, 1, 2]})
    assert sorted(p.name for p in rd.checkpoints_dir.iterdir()) == ["epoch-002"]
    assert rd.load_history() == {"evals": [0, 1, 2]}


def test_an_orphan_checkpoint_left_by_a_crash_after_state_json_is_removed(tmp_path):
    rd = RunDir(tmp_path)
    save(rd, 5, epoch_end=True, accuracy=0.5)
    (rd.checkpoints_dir / "step-000003").mkdir()  # what a crash before pruning leaves
    (rd.checkpoints_dir / "epoch-002.tmp").mkdir()
    save(rd, 7)
    assert sorted(p.name for p in rd.checkpoints_dir.iterdir()) == ["epoch-001", "step-000007"]


@pytest.mark.parametrize("content", ["", "{trunc", "[]", '{"last": "epoch-001"}',
                                     '{"last": "epoch-009", "best": "epoch-009", '
                                     '"checkpoints": [{"name": "epoch-009"}], '
                                     '"last_epoch": 9, "total_steps": 1, "warmup_steps": 1}'])
def test_a_damaged_state_json_is_one_clear_error(tmp_path, content):
    rd = RunDir(tmp_path)
    save(rd, 5, epoch_end=True, accuracy=0.5)
    rd.state_path.write_text(content)
    with pytest.raises(RunDirError, match="state.json: the run state is (missing|damaged)"):
        rd.decide(resume=True)


def test_a_second_process_cannot_take_the_run(tmp_path):
    """Defect 6: one lock for the whole run (flock is per open file, so this process's second
    open stands in for a second process)."""
    rd = RunDir(tmp_path)
    with rd.lock():
        with pytest.raises(RunDirError, match="being trained by another process"):
            with RunDir(tmp_path).lock():
                pass
    with rd.lock():  # released
        pass


def test_load_config_takes_the_folder_as_the_run(tmp_path):
    from reclor_lab.config import get_preset

    rd = RunDir(tmp_path / "runA")
    rd.path.mkdir()
    rd.save_config(get_preset("tiny", output_dir="w/runs-tiny"))
    assert rd.load_config().output_dir == str(tmp_path / "runA")
    assert json.loads(rd.config_path.read_text())["output_dir"] == "w/runs-tiny"


def test_a_resume_may_extend_a_run_but_not_shrink_it(tmp_path):
    from reclor_lab.config import get_preset

    rd = RunDir(tmp_path)
    rd.save_config(get_preset("tiny", epochs=5))
    rd.check_resume_config(get_preset("tiny", epochs=7))
    with pytest.raises(RunDirError, match="5-epoch run; --epochs 2 would shrink it"):
        rd.check_resume_config(get_preset("tiny", epochs=2))
