"""The run directory (RunDir) without a model: the new/resume/refuse decision, atomic
checkpoints under injected faults, keep-K bookkeeping, the lock, damaged state files."""

from __future__ import annotations

import json
import re
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
        (Path(folder) / "adapter_config.json").write_text("{}")


def trainer_state(step: int) -> dict:
    return {"step": step, "total_steps": 10, "warmup_steps": 1}


def started(rd: RunDir, **config) -> RunDir:
    """What a run's start writes before its first checkpoint: config.json and data.json."""
    from reclor_lab.config import get_preset

    rd.path.mkdir(parents=True, exist_ok=True)
    if rd._config is None:
        rd.save_config(get_preset("tiny", output_dir=str(rd.path), **config))
    if not rd.data_path.exists():
        rd.save_data({"train": "t", "val": "v"}, [1.0, 1.0, 1.0, 1.0], {"tokenizer.json": "0" * 64})
    return rd


def save(rd: RunDir, step: int, epoch_end: bool = False, accuracy=None, keep_last: int = 1, history=None):
    epoch = step // 5 if epoch_end else step // 5 + 1
    started(rd)
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
                        trainer_state(step), {}, "0" * 64)
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


def test_an_orphan_checkpoint_left_by_a_crash_after_state_json_is_removed(tmp_path, monkeypatch):
    rd = RunDir(tmp_path)
    save(rd, 3)
    monkeypatch.setattr(RunDir, "prune", lambda self, state, previous=None: None)  # a crash before pruning
    save(rd, 5, epoch_end=True, accuracy=0.5)
    monkeypatch.undo()
    (rd.checkpoints_dir / "epoch-002.tmp").mkdir()  # a crash while writing a checkpoint
    assert sorted(p.name for p in rd.checkpoints_dir.iterdir()) == ["epoch-001", "epoch-002.tmp", "step-000003"]
    save(rd, 7)
    assert sorted(p.name for p in rd.checkpoints_dir.iterdir()) == ["epoch-001", "step-000007"]


def test_prune_removes_only_what_the_run_made_and_mentions_the_rest_once(tmp_path, capsys):
    rd = RunDir(tmp_path)
    save(rd, 2)
    (rd.checkpoints_dir / "step-000002-backup").mkdir()
    (rd.checkpoints_dir / "step-000002-backup" / "adapter_model.safetensors").write_text("mine")
    (rd.checkpoints_dir / "NOTES.txt").write_text("my notes")
    (rd.checkpoints_dir / "step-000001").mkdir()  # a checkpoint's name, but no state.json ever named it
    save(rd, 3)
    save(rd, 4)
    assert sorted(p.name for p in rd.checkpoints_dir.iterdir()) == [
        "NOTES.txt", "step-000001", "step-000002-backup", "step-000004"]
    assert (rd.checkpoints_dir / "NOTES.txt").read_text() == "my notes"
    notes = [line for line in capsys.readouterr().err.splitlines() if "alone" in line]
    assert len(notes) == 1 and "NOTES.txt, step-000001/, step-000002-backup/" in notes[0], notes


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


def test_a_resume_may_change_epochs_but_never_below_the_epoch_reached(tmp_path):
    from reclor_lab.config import get_preset

    rd = started(RunDir(tmp_path), epochs=5)
    save(rd, 7)  # inside epoch 2
    tiny = lambda **kw: get_preset("tiny", output_dir="elsewhere", **kw)  # noqa: E731 (output_dir: never compared)
    assert rd.check_resume_config(tiny(epochs=7)) == [{"field": "epochs", "old": 5, "new": 7}]
    assert rd.check_resume_config(tiny(epochs=2)) == [{"field": "epochs", "old": 5, "new": 2}]
    with pytest.raises(RunDirError, match=r"`epochs` 1 is below epoch 2, which the run has already reached"):
        rd.check_resume_config(tiny(epochs=1))


@pytest.mark.parametrize("field, value", [("learning_rate", 0.02), ("model_name_or_path", "/elsewhere/model"),
                                          ("batch_size", 4), ("seed", 7), ("lora_dropout", 0.1),
                                          ("max_grad_norm", 1.0), ("max_len", 256), ("train_limit", 3),
                                          ("template", "{context} {question} {a} {b} {c} {d}"),
                                          ("class_weighting", False), ("lr_schedule", "cosine")])
def test_a_resume_that_changes_the_result_is_refused_naming_the_field_old_and_new(tmp_path, field, value):
    from reclor_lab.config import get_preset

    rd = started(RunDir(tmp_path), epochs=5)
    save(rd, 7)
    old = rundir_module._shown(rd.recorded_config(rd.read_state()).to_dict()[field])
    new = rundir_module._shown(value)
    cfg = get_preset("tiny", epochs=5, **{field: value})
    with pytest.raises(RunDirError, match=rf"config.json: .* in {field} {re.escape(old)} → {re.escape(new)}"
                                          r": these change the result"):
        rd.check_resume_config(cfg)
    two = cfg.replace(seed=8, epochs=9)  # every refused field is named, in one line; epochs is not refused
    with pytest.raises(RunDirError) as e:
        rd.check_resume_config(two)
    assert f"{field} " in str(e.value) and "seed 42 → 8" in str(e.value) and "epochs" not in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("field, value", [("epochs", 9), ("eval_batch_size", 3), ("save_every_steps", 2),
                                          ("keep_last_checkpoints", 4), ("gradient_checkpointing", True),
                                          ("gpu_memory", "24GiB"), ("data_dir", "/data/moved"),
                                          ("preset", "mine")])
def test_a_resume_may_change_how_the_run_is_carried_out_and_says_what_changed(tmp_path, field, value):
    from reclor_lab.config import get_preset

    rd = started(RunDir(tmp_path), epochs=5)
    save(rd, 7)
    old = rd.recorded_config(rd.read_state()).to_dict()[field]
    assert rd.check_resume_config(get_preset("tiny", **{"epochs": 5, field: value})) == [
        {"field": field, "old": old, "new": value}]


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.update(version=2), r"written by an older reclor-lab \(run layout 2; .*train it again"),
    (lambda s: s.update(version=9), r"written by a newer reclor-lab \(run layout 9"),
    (lambda s: s["checkpoints"][0].update(sha256=None), r"checkpoint 'epoch-001' has no checksums"),
    (lambda s: s.pop("config"), r"missing the config the run trains with"),
    (lambda s: s.update(data_sha256=None), r"missing or null SHA-256 of data.json"),
])
def test_evidence_is_never_optional_in_state_json(tmp_path, damage, message):
    rd = RunDir(tmp_path)
    save(rd, 5, epoch_end=True, accuracy=0.5)
    state = json.loads(rd.state_path.read_text())
    damage(state)
    rd.state_path.write_text(json.dumps(state))
    with pytest.raises(RunDirError, match=message):
        rd.read_state()


def test_data_json_missing_or_edited_is_damage_once_the_run_has_a_checkpoint(tmp_path):
    rd = RunDir(tmp_path)
    save(rd, 5, epoch_end=True, accuracy=0.5)
    data = json.loads(rd.data_path.read_text())
    rd.data_path.write_text(json.dumps({**data, "class_weights": [2.0, 1.0, 1.0, 1.0]}))
    with pytest.raises(RunDirError, match=r"data.json: checksum mismatch: .*class weights"):
        rd.class_weights(True)
    rd.data_path.write_text(json.dumps({**data, "tokenizer": None}))
    with pytest.raises(RunDirError, match=r"data.json: the run's data record is damaged"):
        rd.check_tokenizer()
    rd.data_path.unlink()
    with pytest.raises(RunDirError, match=r"data.json: the run's data record is missing"):
        rd.check_data({"train": "t", "val": "v"})
    assert not rd.data_path.exists()  # never re-created


def test_a_checkpoint_renamed_into_place_before_its_first_state_json_is_taken_on_resume(tmp_path, monkeypatch):
    """A kill between the first checkpoint's rename and its state.json: --resume verifies the
    checkpoint against state.json.next and takes it; a damaged one is refused, never taken."""
    from reclor_lab.runs.rundir import STATE_NEXT_FILE, RunStart

    rd = RunDir(tmp_path)
    real = rundir_module.write_json

    def killed(path, obj):
        if Path(path).name == "state.json":
            raise KeyboardInterrupt  # stands in for kill -9 at that point
        real(path, obj)

    monkeypatch.setattr(rundir_module, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        save(rd, 2)
    monkeypatch.undo()
    assert not rd.state_path.exists() and (rd.path / STATE_NEXT_FILE).exists()
    assert rd.checkpoint_dir("step-000002").is_dir()
    pending = (rd.path / STATE_NEXT_FILE).read_bytes()
    (rd.checkpoint_dir("step-000002") / "history.json").write_text('{"steps": []}')  # damaged meanwhile
    start = RunStart(rd, None)
    with pytest.raises(RunDirError, match="the run state is missing while"):
        start._decide_locked(True, None, None)
    start.close()
    assert not rd.state_path.exists() and rd.checkpoint_dir("step-000002").is_dir()  # nothing taken, nothing lost
    (rd.path / STATE_NEXT_FILE).write_bytes(pending)
    (rd.checkpoint_dir("step-000002") / "history.json").write_text(json.dumps({"steps": [0, 1]}, indent=2) + "\n")
    rd.recover_state()
    assert rd.read_state()["last"] == "step-000002" and not (rd.path / STATE_NEXT_FILE).exists()


def test_best_must_agree_with_the_history(tmp_path):
    rd = RunDir(tmp_path)
    history = {"steps": [{"step": i} for i in range(5)], "evals": [{"epoch": 0, "accuracy": 0.2, "eval_loss": 1.4},
                                                  {"epoch": 1, "accuracy": 0.5, "eval_loss": 1.3}]}
    save(rd, 5, epoch_end=True, accuracy=0.5, history=history)
    save(rd, 7, keep_last=2, history={**history, "steps": [{"step": i} for i in range(7)]})
    state = rd.read_state()
    rd.check_best(state)
    with pytest.raises(RunDirError, match=r"best is step-000007, but the history's best is epoch 1"):
        rd.check_best({**state, "best": "step-000007"})
    forged = json.loads(json.dumps(state))
    forged["checkpoints"][0]["accuracy"] = 0.9
    forged["best_accuracy"] = 0.9
    with pytest.raises(RunDirError, match=r"best is epoch-001, but the history's best is epoch 1 \(val accuracy 0.5"):
        rd.check_best(forged)
