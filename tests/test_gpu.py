"""The reference path on a CUDA device: 4-bit NF4 weights with bf16 compute, LoRA, train steps.

Skipped on CPU-only machines (CI, student laptops). On a GPU machine: `pytest -m gpu tests/test_gpu.py`.
"""

from __future__ import annotations

import json

import pytest
import torch

from reclor_lab.config import BUNDLED_DATA_DIR, get_preset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (CI and CPU laptops have none; run `pytest -m gpu` on a GPU)"),
]


@pytest.mark.parametrize("compute_dtype", ["auto", "float16"])
def test_tiny_model_trains_in_4bit_with_16_bit_compute_on_cuda(compute_dtype):
    """auto: bf16 where the GPU has it, else fp16; float16 forced: fp16 with loss scaling (a T4's path)."""
    import bitsandbytes as bnb

    from reclor_lab.data import format_example
    from reclor_lab.lora import inject_lora
    from reclor_lab.model import load_model, load_tokenizer, loss_scaler, pick_device, resolve_compute_dtype
    from reclor_lab.train import make_optimizer, optimizer_step, train_step

    cfg = get_preset("tiny", gradient_checkpointing=True, compute_dtype=compute_dtype)
    device, dtype = pick_device(), resolve_compute_dtype(cfg)
    assert device.type == "cuda"
    if compute_dtype == "auto":
        assert dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    scaler = loss_scaler(device, dtype)
    assert scaler.is_enabled() == (dtype == torch.float16)
    tok = load_tokenizer(cfg.model_name_or_path)
    model = load_model(cfg, tok)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(m.weight.device.type == "cuda" for m in quantized)
    assert all(m.compute_dtype == dtype for m in quantized)
    model = inject_lora(model, cfg)

    records = json.loads((BUNDLED_DATA_DIR / "train.json").read_text())[:8]
    enc = tok([format_example(r, cfg.template) for r in records], padding=True, return_tensors="pt")
    labels = torch.tensor([r["label"] for r in records])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(model, get_preset("tiny", learning_rate=5e-3), device)
    assert optimizer.defaults["fused"], "on a GPU the kit uses the fused AdamW kernel"
    model.train()
    losses, skipped = [], []
    for _ in range(15):  # overfit one batch: the loss must fall
        batch = {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device),
                 "labels": labels.to(device)}
        losses.append(train_step(model, batch, None, dtype, scaler=scaler).item())
        skipped.append(optimizer_step(model, optimizer, 5e-3, cfg.max_grad_norm, scaler))
    assert losses[-1] < losses[0] - 0.1, losses
    assert sum(skipped) <= 5, f"the loss scaler skipped {sum(skipped)} of 15 steps"
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen parameter {n} changed"
    assert any(not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if n in trainable)
    assert torch.cuda.max_memory_allocated() < 2 * 2**30
