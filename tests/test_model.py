"""4-bit loading, the memory report and the NF4 round trip, on a tiny random Llama (CPU, offline)."""

from __future__ import annotations

import pytest
import torch

from helpers_models import LLAMA_PROJECTIONS, TINY_LLAMA
from reclor_lab import model as modeling
from reclor_lab.config import NUM_LABELS, get_preset
from reclor_lab.model import (
    LLAMA2_7B_CLASSIFIER_PARAMS,
    LLAMA2_7B_PARAMS,
    NF4_CODE,
    QuantizationUnavailable,
    bnb_config,
    load_model,
    load_tokenizer,
    memory_report,
    nf4_roundtrip,
    pick_device,
    resolve_compute_dtype,
)

N_LAYERS = TINY_LLAMA["num_hidden_layers"]


@pytest.fixture(scope="module")
def model_4bit(cfg, tokenizer):
    return load_model(cfg, tokenizer)


@pytest.fixture(scope="module")
def model_plain(cfg, tokenizer):
    return load_model(cfg.replace(quantization="none"), tokenizer)


def test_pick_device_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")


def test_compute_dtype_auto_and_explicit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_compute_dtype(get_preset("tiny")) == torch.float32  # auto on a CPU
    assert resolve_compute_dtype(get_preset("tiny", compute_dtype="bfloat16")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_compute_dtype(get_preset("tiny")) == torch.bfloat16


def test_bnb_config_fields():
    q = bnb_config(get_preset("llama2-7b", compute_dtype="bfloat16"))
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_use_double_quant is True
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb_config(get_preset("tiny", double_quant=False)).bnb_4bit_use_double_quant is False
    assert bnb_config(get_preset("tiny", quantization="none")) is None


def test_tokenizer_pads_with_eos_on_the_right(tokenizer):
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"


def test_4bit_load_gives_linear4bit_projections_and_a_plain_head(model_4bit, tokenizer):
    import bitsandbytes as bnb

    four_bit = [n for n, m in model_4bit.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == N_LAYERS * len(LLAMA_PROJECTIONS)
    assert sorted({n.split(".")[-1] for n in four_bit}) == LLAMA_PROJECTIONS
    assert not isinstance(model_4bit.score, bnb.nn.Linear4bit)
    assert model_4bit.score.out_features == NUM_LABELS
    assert model_4bit.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id
    assert model_4bit.is_loaded_in_4bit
    weight = model_4bit.model.layers[0].self_attn.q_proj.weight
    assert weight.quant_state.quant_type == "nf4" and weight.quant_state.state2 is not None


def test_padded_batch_runs_through_the_4bit_classifier(model_4bit, tokenizer):
    batch = tokenizer(["Context: the committee argues", "Question: which"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        logits = model_4bit(**batch).logits
    assert logits.shape == (2, NUM_LABELS)
    assert torch.isfinite(logits).all()


def test_plain_load_has_no_4bit_layers(model_plain):
    assert not any(type(m).__name__ == "Linear4bit" for m in model_plain.modules())
    assert all(p.dtype == torch.float32 for p in model_plain.parameters())
    assert next(model_plain.parameters()).device == pick_device()


def test_quantization_unavailable_says_how_to_fix(monkeypatch, cfg, tokenizer):
    import bitsandbytes.functional as bnbf

    def broken(*args, **kwargs):
        raise RuntimeError("no 4-bit kernel for this backend")

    monkeypatch.setattr(bnbf, "quantize_4bit", broken)
    modeling._check_4bit_support.cache_clear()
    try:
        with pytest.raises(QuantizationUnavailable, match='quantization="none"'):
            load_model(cfg, tokenizer)
    finally:
        modeling._check_4bit_support.cache_clear()


def test_memory_report_numbers_are_consistent(model_4bit, model_plain):
    r4 = memory_report(model_4bit)
    rp = memory_report(model_plain)
    assert r4.params == rp.params  # 4-bit weights counted by what they represent
    assert r4.quantized_params == N_LAYERS * sum(
        4 * [64 * 64] + 3 * [64 * 128]
    )
    assert r4.nf4_bytes < r4.bf16_bytes < r4.fp32_bytes
    assert r4.fp32_bytes == 4 * r4.params
    assert r4.measured_bytes < rp.measured_bytes  # quantization really saved memory
    assert rp.measured_bytes == pytest.approx(rp.fp32_bytes, rel=0.01)  # + rotary buffers only
    # Llama-2-7B as the classifier it becomes: the model card's count without lm_head, with score
    assert r4.llama2_7b_params == LLAMA2_7B_CLASSIFIER_PARAMS
    assert LLAMA2_7B_PARAMS - LLAMA2_7B_CLASSIFIER_PARAMS == 32000 * 4096 - NUM_LABELS * 4096
    assert r4.llama2_7b_bf16_bytes == 2 * LLAMA2_7B_CLASSIFIER_PARAMS
    assert r4.llama2_7b_nf4_bytes == pytest.approx(6_476_005_376 * 4.127 / 8 + 2 * 131_354_624, rel=1e-4)
    assert r4.llama2_7b_fp32_bytes == 2 * r4.llama2_7b_bf16_bytes
    table = r4.table()
    assert "Llama-2-7B" in table and "13.215 GB" in table and "lm_head is never loaded" in table


def test_nf4_bytes_per_param_matches_qlora_paper():
    assert modeling.nf4_bytes_per_param(double_quant=False) * 8 == pytest.approx(4.5)
    assert modeling.nf4_bytes_per_param(double_quant=True) * 8 == pytest.approx(4.127, abs=1e-3)


def test_nf4_code_matches_bitsandbytes():
    import bitsandbytes.functional as bnbf

    code = bnbf.get_4bit_type("nf4", device="cpu")
    assert len(NF4_CODE) == 16
    assert torch.allclose(code, torch.tensor(NF4_CODE, dtype=code.dtype))


def test_nf4_roundtrip_error_small_but_nonzero():
    torch.manual_seed(0)
    w = torch.randn(128, 64) * 0.02  # weight-like scale
    r = nf4_roundtrip(w)
    assert r.dequantized.shape == w.shape and r.abs_error.shape == w.shape
    assert 0 < r.mean_abs_error < r.max_abs_error
    assert 0 < r.relative_error < 0.15
    assert r.bytes_before == w.numel() * 4
    assert r.bytes_after == w.numel() // 2 + (w.numel() // 64) * 4  # packed + fp32 absmax
    # every dequantized value is one of the 16 codes times its block's absmax
    blocks = w.reshape(-1, 64)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    levels = torch.tensor(NF4_CODE) * absmax  # (blocks, 16)
    deq = r.dequantized.reshape(-1, 64)
    nearest = (deq.unsqueeze(-1) - levels.unsqueeze(1)).abs().amin(dim=-1)
    assert nearest.max() < 1e-6
    assert nf4_roundtrip(w, double_quant=True).bytes_after < r.bytes_after


def test_a_run_directory_with_an_auto_map_never_runs_its_code_nor_asks(tmp_path, monkeypatch):
    """Defect 8: a tokenizer_config.json with an ``auto_map`` (someone's code in a run directory)
    is loaded with trust_remote_code=False: no y/N prompt on a terminal, no code executed."""
    import io
    import json
    import shutil

    from reclor_lab.config import TINY_MODEL_DIR
    from reclor_lab.errors import ModelError

    run_dir = tmp_path / "run"
    shutil.copytree(TINY_MODEL_DIR, run_dir)
    marker = tmp_path / "code-ran"
    (run_dir / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                     "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    conf = json.loads((run_dir / "tokenizer_config.json").read_text())
    conf["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    conf.pop("tokenizer_class", None)  # no local class to fall back on: the case that asked y/N
    (run_dir / "tokenizer_config.json").write_text(json.dumps(conf))
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "evil.EvilModel"}
    (run_dir / "config.json").write_text(json.dumps(cfg))

    class NoInput(io.StringIO):
        def readline(self, *a):
            raise AssertionError("asked the user a question")

        read = readline

    monkeypatch.setattr("sys.stdin", NoInput())
    asked = []
    monkeypatch.setattr("builtins.input", lambda *a: asked.append(a) or "n")
    try:
        tok = load_tokenizer(str(run_dir))
        assert tok.pad_token == tok.eos_token
        load_model(get_preset("tiny", model_name_or_path=str(run_dir)), tok)
    except ModelError as e:  # refusing is fine too; running the code or asking is not
        assert "trust_remote_code" in str(e) or "cannot load" in str(e)
    assert not asked and not marker.exists()


def test_the_expected_load_report_shows_only_when_asked(cfg, tokenizer):
    """A classifier from a causal-LM checkpoint always reports score MISSING and lm_head
    UNEXPECTED: notebook 02 shows that report (report=True) and explains it; every other load
    stays quiet about it."""
    import logging

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    keep, logger = Keep(), logging.getLogger("transformers.modeling_utils")
    logger.addHandler(keep)
    try:
        load_model(cfg, tokenizer)
        quiet = [m for m in seen if "LOAD REPORT" in m]
        load_model(cfg, tokenizer, report=True)
        shown = [m for m in seen if "LOAD REPORT" in m]
    finally:
        logger.removeHandler(keep)
    assert quiet == []
    assert len(shown) == 1 and "score.weight" in shown[0]


def test_a_load_report_naming_any_other_weight_still_shows():
    import logging

    def record(rows: str) -> logging.LogRecord:
        text = "LlamaForSequenceClassification LOAD REPORT from: x\nKey | Status |\n----+----+-\n" + rows
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, __file__, 1, text, None, None)

    from reclor_lab.runs.loading import _ExpectedLoadReport

    quiet = _ExpectedLoadReport()
    assert not quiet.filter(record("score.weight | MISSING |\nlm_head.weight | UNEXPECTED |\n"))
    assert quiet.filter(record("score.weight | MISSING |\nmodel.layers.0.mlp.up_proj.weight | MISSING |\n"))
    assert quiet.filter(logging.LogRecord("transformers", logging.WARNING, __file__, 1, "other", None, None))
