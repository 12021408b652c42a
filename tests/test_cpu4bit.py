"""One 4-bit CPU path on every CPU class: correct LoRA gradients after an evaluation pass, double
quantization kept, no autograd warning, no hub-kernel notice (see reclor_lab/cpu4bit.py).

Each behaviour test runs twice through the ``cpu_class`` fixture (tests/conftest.py), which makes
bitsandbytes take the path of a CPU with or without ``avx512_bf16``, so a pass on either class of
machine covers both.
"""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import warnings

import pytest
import torch

from helpers_models import force_cpu_class
from reclor_lab.cpu4bit import (
    BNB_CPU_LOGGER, KERNELS_HUB_NOTICE, RepackedWeightsError, cpu_kernel_report, is_repacked,
    use_portable_kernels,
)
from reclor_lab.lora import inject_lora
from reclor_lab.model import load_model, memory_report

#: The warning torch prints when an op without an autograd kernel is differentiated through.
NO_AUTOGRAD = "autograd kernel was not registered"


@pytest.fixture(scope="module")
def cfg(cfg):
    # conftest's, with dropout 0: the two models compared below must see the same function
    return cfg.replace(lora_dropout=0.0)


def _batch(tokenizer):
    return tokenizer(["Context: the committee argues that every proposal", "Question: which Option A:"],
                     padding=True, return_tensors="pt")


def _eval_pass(model, batch) -> None:
    """What the kit's baseline evaluation does to a model: eval mode, no gradients."""
    model.eval()
    with torch.no_grad():
        model(**batch)


def _raw_4bit_model(cfg, tokenizer):
    """The model as bitsandbytes alone would leave it (the kit's portable switch undone)."""
    from transformers import AutoModelForSequenceClassification

    from reclor_lab.model import bnb_config

    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.model_name_or_path, num_labels=4, quantization_config=bnb_config(cfg), dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _dequantized_copy(model):
    """The same model with every Linear4bit replaced by an fp32 nn.Linear holding its
    dequantized weight: the ground truth for what the 4-bit layers should compute."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    ref = copy.deepcopy(model)
    for module in list(ref.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                linear = torch.nn.Linear(child.in_features, child.out_features, bias=False)
                linear.weight = torch.nn.Parameter(
                    bnbf.dequantize_4bit(child.weight.data, child.weight.quant_state).float(),
                    requires_grad=False)
                setattr(module, name, linear)
    return ref


def _lora_grads(model, batch, labels) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(**batch).logits
    torch.nn.functional.cross_entropy(logits, labels).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_bitsandbytes_alone_repacks_on_eval_and_drops_double_quant(monkeypatch, cfg, tokenizer):
    """The hazard the kit guards against, pinned: if a bitsandbytes upgrade changes it, this fails
    and reclor_lab/cpu4bit.py needs a fresh look."""
    force_cpu_class(monkeypatch, True)
    model = _raw_4bit_model(cfg, tokenizer)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.support_avx512bf16_for_cpu and layer.weight.quant_state.nested
    try:
        _eval_pass(model, _batch(tokenizer))
    except NotImplementedError:
        pass  # a CPU without avx512_bf16 has no kernel for the packed layout; the repack happened
    assert is_repacked(layer)
    assert not layer.weight.quant_state.nested and not hasattr(layer.weight.quant_state, "state2")
    with pytest.raises(RepackedWeightsError, match="load the model again"):
        use_portable_kernels(model)


def test_load_model_takes_the_portable_path_and_keeps_double_quant(cpu_class, cfg, tokenizer):
    model = load_model(cfg, tokenizer)
    _eval_pass(model, _batch(tokenizer))
    report = cpu_kernel_report(model)
    assert report.cpu_has_avx512_bf16 is cpu_class
    assert report.layers == 14 and report.portable_layers == 14 and report.repacked_layers == 0
    assert report.model_path == "dequantize + matmul in the compute dtype"
    state = model.model.layers[0].self_attn.q_proj.weight.quant_state
    assert state.nested and state.state2 is not None  # double quantization still applied
    assert memory_report(model).double_quant is True


def test_lora_gradients_after_an_eval_pass_match_the_dequantized_model(cpu_class, cfg, tokenizer):
    torch.manual_seed(0)
    model = inject_lora(load_model(cfg, tokenizer), cfg)
    with torch.no_grad():  # B = 0 would give A no gradient at all
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    reference = _dequantized_copy(model)
    batch, labels = _batch(tokenizer), torch.tensor([1, 3])

    _eval_pass(model, batch)  # the baseline evaluation every run starts with
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=f".*{NO_AUTOGRAD}")
        got = _lora_grads(model, batch, labels)
    want = _lora_grads(reference, batch, labels)
    assert got.keys() == want.keys() and any("lora_A" in k for k in got)
    # Stated tolerance: both models run the same fp32 ops on the same dequantized weights, so
    # the gradients agree up to summation order: at most ~n·u per matmul (n <= 128 inner
    # products, u = 6e-8) over a chain of a few dozen matmuls, under 1e-4 of each tensor's
    # norm. The bf16 kernel without autograd misses by 10-100 % (measured: 114 %).
    for k in want:
        err = (got[k] - want[k]).norm() / want[k].norm().clamp_min(1e-30)
        assert err < 1e-4, f"{k}: gradient off by {err:.2e} of its norm"


def test_kernels_hub_notice_is_dropped_and_nothing_else():
    logger = logging.getLogger(BNB_CPU_LOGGER)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("%s: No module named 'kernels'. Please make sure ...", KERNELS_HUB_NOTICE)
        logger.warning("some other bitsandbytes warning")
    finally:
        logger.removeHandler(handler)
    assert seen == ["some other bitsandbytes warning"]


def test_importing_the_kit_then_bitsandbytes_prints_no_hub_notice():
    """On an avx512_bf16 CPU bitsandbytes logs the notice at import; the kit's filter is in place
    first. (On a CPU without the flag bitsandbytes has nothing to say, and this passes as is;
    the test above checks the filter itself on every CPU.)"""
    code = "import reclor_lab, bitsandbytes; print('imported')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr
    assert "kernels-community" not in out.stderr
