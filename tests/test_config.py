import dataclasses
import json

import pytest

from reclor_lab.config import PRESETS, REFERENCE_TEMPLATE, ConfigError, RunConfig, get_preset
from reclor_lab.runs.rundir import write_json


def test_presets_are_valid_and_reference_matches_the_solution():
    for name in PRESETS:
        assert get_preset(name).preset == name
    ref = get_preset("llama2-7b")
    assert ref.model_name_or_path == "meta-llama/Llama-2-7b-hf"
    assert (ref.quantization, ref.double_quant, ref.compute_dtype) == ("nf4", True, "auto")
    assert (ref.lora_r, ref.lora_alpha, ref.lora_dropout, ref.lora_bias) == (16, 16, 0.05, "none")
    assert (ref.learning_rate, ref.base_batch_size, ref.epochs) == (1e-4, 2, 3)
    # auto picks the micro-batch; accumulation keeps the reference's 2 examples per step
    assert (ref.batch_size, ref.auto_batch) == ("auto", "accumulate")
    assert (ref.max_grad_norm, ref.weight_decay, ref.warmup_ratio) == (0.3, 0.001, 0.1)
    assert ref.gradient_checkpointing is True
    assert ref.template == REFERENCE_TEMPLATE


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        RunConfig(lora_r=0, quantization="int8", learning_rate=-1.0, lora_dropout=1.5,
                  template="Context: {context} {nonsense}", batch_size=True)
    msg = str(e.value)
    for needle in ("`lora_r`", "`quantization`", "'int8'", "`learning_rate`", "`lora_dropout`",
                   "unknown fields ['nonsense']", "`batch_size`", "missing ['a', 'b', 'c', 'd', 'question']"):
        assert needle in msg, needle


def test_float16_with_nf4_is_accepted_since_the_loop_scales_the_loss():
    assert get_preset("tiny", compute_dtype="float16").compute_dtype == "float16"


def test_save_load_roundtrip(tmp_path):
    cfg = get_preset("tiny", epochs=5, lora_targets=["q_proj", "v_proj"])
    assert cfg.lora_targets == ("q_proj", "v_proj")
    path = tmp_path / "config.json"
    write_json(path, cfg.to_dict())  # as a run directory saves it
    assert json.loads(path.read_text())["epochs"] == 5
    assert RunConfig.load(path) == cfg


def test_load_rejects_unknown_fields_and_bad_json(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text('{"lora_rank": 8}')
    with pytest.raises(ConfigError, match=r"unknown config fields \['lora_rank'\]"):
        RunConfig.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not a JSON config"):
        RunConfig.load(bad)


def test_overrides_are_validated_and_unknown_names_refused():
    assert get_preset("tiny", epochs=7).epochs == 7
    with pytest.raises(ConfigError, match="unknown config fields"):
        get_preset("tiny", epoch=7)
    with pytest.raises(ConfigError, match="`epochs`"):
        get_preset("tiny", epochs=0)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_every_field_has_help_and_describe_shows_it():
    cfg = get_preset("tiny")
    text = cfg.describe()
    for f in dataclasses.fields(cfg):
        assert f.metadata.get("help"), f.name
        assert f.name in text


def test_a_config_saved_before_kbit_upcast_loads_with_the_upcast_its_run_trained_with(tmp_path):
    """Runs saved before the field existed trained with peft's upcast: reloading one (evaluate,
    resume) must rebuild that model, not today's default."""
    path = tmp_path / "config.json"
    write_json(path, get_preset("tiny").to_dict())
    raw = json.loads(path.read_text())
    assert raw.pop("kbit_upcast") == "trainable"  # today's default, written by today's kit
    path.write_text(json.dumps(raw))
    assert RunConfig.load(path).kbit_upcast == "peft"
    raw["kbit_upcast"] = "trainable"
    path.write_text(json.dumps(raw))
    assert RunConfig.load(path).kbit_upcast == "trainable"  # a saved value always wins
