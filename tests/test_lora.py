"""LoRA targets, injection, parameter counts, one training step, and the hand-written LoRA layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers_models import LLAMA_PROJECTIONS, TINY_LLAMA
from reclor_lab.config import NUM_LABELS
from reclor_lab.lora import (
    LoRALinear,
    find_lora_targets,
    inject_lora,
    lora_config,
    predicted_lora_params,
    target_shapes,
    trainable_report,
)
from reclor_lab.model import load_model
from reclor_lab.runs.adapters import LoRADropout


@pytest.fixture()
def peft_4bit(cfg, tokenizer):
    torch.manual_seed(0)
    return inject_lora(load_model(cfg, tokenizer), cfg)


def _batch(tokenizer):
    batch = tokenizer(
        ["Context: the committee argues that every proposal", "Question: which Option A:"],
        padding=True, return_tensors="pt",
    )
    batch["labels"] = torch.tensor([1, 3])
    return batch


def test_targets_cover_all_projections_and_skip_the_head(cfg, tokenizer):
    model = load_model(cfg, tokenizer)
    assert find_lora_targets(model) == LLAMA_PROJECTIONS
    plain = load_model(cfg.replace(quantization="none"), tokenizer)
    assert find_lora_targets(plain) == LLAMA_PROJECTIONS  # nn.Linear path, head excluded
    assert "score" not in find_lora_targets(plain)


def test_lora_config_follows_the_run_config(cfg):
    from peft import TaskType

    lc = lora_config(cfg.replace(lora_r=8, lora_alpha=32, lora_dropout=0.1), ["q_proj", "v_proj"])
    assert lc.task_type == TaskType.SEQ_CLS
    assert (lc.r, lc.lora_alpha, lc.lora_dropout, lc.bias) == (8, 32, 0.1, "none")
    assert set(lc.target_modules) == {"q_proj", "v_proj"}


def test_trainable_count_equals_prediction_and_peft(peft_4bit, cfg):
    report = trainable_report(peft_4bit)
    h, i, layers, r = (TINY_LLAMA["hidden_size"], TINY_LLAMA["intermediate_size"],
                       TINY_LLAMA["num_hidden_layers"], cfg.lora_r)
    by_hand = layers * r * (4 * (h + h) + 3 * (h + i)) + NUM_LABELS * h  # adapters + head
    assert report.trainable == predicted_lora_params(peft_4bit, LLAMA_PROJECTIONS, r) == by_hand
    assert (report.trainable, report.total) == peft_4bit.get_nb_trainable_parameters()
    assert report.line().startswith(f"trainable params: {by_hand:,} || all params: ")
    assert 0 < report.percent < 100


def test_only_adapters_and_head_are_trainable(peft_4bit):
    trainable = [n for n, p in peft_4bit.named_parameters() if p.requires_grad]
    assert trainable
    for name in trainable:
        assert ".lora_A." in name or ".lora_B." in name or "score.modules_to_save" in name, name
    assert any("score.modules_to_save" in n for n in trainable)
    adapted = {n.split(".")[-1] for n, m in peft_4bit.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(LLAMA_PROJECTIONS)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():  # 4-bit block scales live outside the parameters
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            state[n + ".absmax"] = qs.absmax.clone()
    return state


def test_one_step_changes_only_lora_and_head_weights(peft_4bit, tokenizer):
    model = peft_4bit
    model.train()
    before = _snapshot(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=1e-2, weight_decay=0.0)
    loss = model(**_batch(tokenizer)).loss
    loss.backward()
    optimizer.step()
    after = _snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    allowed = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed <= allowed, sorted(changed - allowed)
    # B starts at zero so only B gets a gradient on step one (A's gradient is B^T(...) = 0)
    assert all(n in changed for n in allowed if ".lora_B." in n)
    assert any("score.modules_to_save" in n for n in changed)


def test_gradient_checkpointing_path_trains(cfg, tokenizer):
    gc_cfg = cfg.replace(gradient_checkpointing=True)
    model = inject_lora(load_model(gc_cfg, tokenizer), gc_cfg)
    model.train()
    model(**_batch(tokenizer)).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if ".lora_B." in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_plain_model_injection(cfg, tokenizer):
    plain_cfg = cfg.replace(quantization="none", lora_targets=("q_proj", "v_proj"),
                            gradient_checkpointing=True)
    model = inject_lora(load_model(plain_cfg, tokenizer), plain_cfg)
    expected = predicted_lora_params(model, ["q_proj", "v_proj"], plain_cfg.lora_r)
    assert trainable_report(model).trainable == expected
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
    model.train()
    model(**_batch(tokenizer)).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if ".lora_B." in n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_error_bound_holds_and_still_catches_a_wrong_update(dtype):
    """The notebook's "equal within rounding": true for the two ways of computing the adapted
    layer in fp32 and in bf16, false for a layer with the wrong scale (alpha/r inverted) or a
    missing term."""
    from reclor_lab.lora import lora_error_bound

    g = torch.Generator().manual_seed(0)
    n_in, n_out, r, alpha = 64, 64, 16, 32
    W0 = torch.randn(n_out, n_in, generator=g) * 0.05
    A = torch.randn(r, n_in, generator=g) / n_in**0.5
    B = torch.randn(n_out, r, generator=g) / r**0.5
    x = torch.randn(8, n_in, generator=g)
    scaling = alpha / r
    merged = x @ (W0 + scaling * B @ A).T  # the reference, fp32
    low = lambda t: t.to(dtype)  # noqa: E731
    layer = (low(x) @ low(W0).T).float() + scaling * (x @ A.T) @ B.T  # the base matmul in `dtype`
    bound = lora_error_bound(x, W0, A, B, scaling, dtype)
    assert ((layer.double() - merged.double()).abs() <= bound).all()
    wrong_scale = x @ W0.T + (r / alpha) * (x @ A.T) @ B.T
    assert not ((wrong_scale.double() - merged.double()).abs() <= bound).all()
    assert not ((x @ W0.T).double() - merged.double()).abs().le(bound).all()


def test_target_shapes_are_the_same_before_and_after_injection(cfg, tokenizer):
    """peft renames an adapted layer to `….base_layer`; the shapes by leaf name must survive that
    (notebook 03's explorer read them after injection and found none)."""
    model = load_model(cfg, tokenizer)
    before = target_shapes(model)
    assert sorted(before) == find_lora_targets(model)
    assert all(len(v) == TINY_LLAMA["num_hidden_layers"] for v in before.values()), before
    after = target_shapes(inject_lora(model, cfg))
    assert after == before


# --- the dropout on the LoRA input (LoRADropout) -----------------------------------------------

def test_every_lora_input_dropout_is_the_kits(peft_4bit, cfg):
    dropouts = [d for m in peft_4bit.modules() if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
                for d in m.lora_dropout.values()]
    adapted = len(find_lora_targets(peft_4bit)) * peft_4bit.config.num_hidden_layers
    assert len(dropouts) == adapted and cfg.lora_dropout > 0
    assert all(type(d) is LoRADropout and d.p == cfg.lora_dropout for d in dropouts)


def test_lora_dropout_drops_with_probability_p_and_rescales_the_rest():
    p, n = 0.05, 2_000_000
    drop = LoRADropout(p).train()
    torch.manual_seed(0)
    out = drop(torch.ones(n))
    kept = out != 0
    # a Bernoulli(p) count: 5 standard deviations either side of n * p (one draw in ~3.5 million fails)
    assert abs(int((~kept).sum()) - n * p) <= 5 * (n * p * (1 - p)) ** 0.5
    assert torch.all(out[kept] == torch.tensor(1 / (1 - p), dtype=torch.float32))
    # no structure: the drops of even and odd positions (two halves of each 64-bit draw) are alike
    even, odd = (float((~kept[i::2]).float().mean()) for i in (0, 1))
    assert abs(even - odd) <= 5 * (4 * p * (1 - p) / n) ** 0.5


def test_lora_dropout_follows_torchs_seed_and_moves_its_generator():
    drop, x = LoRADropout(0.3).train(), torch.ones(64, 64)
    torch.manual_seed(1)
    first, second = drop(x), drop(x)
    torch.manual_seed(1)
    assert torch.equal(drop(x), first) and torch.equal(drop(x), second)
    assert not torch.equal(first, second)  # each call draws a new mask


def test_lora_dropout_gradient_is_its_mask_and_eval_is_the_identity():
    drop = LoRADropout(0.2).train()
    x = torch.randn(32, 16, requires_grad=True)
    out = drop(x)
    out.sum().backward()
    mask = (out != 0).float() / 0.8
    assert torch.allclose(x.grad, mask) and torch.allclose(out, x * mask)
    assert drop(torch.ones(3, dtype=torch.bfloat16)).dtype == torch.bfloat16
    drop.eval()
    assert torch.equal(drop(x), x)
    assert torch.equal(LoRADropout(0.0).train()(x), x)
    assert torch.equal(LoRADropout(1.0).train()(x), torch.zeros_like(x))


def test_lora_dropout_redraws_the_same_mask_when_checkpointing_recomputes():
    """Gradient checkpointing runs the forward again in backward; torch restores its RNG state
    for that, and the mask is a function of that state, so the recomputed mask is the one the
    forward used and the gradients are those of the run without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(3)
    first, second = nn.Linear(32, 32), nn.Linear(32, 4)
    block = nn.Sequential(first, LoRADropout(0.3).train(), second)
    x = torch.randn(16, 32)
    grads = []
    for checkpointed in (False, True):
        block.zero_grad()
        torch.manual_seed(11)
        out = checkpoint(block, x, use_reentrant=False) if checkpointed else block(x)
        out.square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in block.parameters()]))
    assert torch.equal(grads[0], grads[1])
    block.zero_grad()
    torch.manual_seed(12)  # another mask: other gradients (the comparison above can fail)
    block(x).square().sum().backward()
    assert not torch.equal(grads[0], torch.cat([p.grad.flatten() for p in block.parameters()]))


# --- the hand-written layer against peft's ------------------------------------------------------------

def _peft_layer(base: nn.Module, four_bit: bool, r: int, alpha: int, dropout: float) -> nn.Module:
    """peft's LoRA layer around ``base``, as get_peft_model builds it (for a 4-bit base: peft's
    bitsandbytes ``Linear4bit``, the layer a QLoRA run trains)."""
    from peft import LoraConfig, get_peft_model

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = base

        def forward(self, x):
            return self.proj(x)

    holder = One()
    holder.is_loaded_in_4bit = four_bit  # what a 4-bit transformers model says; peft dispatches on it
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=["proj"])
    return get_peft_model(holder, config).base_model.model.proj


@pytest.mark.parametrize("four_bit", [False, True], ids=["nn.Linear", "Linear4bit"])
def test_hand_written_lora_linear_equals_peft_s_layer(four_bit):
    """Same A, B and base weights, same dropout draws (the same seed before each forward):
    the same outputs and the same gradients for A, B and the input, bit for bit in fp32 (both
    compute base(x) + B(A(dropout(x))) · alpha / r with the same operations, in the same order)."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    base = (bnb.nn.Linear4bit(32, 24, compute_dtype=torch.float32, quant_type="nf4").to("cpu") if four_bit
            else nn.Linear(32, 24))
    theirs = _peft_layer(base, four_bit, r=4, alpha=8, dropout=0.1)
    assert type(theirs).__module__ == ("peft.tuners.lora.bnb" if four_bit else "peft.tuners.lora.layer")
    ours = LoRALinear(theirs.base_layer, r=4, alpha=8, dropout=0.1)
    assert ours.A.weight.shape == theirs.lora_A["default"].weight.shape == (4, 32)
    assert ours.B.weight.shape == theirs.lora_B["default"].weight.shape == (24, 4)
    assert not ours.B.weight.any() and ours.scaling == theirs.scaling["default"] == 2.0
    with torch.no_grad():  # B starts at zero; a random B makes A's gradient non-zero too
        theirs.lora_B["default"].weight.normal_()
        ours.A.weight.copy_(theirs.lora_A["default"].weight)
        ours.B.weight.copy_(theirs.lora_B["default"].weight)
    x = torch.randn(3, 5, 32)
    got = []
    for layer, A, B in ((theirs, theirs.lora_A["default"], theirs.lora_B["default"]), (ours, ours.A, ours.B)):
        layer.train()
        torch.manual_seed(1)  # the same dropout mask for both
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        y.square().sum().backward()
        got.append((y.detach(), A.weight.grad, B.weight.grad, xi.grad))
    (want_y, *want_grads), (our_y, *our_grads) = got
    assert torch.equal(our_y, want_y)
    assert all(torch.equal(a, b) for a, b in zip(our_grads, want_grads))
    assert not torch.equal(our_y, theirs.base_layer(x))  # the update is there: the test compares something
    assert all(p.grad is None for p in ours.base.parameters())  # the base stays frozen
