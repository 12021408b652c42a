"""The command line as a user meets it: clear errors, exit codes, the data commands' output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reclor_lab.cli import main
from reclor_lab.config import BUNDLED_DATA_DIR, TINY_MODEL_DIR

MINI = Path(__file__).parent / "fixtures" / "mini"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_data_check_prints_counts_labels_and_lengths(capsys):
    code, out, err = run(capsys, "data", "check", str(MINI / "train.json"), str(MINI / "test.json"), "--max-len", "95")
    assert code == 0, err
    assert f"{MINI / 'train.json'}: 4 records, labeled" in out
    assert "labels: A 1 (25.0%), B 1 (25.0%), C 1 (25.0%), D 1 (25.0%)" in out
    assert f"{MINI / 'test.json'}: 2 records, unlabeled" in out
    assert "4 of 4 passages shortened to fit max_len 95" in out  # every fixture record is longer (97-110 tokens)


def test_data_check_names_a_record_that_cannot_fit(capsys):
    code, out, err = run(capsys, "data", "check", str(MINI / "train.json"), "--max-len", "40")
    assert code == 1 and "Traceback" not in err
    assert f"{MINI / 'train.json'}: record 0 (id_string 'mini_0'): its question and options alone take" in err


def test_data_check_accepts_the_bundled_splits(capsys):
    paths = [str(BUNDLED_DATA_DIR / f"{s}.json") for s in ("train", "val", "test")]
    code, out, err = run(capsys, "data", "check", *paths)
    assert code == 0, err
    assert out.count("records, labeled") == 2 and out.count("records, unlabeled") == 1


def test_data_check_rejects_a_bad_file_with_one_line(tmp_path, capsys):
    bad = tmp_path / "val.json"
    records = json.loads((MINI / "val.json").read_text())
    records[1]["answers"] = records[1]["answers"][:3]
    bad.write_text(json.dumps(records))
    code, out, err = run(capsys, "data", "check", str(bad))
    assert code == 1
    assert err == (f"reclor-lab: error: {bad}: record 1 (id_string 'mini_2'): "
                   "'answers' must have exactly 4 options, got 3\n")


def test_data_show_prints_the_model_input(capsys):
    code, out, _ = run(capsys, "data", "show", str(MINI / "val.json"), "--index", "1")
    assert code == 0
    assert out.startswith("Context: Sales of the orchard's cider fell last year.")
    assert "Option C: A frost destroyed half of last year's apple harvest. Option D:" in out
    assert out.endswith("[label: 2 = Option C; id_string: mini_2]\n")
    code, _, err = run(capsys, "data", "show", str(MINI / "val.json"), "--index", "9")
    assert code == 1 and "--index 9 is out of range" in err and "has 2 records" in err


def test_train_refuses_an_existing_run_dir_before_loading_anything(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "train", "--output-dir", str(tmp_path / "run"))
    assert code == 1 and "already exists and is not empty" in err and "--resume" in err
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    code, _, err = run(capsys, "train", "--output-dir", str(tmp_path / "new"), "--resume")
    assert code == 1 and "nothing to resume" in err


def test_bad_arguments_and_missing_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epochs", "0"])
    assert e.value.code == 2
    assert "expected a positive integer, got 0" in capsys.readouterr().err
    code, _, err = run(capsys, "model", "info", "--model", str(tmp_path / "nowhere"))
    assert code == 1 and err.startswith("reclor-lab: error:") and "nowhere" in err


def test_model_info_on_the_tiny_model(capsys):
    code, out, err = run(capsys, "model", "info", "--preset", "tiny")
    assert code == 0, err
    assert "quantization: 4-bit nf4, double quant True" in out
    assert ("LoRA targets (every 4-bit linear layer except the head): "
            "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj") in out
    trainable = int(out.split("trainable params: ")[1].split(" ")[0].replace(",", ""))
    predicted = int(out.split("predicted from r=16 and the layer shapes: ")[1].split(" ")[0].replace(",", ""))
    assert trainable == predicted


def test_tiny_build_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "model"
    shutil.copytree(TINY_MODEL_DIR, target)
    code, _, err = run(capsys, "tiny", "build", "--output", str(target))
    assert code == 1 and "exists and is not empty; pass --force" in err


def test_set_overrides_any_config_field_and_bad_values_get_one_clear_error(tmp_path, capsys):
    code, out, err = run(capsys, "model", "info", "--preset", "tiny", "--set", "lora_r=4", "--set", "lora_alpha=8")
    assert code == 0, err
    assert "predicted from r=4 and the layer shapes" in out
    trainable = int(out.split("trainable params: ")[1].split(" ")[0].replace(",", ""))
    predicted = int(out.split("predicted from r=4 and the layer shapes: ")[1].split(" ")[0].replace(",", ""))
    assert trainable == predicted
    code, _, err = run(capsys, "model", "info", "--set", "batch_size=abc", "--set", "gradient_checkpointing=yes")
    assert code == 1
    assert "`batch_size` must be a positive integer or 'auto', got 'abc'" in err
    assert "`gradient_checkpointing` must be true or false, got 'yes'" in err
    code, _, err = run(capsys, "model", "info", "--set", "no_such_field=1")
    assert code == 1 and "unknown config fields ['no_such_field']" in err
    code, _, err = run(capsys, "model", "info", "--set", "batch_size")
    assert code == 1 and "expected FIELD=VALUE" in err
    (tmp_path / "run").mkdir()
    code, _, err = run(capsys, "train", "--output-dir", str(tmp_path / "run"), "--resume", "--set", "batch_size=4")
    assert code == 1 and "--set cannot change a resumed run" in err


def _fake_run(path: Path, output_dir: str, epochs: int = 3) -> None:
    """A run directory as `train` leaves it after epoch 2 (the checkpoint's files are checked against
    their checksums, its adapter and trainer state are not read before the model loads)."""
    from reclor_lab.config import get_preset
    from reclor_lab.runs.rundir import RunDir

    class Adapter:  # stands in for a PeftModel: its save_pretrained writes the adapter's two files
        def save_pretrained(self, folder):
            (Path(folder) / "adapter_model.safetensors").write_bytes(b"")
            (Path(folder) / "adapter_config.json").write_text("{}")

    rd = RunDir(path)
    rd.path.mkdir(parents=True)
    rd.save_config(get_preset("tiny", output_dir=output_dir, epochs=epochs, seed=1))
    rd.save_data({"train": "t", "val": "v"}, [1.0, 1.0, 1.0, 1.0], {"tokenizer.json": "0" * 64})
    evals = [{"epoch": e, "accuracy": a, "eval_loss": 1.4 - a} for e, a in ((0, 0.25), (1, 0.4), (2, 0.5))]
    rd.save_checkpoint(Adapter(), {"step": 6, "total_steps": 9, "warmup_steps": 1},
                       {"steps": [{"step": i} for i in range(1, 7)], "evals": evals}, epoch=2, step=6, epoch_end=True,
                       accuracy=0.5)


def test_resume_trains_the_directory_named_not_the_one_its_config_recorded(tmp_path, monkeypatch, capsys):
    """Defect 1: `train --resume --output-dir w/runA` continues w/runA, even though its
    config.json says w/runs-tiny (where another run now lives), and from any working directory."""
    import reclor_lab.runs.job

    seen = []

    def setup(cfg, verbose):  # train_run's checks all ran; stop before loading a model
        seen.append(cfg)
        raise reclor_lab.runs.job.RunDirError("stopped here")

    monkeypatch.setattr(reclor_lab.runs.job, "setup", setup)
    _fake_run(tmp_path / "w" / "runA", output_dir="w/runs-tiny")
    _fake_run(tmp_path / "w" / "runs-tiny", output_dir="w/runs-tiny")
    monkeypatch.chdir(tmp_path / "w")  # not where the run was created
    code, _, err = run(capsys, "train", "--resume", "--output-dir", "runA", "--epochs", "4")
    assert code == 1 and "stopped here" in err, err
    (cfg,) = seen
    assert cfg.output_dir == "runA" and cfg.epochs == 4 and cfg.seed == 1
    code, _, err = run(capsys, "train", "--resume", "--output-dir", "runA", "--epochs", "1")
    assert code == 1 and "`epochs` 1 is below epoch 2, which the run has already reached" in err


@pytest.mark.parametrize("setting, message", [
    ("learning_rate=NaN", "`learning_rate` must be a finite number, got nan"),
    ("weight_decay=NaN", "`weight_decay` must be a finite number"),
    ("warmup_ratio=NaN", "`warmup_ratio` must be a finite number"),
    ("max_grad_norm=NaN", "`max_grad_norm` must be a finite number"),
    ("save_every_steps=0", "`save_every_steps` must be a positive integer"),
])
def test_non_finite_numbers_are_refused(capsys, tmp_path, setting, message):
    code, _, err = run(capsys, "train", "--output-dir", str(tmp_path / "r"), "--set", setting)
    assert code == 1 and message in err and "Traceback" not in err


def test_a_model_path_that_is_no_model_gets_one_line(tmp_path, capsys):
    (tmp_path / "file.bin").write_text("x")
    (tmp_path / "empty").mkdir()
    for model, message in ((tmp_path / "file.bin", "is a file; --model takes a model directory"),
                           (tmp_path / "empty", "not a model directory (no config.json)"),
                           ("/nonexistent", "/nonexistent: no such model directory")):
        code, _, err = run(capsys, "model", "info", "--model", str(model))
        assert code == 1 and message in err and "Repo id" not in err, err
        code, _, err = run(capsys, "data", "check", str(MINI / "val.json"), "--model", str(model))
        assert code == 1 and message in err


def test_bad_data_files_and_templates_get_one_line(tmp_path, capsys):
    cases = {"big-int.json": '[{"label": 1' + "0" * 5000 + "}]",
             "deep.json": "[" * 100_000 + "]" * 100_000,
             "surrogate.json": json.dumps([{"context": "a\ud800", "question": "q", "answers": ["a", "b", "c", "d"],
                                            "label": 0, "id_string": "s1"}])}
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        code, _, err = run(capsys, "data", "check", str(tmp_path / name))
        assert code == 1 and err.startswith(f"reclor-lab: error: {tmp_path / name}") and err.count("\n") == 1, err
    code, _, err = run(capsys, "data", "show", str(MINI / "val.json"), "--template", "{foo}")
    assert code == 1 and "--template '{foo}'" in err and "unknown fields ['foo']" in err


def test_expected_errors_never_reach_the_user_as_a_traceback(capsys, monkeypatch):
    from reclor_lab import model as modeling

    def unavailable(device):
        raise modeling.QuantizationUnavailable("bitsandbytes cannot quantize to 4-bit here; set quantization=\"none\"")

    monkeypatch.setattr(modeling, "_check_4bit_support", unavailable)
    code, _, err = run(capsys, "model", "info")
    assert code == 1 and err.startswith("reclor-lab: error: bitsandbytes cannot quantize")


def test_unknown_lora_targets_are_named_with_the_choices(capsys):
    code, _, err = run(capsys, "model", "info", "--set", 'lora_targets=["nonexistent"]')
    assert code == 1 and "`lora_targets` names ['nonexistent']" in err and "'q_proj'" in err


def test_data_check_writes_no_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RECLOR_LAB_CACHE", str(tmp_path / "cache"))
    code, _, err = run(capsys, "data", "check", str(MINI / "val.json"))
    assert code == 0, err
    assert not (tmp_path / "cache").exists()


def test_processes_with_the_trainer_is_refused_before_anything_starts(capsys, tmp_path):
    code, out, err = run(capsys, "train", "--processes", "2", "--trainer", "--output-dir", str(tmp_path / "r"))
    assert code == 1 and "--trainer runs in one process" in err and "launching" not in out
    assert not (tmp_path / "r").exists()
