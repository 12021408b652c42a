"""What one training step runs: the narrower k-bit upcast keeps the numerics, dropout 0 adds no
dropout op, attention is SDPA, and gradient accumulation over micro-batches is one big batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reclor_lab.config import get_preset
from reclor_lab.data import load_split, make_collator, model_inputs, tokenize_records
from reclor_lab.lora import inject_lora, rounding_gamma
from reclor_lab.model import load_model
from reclor_lab.runs.adapters import LoRADropout
from reclor_lab.train import train_step


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    """Here the bundled tiny model's tokenizer (the model these tests load), not conftest's."""
    return tiny_tokenizer


@pytest.fixture(scope="module")
def examples(tokenizer):
    """Eight bundled training records as model inputs (their lengths differ: padding happens)."""
    cfg = get_preset("tiny")
    ds, _ = tokenize_records(load_split(cfg.data_dir, "train")[:8], tokenizer, cfg.max_len, cfg.template)
    inputs = model_inputs(ds)
    return [inputs[i] for i in range(len(inputs))]


def _model(cfg, tokenizer, lora_b_seed: int | None = 1):
    torch.manual_seed(0)
    model = inject_lora(load_model(cfg, tokenizer), cfg).train()
    if lora_b_seed is not None:  # B starts at zero; a random B makes every LoRA gradient non-zero
        g = torch.Generator().manual_seed(lora_b_seed)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data = torch.randn(p.shape, generator=g) * 0.02
    return model


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for _, p in sorted(model.named_parameters()) if p.requires_grad])


def test_narrow_upcast_keeps_the_loss_and_gradients_of_peft_upcast(tokenizer, examples):
    """bf16 compute on the CPU, one step: peft's upcast (fp32 embeddings, norms and residual
    stream) against the kit's (only LoRA and the head in fp32).

    Tolerance: the two differ by the bf16 roundings of the residual stream that the fp32 path
    does not make. Per decoder layer at most 13 (two residual adds, two norm outputs, seven
    projection outputs, SiLU and its product), plus the final norm: k = 13·L + 1 roundings in the
    forward pass, relative error at most γ_k(bf16); the backward pass goes through as many again,
    so the gradients get γ_2k."""
    cfg = get_preset("tiny", compute_dtype="bfloat16", lora_dropout=0.0)
    batch = make_collator(tokenizer)(examples)
    out = {}
    for upcast in ("peft", "trainable"):
        model = _model(cfg.replace(kbit_upcast=upcast), tokenizer)
        inner = model.base_model.model
        embed_dtype = inner.model.embed_tokens.weight.dtype
        assert embed_dtype == (torch.float32 if upcast == "peft" else torch.bfloat16)
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
        loss = train_step(model, dict(batch), None, torch.bfloat16)
        out[upcast] = (loss.item(), _grads(model))
    k = 13 * inner.config.num_hidden_layers + 1
    (loss_peft, g_peft), (loss_narrow, g_narrow) = out["peft"], out["trainable"]
    assert loss_narrow == pytest.approx(loss_peft, rel=rounding_gamma(k, torch.bfloat16))
    assert (g_narrow - g_peft).norm() <= rounding_gamma(2 * k, torch.bfloat16) * g_peft.norm()
    assert (g_narrow - g_peft).norm() > 0  # the two paths really differ: the test compares something


def test_narrow_upcast_changes_nothing_in_fp32(tokenizer, examples):
    """The CPU's compute dtype: the model loads in fp32, so there is nothing to upcast."""
    cfg = get_preset("tiny", compute_dtype="float32", lora_dropout=0.0)
    batch = make_collator(tokenizer)(examples)
    grads = []
    for upcast in ("peft", "trainable"):
        model = _model(cfg.replace(kbit_upcast=upcast), tokenizer)
        train_step(model, dict(batch), None, torch.float32)
        grads.append(_grads(model))
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("dropout, kind", [(0.0, nn.Identity), (0.05, LoRADropout)])
def test_lora_dropout_0_runs_no_dropout_op(tokenizer, dropout, kind):
    model = _model(get_preset("tiny", lora_dropout=dropout), tokenizer, lora_b_seed=None)
    layers = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
    assert len(layers) == 14 and all(type(m) is kind for m in layers)


def test_attention_is_sdpa(tokenizer):
    model = load_model(get_preset("tiny"), tokenizer)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("k", [2, 4])
def test_accumulating_k_micro_batches_equals_one_big_batch(tokenizer, examples, k):
    """Plain cross-entropy (a mean over the batch), no dropout: k equal micro-batches, each
    loss divided by k, add up to the big batch's gradient in exact arithmetic. In fp32 they
    differ by the order of the sums and by each micro-batch's own padding; the tolerance is the
    fp32 rounding bound of the longest sum on the way, γ_n with n = hidden + intermediate +
    padded length, taken once per layer, forward and backward, and for the head."""
    cfg = get_preset("tiny", compute_dtype="float32", lora_dropout=0.0)
    collate = make_collator(tokenizer)
    big = _model(cfg, tokenizer)
    train_step(big, collate(examples), None, torch.float32)
    small = _model(cfg, tokenizer)
    size = len(examples) // k
    for i in range(k):
        train_step(small, collate(examples[i * size:(i + 1) * size]), None, torch.float32, accum_steps=k)
    conf = big.base_model.model.config
    longest = max(len(e["input_ids"]) for e in examples)
    n = conf.hidden_size + conf.intermediate_size + longest
    tol = 2 * (conf.num_hidden_layers + 1) * rounding_gamma(n, torch.float32)
    g_big, g_acc = _grads(big), _grads(small)
    assert (g_acc - g_big).norm() <= tol * g_big.norm()
    # the accumulation matters: one micro-batch alone is far from the big batch
    alone = _model(cfg, tokenizer)
    train_step(alone, collate(examples[:size]), None, torch.float32)
    assert (_grads(alone) - g_big).norm() > 100 * tol * g_big.norm()
