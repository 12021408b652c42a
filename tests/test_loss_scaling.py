"""fp16's dynamic loss scaling on the CPU: a step whose gradients overflow is skipped and lowers
the scale, the run records it, and a resume restores the scaler bit for bit.

torch's ``GradScaler`` runs on a CPU, so the whole path is checked here. The end-to-end tests
enable the scaler at fp32 compute (fp16 matmuls on a CPU are far slower: a 64-example fp16 epoch
of the tiny preset ran at 186 tokens/s on a busy 2-core machine): the
scaler's arithmetic is the same whatever the compute dtype, and an initial scale near fp32's
largest value makes the first steps overflow for sure.
"""

from __future__ import annotations

import types

import pytest
import torch

from reclor_lab.config import ConfigError, get_preset
from reclor_lab.model import loss_scaler, resolve_compute_dtype
from reclor_lab.train import NO_SCALING, optimizer_step, train_step

CPU = torch.device("cpu")
#: fp32's largest power of two: a loss of ~1.4 times this is inf, so the first step overflows.
OVERFLOWING_SCALE = 2.0**127


class TinyClassifier(torch.nn.Module):
    """What train_step needs of a model: keyword inputs, an output with ``.logits``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(3, 4)

    def forward(self, x):
        return types.SimpleNamespace(logits=self.head(x))


def _batch():
    g = torch.Generator().manual_seed(1)
    return {"x": torch.randn(6, 3, generator=g), "labels": torch.tensor([0, 1, 2, 3, 0, 1])}


def test_fp16_gets_an_enabled_scaler_and_other_dtypes_pass_through():
    assert loss_scaler(CPU, torch.float16).is_enabled()
    assert not loss_scaler(CPU, torch.bfloat16).is_enabled()
    assert not loss_scaler(CPU, torch.float32).is_enabled()
    assert not NO_SCALING.is_enabled() and NO_SCALING.state_dict() == {}


def test_compute_dtype_auto_picks_fp16_on_a_gpu_without_bf16_and_any_dtype_can_be_forced(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a T4, a V100
    assert resolve_compute_dtype(get_preset("llama2-7b")) == torch.float16
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)):
        assert resolve_compute_dtype(get_preset("tiny", compute_dtype=name)) == dtype
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_compute_dtype(get_preset("tiny", compute_dtype="float16")) == torch.float16
    with pytest.raises(ConfigError, match="`compute_dtype` is 'fp16'; choose one of 'auto', 'bfloat16', 'float16'"):
        get_preset("tiny", compute_dtype="fp16")


def _step(model, optimizer, scaler, overflow: bool = False) -> bool:
    """One train step + optimizer step; ``overflow`` turns one weight's gradient into inf, as an
    fp16 overflow in backward would. True when the step was skipped."""
    hook = model.head.weight.register_hook(lambda g: torch.full_like(g, float("inf"))) if overflow else None
    train_step(model, _batch(), None, torch.float32, scaler=scaler)
    if hook is not None:
        hook.remove()
    return optimizer_step(model, optimizer, 0.1, max_grad_norm=0.3, scaler=scaler)


def test_an_overflowing_step_is_skipped_and_lowers_the_scale_then_a_clean_step_trains():
    model = TinyClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    assert _step(model, optimizer, scaler, overflow=True) is True
    assert scaler.get_scale() == 2.0**15  # backoff 0.5
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "a skipped step changed weights"
    assert all(not s for s in optimizer.state.values()), "Adam stepped on a skipped step"
    assert all(p.grad is None for p in model.parameters())  # cleared for the next step

    assert _step(model, optimizer, scaler) is False
    assert scaler.get_scale() == 2.0**15
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_scaled_step_equals_an_unscaled_one():
    """Loss scaling by a power of two changes no bit of a step without overflow: the gradients
    are multiplied and divided exactly, and unscaled before clipping."""
    results = []
    for scaler in (NO_SCALING, torch.amp.GradScaler("cpu", init_scale=2.0**16)):
        model = TinyClassifier()
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        for _ in range(3):
            train_step(model, _batch(), None, torch.float32, accum_steps=1, scale=1.0, scaler=scaler)
            assert optimizer_step(model, optimizer, 0.1, max_grad_norm=0.3, scaler=scaler) is False
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_a_checkpoint_holds_the_scaler_and_a_restore_puts_back_every_field():
    from reclor_lab.runs.session import load_loop_state, loop_state_dict
    from reclor_lab.train import History, LoopState

    model = TinyClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=2)
    skipped = [_step(model, optimizer, scaler, overflow=i == 0) for i in range(4)]
    assert skipped == [True, False, False, False]  # the scale: halved, doubled after 2 clean steps, 1 more
    assert scaler.get_scale() == 2.0**16
    ts = loop_state_dict(LoopState(optimizer, History(), 10, 1, scaler=scaler))
    assert ts["scaler"] == scaler.state_dict() and ts["scaler"]["_growth_tracker"] > 0

    fresh = LoopState(torch.optim.AdamW(TinyClassifier().parameters(), lr=0.1), History(), 10, 1,
                 scaler=torch.amp.GradScaler("cpu"))
    load_loop_state(fresh, ts, History().to_dict())
    assert fresh.scaler.state_dict() == scaler.state_dict()
    # A run without loss scaling saves none, and a checkpoint without one leaves the scaler as it is.
    assert loop_state_dict(LoopState(optimizer, History(), 10, 1))["scaler"] == {}


# --- in the loop, with a checkpoint and a resume ---------------------------------------------------

#: 8 optimizer steps an epoch, 2 epochs, a checkpoint after every step.
RUN = dict(train_limit=64, eval_limit=16, epochs=2, save_every_steps=1)


@pytest.fixture
def overflowing_scaler(monkeypatch):
    """The loop's scaler, enabled at fp32 compute, starting at a scale that overflows and
    growing after every 3 clean steps: the scale moves both ways within the run."""
    import reclor_lab.train as train

    monkeypatch.setattr(train, "loss_scaler", lambda device, dtype: torch.amp.GradScaler(
        "cpu", init_scale=OVERFLOWING_SCALE, growth_interval=3))


@pytest.mark.slow
def test_the_loop_skips_and_counts_overflowing_steps_and_resumes_the_scaler_exactly(
        overflowing_scaler, tmp_path, capsys):
    from reclor_lab.train import fit, setup

    straight = get_preset("tiny", output_dir=str(tmp_path / "straight"), **RUN)
    h1 = fit(setup(straight, verbose=False), straight.output_dir, verbose=True)
    skipped = [s["step"] for s in h1.steps if s.get("skipped")]
    assert skipped and skipped[0] == 1, skipped  # the first step overflows for sure
    assert len(skipped) < len(h1.steps), "no step ever trained"
    per_epoch = [e["skipped_steps"] for e in h1.epochs]
    assert sum(per_epoch) == len(skipped)
    assert h1.epochs[-1]["loss_scale"] < OVERFLOWING_SCALE
    assert f"{per_epoch[0]} steps skipped (inf/NaN gradients), loss scale" in capsys.readouterr().out

    split = straight.replace(output_dir=str(tmp_path / "split"))
    fit(setup(split, verbose=False), split.output_dir, stop_after_step=len(skipped) + 2, verbose=False)
    assert _checkpoint(tmp_path / "split")["scaler"]["scale"] < OVERFLOWING_SCALE  # what the resume restores
    h2 = fit(setup(split, verbose=False), split.output_dir, resume=True, verbose=False)

    assert [s["loss"] for s in h2.steps] == [s["loss"] for s in h1.steps]
    assert [s.get("skipped", False) for s in h2.steps] == [s.get("skipped", False) for s in h1.steps]
    assert [e["loss_scale"] for e in h2.epochs] == [e["loss_scale"] for e in h1.epochs]
    assert [e["eval_loss"] for e in h2.evals] == [e["eval_loss"] for e in h1.evals]
    a = _checkpoint(tmp_path / "straight")
    b = _checkpoint(tmp_path / "split")
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] < OVERFLOWING_SCALE


def _checkpoint(run_dir) -> dict:
    from reclor_lab.runs.rundir import RunDir

    return torch.load(RunDir(run_dir).last_dir() / "trainer_state.pt", weights_only=True)  # as the kit loads it


def test_the_trainer_path_asks_for_the_trainer_s_own_fp16_loss_scaling(tmp_path):
    from reclor_lab.runs.trainer import training_arguments

    cfg = get_preset("tiny")
    assert training_arguments(cfg, tmp_path, 10, fp16=True).fp16 is True
    assert training_arguments(cfg, tmp_path, 10).fp16 is False
