"""The checks of notebook 04 (the training loop)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from reclor_lab.config import NUM_LABELS
from reclor_lab.loss import weighted_cross_entropy
from reclor_lab.course.checks.common import MAX_GRAD_NORM, NUMBER, RTOL, _Fail, _close, _run

# --- 9. weighted cross-entropy ------------------------------------------------------------------------------

def reference_weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """:func:`reclor_lab.loss.weighted_cross_entropy`."""
    return weighted_cross_entropy(logits, labels, weights)


def _ce_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    skewed = torch.tensor([1.0, 2.0, 2.0, 0.5])
    return [
        ("a batch of 4 with all weights 1", torch.randn(4, NUM_LABELS, generator=g),
         torch.tensor([0, 1, 2, 3]), torch.ones(NUM_LABELS)),
        ("a batch of 5 with weights [1, 2, 2, 0.5]", torch.randn(5, NUM_LABELS, generator=g),
         torch.tensor([3, 3, 1, 0, 3]), skewed),
        ("a batch of 3 with weights [1, 2, 2, 0.5]", torch.randn(3, NUM_LABELS, generator=g) * 3,
         torch.tensor([1, 2, 1]), skewed),
    ]


def _ce_inputs(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> str:
    """The inputs of a weighted cross-entropy case, as a student can type them in."""
    rows = ", ".join("[" + ", ".join(f"{x:.2f}" for x in row) + "]" for row in logits.tolist())
    return (f"The inputs: logits [{rows}], labels {labels.tolist()}, weights "
            f"{[round(w, 3) for w in weights.tolist()]}.")


def _ce_hint(got: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> str:
    per_example = F.cross_entropy(logits, labels, reduction="none")
    w = weights[labels]
    want = (w * per_example).sum() / w.sum()
    if torch.allclose(got, -want, rtol=RTOL):
        return ("the right size with the wrong sign: cross-entropy is MINUS the log-probability of the "
                "right answer, -log p (log p is negative, the loss positive).")
    if torch.allclose(got, (w * per_example).sum() / weights.sum(), rtol=RTOL):
        return ("it divides by the sum of all four class weights; divide by the sum of the weights of the "
                "batch's labels, w[y_i] summed over the batch (as CrossEntropyLoss(weight=w) does).")
    over_batch = -torch.log_softmax(logits.float(), dim=0).gather(1, labels.view(-1, 1)).squeeze(1)
    if torch.allclose(got, (w * over_batch).sum() / w.sum(), rtol=RTOL) or torch.allclose(
            got, over_batch.mean(), rtol=RTOL):
        return ("the softmax runs over the batch (dim=0): each COLUMN sums to 1, so an example's probabilities "
                "depend on the other examples. Take log_softmax over the four options, dim=-1 (each row).")
    if torch.allclose(got, (w * per_example).sum() / len(labels), rtol=RTOL):
        return ("it divides by the batch size; divide the weighted sum by the sum of the weights of the "
                "batch's labels (as CrossEntropyLoss(weight=w) does).")
    if torch.allclose(got, per_example.mean(), rtol=RTOL):
        return "that is plain cross-entropy: the class weights were not used."
    if torch.allclose(got, (w * per_example).sum(), rtol=RTOL):
        return "that is the weighted sum; divide it by the sum of the weights of the batch's labels."
    return ("expected the mean cross-entropy weighted by each example's label weight, "
            "Σ w[y_i]·CE_i / Σ w[y_i]: what F.cross_entropy(logits, labels, weight=weights) gives.")


def check_weighted_ce(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    """Exercise 9: ``fn(logits, labels, weights)`` → the scalar loss of ``F.cross_entropy(weight=w)``."""

    def test(fn: Callable) -> None:
        for what, logits, labels, weights in _ce_cases():
            x = logits.clone().requires_grad_(True)
            got = fn(x, labels.clone(), weights.clone())
            if not isinstance(got, torch.Tensor):
                raise _Fail(f"for {what} it returned {type(got).__name__}; return the loss as a tensor "
                            "(no .item(): backward() needs the tensor).")
            if got.dim() != 0:
                raise _Fail(f"for {what} it returned a tensor of shape {tuple(got.shape)}; return one "
                            "scalar (reduce over the batch).")
            if not got.requires_grad:
                raise _Fail(f"for {what} the loss is cut off from the logits' graph (no grad); build it "
                            "from the logits with torch operations.")
            want = reference_weighted_ce(logits, labels, weights)
            got = got.detach().float()
            if not torch.allclose(got, want, rtol=RTOL, atol=1e-6):
                raise _Fail(f"for {what} it returned {got.item():.4f}, expected {want.item():.4f}: "
                            f"{_ce_hint(got, logits, labels, weights)} {_ce_inputs(logits, labels, weights)}")

    return _run(NUMBER["weighted_ce"], fn, reference_weighted_ce, test)


# --- 10. one training step ----------------------------------------------------------------------------------

def reference_train_step(model: nn.Module, batch: dict, optimizer: torch.optim.Optimizer,
                         weights: torch.Tensor | None, max_grad_norm: float = MAX_GRAD_NORM) -> float:
    """Forward, weighted loss, backward, clip the gradient norm to ``max_grad_norm`` (0.3), step,
    zero the gradients.

    The operations of the package's step (:func:`reclor_lab.train.train_step` +
    :func:`~reclor_lab.train.optimizer_step`, fp32, the optimizer's own learning rate), written
    out rather than called: the grader hands it to exercise 16 in place of a student's
    ``one_train_step``, while the package's step is not available there. Returns the loss before
    the step; the caller's batch is left as it was.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    loss = weighted_cross_entropy(model(**inputs).logits, batch["labels"], weights)
    loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


#: SGD makes a step a pure function of the gradient: the check compares the student's step with the
#: reference's exactly. The learning rate is large so that clipping visibly changes the step.
_CHECK_LR = 0.5
_CHECK_SEED = 1234


def _checksum(p: torch.Tensor) -> float:
    """A cheap fingerprint of a frozen parameter (packed 4-bit ones included) without copying it all."""
    return p.detach().sum(dtype=torch.float64).item()


def check_train_step(fn: Callable, model: nn.Module, batch: dict, weights: torch.Tensor | None) -> Callable:
    """Exercise 10: ``fn(model, batch, optimizer, weights) -> float`` (its ``max_grad_norm`` left at
    the default, 0.3) does one full optimizer step.

    Runs two reference steps and two of the student's from the same parameters and the same
    dropout seed, and compares: the returned losses (each the loss before its step), the
    trainable parameters after each step (which also checks clipping at 0.3), untouched frozen
    parameters. Two steps, because the gradients may be cleared before ``backward()`` (PyTorch's
    tutorials, Raschka's book) or after ``step()`` (the kit's loop): both are right, and only a
    second step shows a missing ``zero_grad``. The model is left exactly as it was: parameters,
    gradients, train/eval mode and torch's RNG.
    """
    named = [(n, p) for n, p in model.named_parameters()]
    trainable = [(n, p) for n, p in named if p.requires_grad]
    if not trainable:
        raise ValueError("check_train_step needs a model with trainable parameters (call inject_lora first)")
    frozen = [(n, p) for n, p in named if not p.requires_grad]

    def reset() -> None:
        with torch.no_grad():
            for (_, p), s in zip(trainable, saved):
                p.copy_(s)
                p.grad = None
        model.train()  # dropout on, as in training; the same masks for both runs (same seed)
        torch.manual_seed(_CHECK_SEED)

    def steps(step_fn: Callable, n: int = 2) -> tuple[list[Any], list[list[torch.Tensor]]]:
        """``n`` steps from the saved parameters with a fresh SGD optimizer and seeded dropout.
        What happened in what order goes to ``events``: each ``backward()`` reaching the
        trainable parameters, and each ``optimizer.step()`` with whether it found gradients."""
        reset()
        events.clear()
        optimizer = torch.optim.SGD([p for _, p in trainable], lr=_CHECK_LR)
        hooks = [optimizer.register_step_pre_hook(lambda *_: events.append(("step", any(
                     p.grad is not None and bool(p.grad.any()) for _, p in trainable)))),
                 trainable[0][1].register_post_accumulate_grad_hook(lambda _: events.append(("backward", None)))]
        losses, params = [], []
        try:
            for _ in range(n):
                losses.append(step_fn(model, batch, optimizer, weights))  # the caller's own batch
                check_batch()
                params.append([p.detach().clone() for _, p in trainable])
        finally:
            for h in hooks:
                h.remove()
        return losses, params

    def check_batch() -> None:
        """Fail if the step changed the caller's batch, after putting it back together."""
        if _changed(batch, kept):
            batch.clear()
            batch.update(kept)  # whole again for the caller's next cell
            with torch.no_grad():
                for k, v in kept_values.items():
                    if isinstance(v, torch.Tensor):
                        kept[k].copy_(v)
            raise _Fail("it changed the caller's batch (a key popped, added or replaced, or a tensor "
                        "edited in place); the next cell would get a broken batch: read the labels "
                        "with batch['labels'] and pass the other keys to the model without "
                        "changing the dict.")

    def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.allclose(x, y, rtol=1e-3, atol=1e-6) for x, y in zip(a, b))

    def judge(fn: Callable) -> None:
        want_losses, want_params = steps(reference_train_step)
        got_losses, got_params = steps(fn)
        for got_loss in got_losses:
            if isinstance(got_loss, torch.Tensor):
                raise _Fail("it returned a tensor; return loss.item(), a Python float (a kept tensor also "
                            "keeps the batch's whole graph in memory).")
            if isinstance(got_loss, bool) or not isinstance(got_loss, (int, float)):
                raise _Fail(f"it returned {type(got_loss).__name__}; return the loss as a Python float.")
        if any(_checksum(p) != s for (_, p), s in zip(frozen, frozen_sums)):
            raise _Fail("a frozen parameter changed; only the trainable (LoRA and head) parameters may "
                        "move: build nothing new, just step the optimizer you are given.")
        if all(torch.equal(a, b) for a, b in zip(got_params[0], saved)):
            raise _Fail(_no_change_hint(events))
        if not _close(float(got_losses[0]), want_losses[0]):
            reset()  # back to the saved parameters: the loss they give unweighted
            if _close(float(got_losses[0]), _plain_loss(model, batch)):
                raise _Fail("the returned loss is the unweighted cross-entropy; pass the class weights.")
            raise _Fail(f"it returned the loss {float(got_losses[0]):.4f}, not the weighted cross-entropy "
                        "of the batch before the step; compute it from model(...).logits and the batch's labels.")
        if not same(got_params[0], want_params[0]):
            _, unclipped = steps(_unclipped_step, n=1)  # only to explain the failure
            if same(got_params[0], unclipped[0]):
                raise _Fail(f"the step was not clipped; call torch.nn.utils.clip_grad_norm_ on the "
                            f"trainable parameters with max_norm={MAX_GRAD_NORM} between backward() and step().")
            raise _Fail(f"the parameters after the step differ from one clipped (max_norm={MAX_GRAD_NORM}) "
                        "optimizer step on the weighted loss; order: backward, clip, step.")
        if not same(got_params[1], want_params[1]):
            raise _Fail("the first step is right, the second is not: the first step's gradients were still "
                        "in the parameters when the second ran backward(), which adds to them. Clear them "
                        "once per step with optimizer.zero_grad(), before backward() or after step().")

    def test(fn: Callable) -> None:
        nonlocal saved, frozen_sums
        saved = [p.detach().clone() for _, p in trainable]
        saved_grads = [None if p.grad is None else p.grad.detach().clone() for _, p in trainable]
        frozen_sums = [_checksum(p) for _, p in frozen]
        was_training = model.training
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            judge(fn)
        finally:
            with torch.no_grad():
                for (_, p), s, g in zip(trainable, saved, saved_grads):
                    p.copy_(s)
                    p.grad = g
            model.train(was_training)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)

    saved: list[torch.Tensor] = []
    frozen_sums: list[float] = []
    events: list[tuple[str, bool | None]] = []
    kept = dict(batch)  # the batch's own tensors ...
    kept_values = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _changed(now: dict, before: dict) -> bool:
        """Whether a step changed the batch it was handed: its keys, its tensors, or their values."""
        return (now.keys() != before.keys() or any(now[k] is not before[k] for k in before)
                or any(isinstance(v, torch.Tensor) and not torch.equal(now[k], v) for k, v in kept_values.items()))

    return _run(NUMBER["one_train_step"], fn, reference_train_step, test)


def _no_change_hint(events: list[tuple[str, bool | None]]) -> str:
    """Why a step left every trainable parameter as it was, read from the order of its
    ``backward()`` and ``optimizer.step()`` calls (and whether the step found gradients)."""
    first_step = next((i for i, (kind, _) in enumerate(events) if kind == "step"), None)
    if first_step is None:
        return ("no trainable parameter changed: optimizer.step() was never called. After loss.backward() "
                "and the clip, call optimizer.step().")
    found_gradients = events[first_step][1]
    backward_before = any(kind == "backward" for kind, _ in events[:first_step])
    if not found_gradients and backward_before:
        return ("no trainable parameter changed: optimizer.step() ran, but the gradients were cleared between "
                "loss.backward() and step(), so the step had nothing to apply. Call optimizer.zero_grad() "
                "before backward() or after step(), never between them.")
    if not found_gradients:
        return ("no trainable parameter changed: optimizer.step() ran before loss.backward(), when there were "
                "no gradients yet. The order is forward, loss, backward, clip, step.")
    return ("no trainable parameter changed although optimizer.step() ran with gradients: step the optimizer "
            "you are given (it holds the model's trainable parameters), not a new one.")


def _unclipped_step(model: nn.Module, batch: dict, optimizer: torch.optim.Optimizer,
                    weights: torch.Tensor | None) -> float:
    """The reference step without clipping: tells a missing clip apart from other mistakes."""
    from reclor_lab.train import optimizer_step, train_step

    loss = train_step(model, dict(batch), weights, dtype=torch.float32)  # a copy: train_step pops labels
    optimizer_step(model, optimizer, lr=optimizer.param_groups[0]["lr"], max_grad_norm=0)
    return loss.item()


def _plain_loss(model: nn.Module, batch: dict) -> float:
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return weighted_cross_entropy(model(**inputs).logits, batch["labels"]).item()


# --- 16. one epoch ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LRSchedule:
    """``lr_at(step)``: the kit's schedule (:func:`reclor_lab.train.get_lr`, linear warm-up, then
    constant or cosine) as a function of the optimizer step alone, the way exercise 16 takes it."""

    learning_rate: float
    warmup_steps: int
    total_steps: int
    lr_schedule: str = "constant"

    def __call__(self, step: int) -> float:
        from reclor_lab.train import get_lr

        return get_lr(step, self, self.total_steps, self.warmup_steps)  # reads learning_rate, lr_schedule


def reference_train_epoch(model: nn.Module, batches: list[dict], optimizer: torch.optim.Optimizer,
                          weights: torch.Tensor | None, lr_at: Callable[[int], float], step: int = 0,
                          max_grad_norm: float = MAX_GRAD_NORM) -> tuple[list[float], int]:
    """The inner loop of :func:`reclor_lab.train.fit` on one epoch, one process, one micro-batch per
    optimizer step (the tiny preset's ``grad_accum_steps`` 1), fp32: the same operations in the
    same order, so the losses and the trained parameters are fit's bit for bit on a CPU
    (``tests/test_checks.py`` holds it to that). Returns each batch's loss and the step count."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    losses = []
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        loss = weighted_cross_entropy(model(**inputs).logits, batch["labels"], weights)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss.item())
    return losses, step


#: The check's AdamW: the tiny preset's peak learning rate and weight decay (fit's optimizer).
_EPOCH_LR = 2e-3
_EPOCH_WEIGHT_DECAY = 1e-3
#: How far the check's epoch may be from fit's and still be right (see :func:`_epoch_close`).
EPOCH_LOSS_RTOL = 1e-5
EPOCH_UPDATE_RTOL = 1e-3


def _update_norm(params: list[torch.Tensor], start: list[torch.Tensor]) -> float:
    """The norm of ``params - start`` over every tensor: how far an epoch moved the parameters."""
    return float(sum(((a - b).double() ** 2).sum() for a, b in zip(params, start)) ** 0.5)


def _epoch_close(got_losses: list[float], got_params: list[torch.Tensor], want_losses: list[float],
                 want_params: list[torch.Tensor], scale: float) -> bool:
    """Whether an epoch equals fit's up to the fp32 rounding of a loss written another way.

    With the kit's loss (what the grader hands a student's epoch) a right epoch is fit's bit for
    bit. A student's own ``weighted_ce`` (exercise 9) sums in another order than
    ``F.cross_entropy``: each loss then differs by a few units in the last place (2**-24 relative
    each; ``EPOCH_LOSS_RTOL`` 1e-5 leaves room for about 150), and so do the gradients. AdamW
    divides each gradient by its own running size, so a gradient element near zero whose sign the
    rounding flips still moves by about ``lr``: single parameters may differ by a good share of
    the step, so the parameters are compared as a whole: they may differ by ``EPOCH_UPDATE_RTOL``
    (1e-3) of ``scale``, the norm of fit's update in the epoch (:func:`_update_norm`).
    Measured on the tiny model: exercise 9's loss 2e-5 of it on notebook 04's batches of 8 (0 on
    the grader's smaller ones); every mistake the check names 1e-2 or more, the losses alone 35
    times ``EPOCH_LOSS_RTOL`` or more (``tests/test_checks.py`` holds a factor of 10 both ways)."""
    if len(got_losses) != len(want_losses):
        return False
    if any(abs(a - b) > EPOCH_LOSS_RTOL * abs(b) for a, b in zip(got_losses, want_losses)):
        return False
    return _update_norm(got_params, want_params) <= EPOCH_UPDATE_RTOL * scale


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Sets every param group's learning rate to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def _epoch_mistakes() -> dict[str, Callable]:
    """Epochs with one typical mistake each, and the hint that names it (first match wins)."""

    def epoch(weighted=True, zero="after", clip=True, lr="before_step", step0=True, train=True):
        def run(model, batches, optimizer, weights, lr_at, step=0, max_grad_norm=MAX_GRAD_NORM):
            trainable = [p for p in model.parameters() if p.requires_grad]
            if train:
                model.train()
            losses, k = [], step if step0 else 0
            for batch in batches:
                inputs = {key: v for key, v in batch.items() if key != "labels"}
                logits = model(**inputs).logits
                loss = weighted_cross_entropy(logits, batch["labels"], weights if weighted else None)
                loss.backward()
                if lr == "before_step":
                    _set_lr(optimizer, lr_at(k))
                if zero == "between":
                    optimizer.zero_grad(set_to_none=True)
                if clip:
                    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
                optimizer.step()
                if lr == "after_step":
                    _set_lr(optimizer, lr_at(k))
                if zero == "after":
                    optimizer.zero_grad(set_to_none=True)
                k += 1
                losses.append(loss.item())
            return losses, step + len(batches)
        return run

    return {
        "the gradients were cleared between loss.backward() and optimizer.step(), so no step had anything "
        "to apply (or step() never ran): call optimizer.zero_grad() before backward() or after step(), "
        "never between them.": epoch(zero="between"),
        "the gradients are never cleared: each backward() adds to the previous batches' gradients, so "
        "every step after the first is wrong. Call optimizer.zero_grad() once per batch, before backward() "
        "or after step().": epoch(zero="never"),
        "the steps were not clipped: call torch.nn.utils.clip_grad_norm_(trainable parameters, "
        "max_grad_norm) after loss.backward() (before it there are no gradients to clip) and before "
        "optimizer.step().": epoch(clip=False),
        "the learning rate was never set from the schedule, so every step ran at the optimizer's "
        "initial rate: set each param group's 'lr' to lr_at(step) before optimizer.step(), every "
        "batch.": epoch(lr="never"),
        "each step ran at the previous step's learning rate: the 'lr' was set after optimizer.step(). "
        "Set it to lr_at(step) before the step.": epoch(lr="after_step"),
        "the schedule was read from step 0, but this epoch starts at optimizer step `step` (the steps "
        "of the epochs before): the k-th batch's step is lr_at(step + k).": epoch(step0=False),
        "the loss is the plain cross-entropy: the class weights were not used (call your weighted_ce "
        "with the weights).": epoch(weighted=False),
    }


def _epoch_returned(got: Any, n_batches: int, want_step: int, step0: int) -> list | tuple:
    """The losses of what a student's epoch returned, once it has the shape ``(losses, step)``
    asks: a list of one Python float per batch, and the right step count."""
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        raise _Fail(f"it returned {type(got).__name__}; return two things: (losses, step), the list of "
                    "the batches' losses and the optimizer step count after the epoch.")
    losses, got_step = got
    if not isinstance(losses, (list, tuple)) or len(losses) != n_batches:
        raise _Fail(f"the losses are {type(losses).__name__}"
                    + (f" of length {len(losses)}" if hasattr(losses, "__len__") else "")
                    + f"; return a list of {n_batches} floats, one loss per batch, in order.")
    if any(isinstance(x, torch.Tensor) for x in losses):
        raise _Fail("the losses are tensors; append loss.item(), a Python float (a kept loss tensor "
                    "keeps its batch's whole graph in memory, every batch of the epoch).")
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in losses):
        raise _Fail("return each batch's loss as a Python float (loss.item()).")
    if isinstance(got_step, bool) or not isinstance(got_step, int) or got_step != want_step:
        raise _Fail(f"it returned the step count {got_step!r} after an epoch of {n_batches} batches "
                    f"that started at step {step0}; return the optimizer steps done so far, "
                    f"{step0} + one per batch.")
    return losses


def _epoch_kept_its_bounds(frozen: list[torch.Tensor], frozen_sums: list[float],
                           seen: list[tuple[bool, bool]]) -> None:
    """Fails if an epoch moved a frozen parameter, or ran a forward pass in eval mode or without
    gradients (``seen``: grad enabled and training, per forward pass)."""
    if any(_checksum(p) != s for p, s in zip(frozen, frozen_sums)):
        raise _Fail("a frozen parameter changed; only the trainable (LoRA and head) parameters may "
                    "move: step the optimizer you are given.")
    if any(not training for _, training in seen):
        raise _Fail("the forward passes ran in eval mode (no dropout): the model came in eval mode, as an "
                    "evaluation leaves it. Call model.train() at the start of the epoch.")
    if any(not grad for grad, _ in seen):
        raise _Fail("a forward pass ran without gradients (torch.no_grad or inference_mode); the "
                    "training forward needs them for backward().")


def _epoch_first_difference(losses: list | tuple, want_losses: list[float]) -> None:
    """Fails naming the first batch whose loss differs from fit's, or, the losses all right, the
    last step (a wrong epoch that matched none of :func:`_epoch_mistakes`)."""
    first = next((k for k, (a, b) in enumerate(zip(losses, want_losses))
                  if abs(float(a) - b) > EPOCH_LOSS_RTOL * abs(b)), None)
    if first is not None:
        raise _Fail(f"the loss of batch {first} is {float(losses[first]):.6f}, expected {want_losses[first]:.6f} "
                    "(the batches before it agree): the steps before it differ from fit's. Per batch: "
                    "forward, weighted loss, backward, lr_at(step), clip, step, zero_grad."
                    if first else
                    f"the first batch's loss is {float(losses[0]):.6f}, expected {want_losses[0]:.6f}: "
                    "compute it with weighted_ce from model(...).logits and the batch's labels.")
    raise _Fail("the losses are right but the parameters after the last step differ from fit's: the last "
                "step is wrong (per batch: backward, lr_at(step), clip, step, zero_grad).")


def check_train_epoch(fn: Callable, model: nn.Module, batches: list[dict], weights: torch.Tensor | None,
                      step: int = 2) -> Callable:
    """Exercise 16: ``fn(model, batches, optimizer, weights, lr_at, step) -> (losses, step)`` trains
    one epoch (its ``max_grad_norm`` left at the default, 0.3).

    Runs :func:`reference_train_epoch` (fit's inner loop) and the student's epoch from the same
    parameters, the same AdamW and the same dropout seed, the model handed over in eval mode (as
    an evaluation leaves it), the epoch starting at optimizer step ``step`` of a warm-up schedule
    (each batch a different learning rate). Compares the returned losses and step count, the
    trainable parameters after the epoch (:func:`_epoch_close`), untouched frozen parameters, and
    the mode of every forward pass; a wrong epoch is compared with epochs that make one typical
    mistake each, to name it. The model is left exactly as it was: parameters, gradients,
    train/eval mode and torch's RNG.
    """
    named = list(model.named_parameters())
    trainable = [p for _, p in named if p.requires_grad]
    if not trainable:
        raise ValueError("check_train_epoch needs a model with trainable parameters (call inject_lora first)")
    frozen = [p for _, p in named if not p.requires_grad]
    step0 = step
    schedule = LRSchedule(_EPOCH_LR, warmup_steps=step0 + len(batches) + 1, total_steps=step0 + len(batches) + 1)
    saved: list[torch.Tensor] = []
    modes: list[tuple[bool, bool]] = []

    def epoch(epoch_fn: Callable) -> tuple[Any, list[torch.Tensor]]:
        """One epoch from the saved parameters: a fresh AdamW, seeded dropout, the model in eval
        mode; what ``epoch_fn`` returned and the trainable parameters after it."""
        with torch.no_grad():
            for p, s in zip(trainable, saved):
                p.copy_(s)
                p.grad = None
        model.eval()
        torch.manual_seed(_CHECK_SEED)
        modes.clear()
        optimizer = torch.optim.AdamW(trainable, lr=_EPOCH_LR, weight_decay=_EPOCH_WEIGHT_DECAY)
        hook = model.register_forward_pre_hook(lambda m, _: modes.append((torch.is_grad_enabled(), m.training)))
        try:
            value = epoch_fn(model, [dict(b) for b in batches], optimizer, weights, schedule, step0)
        finally:
            hook.remove()
        return value, [p.detach().clone() for p in trainable]

    def judge(fn: Callable) -> None:
        (want_losses, want_step), want_params = epoch(reference_train_epoch)
        try:
            got, got_params = epoch(fn)
        except AttributeError as e:
            if "backward" in str(e) and "float" in str(e):
                raise _Fail("it called .backward() on a Python float: loss.item() is a number, cut from the "
                            "graph. Call loss.backward() on the tensor, and keep loss.item() for the list.") from e
            raise
        seen = list(modes)
        losses = _epoch_returned(got, len(batches), want_step, step0)
        _epoch_kept_its_bounds(frozen, frozen_sums, seen)
        scale = _update_norm(want_params, saved)
        if _epoch_close([float(x) for x in losses], got_params, want_losses, want_params, scale):
            return
        for hint, wrong in _epoch_mistakes().items():
            (w_losses, _), w_params = epoch(wrong)
            if _epoch_close([float(x) for x in losses], got_params, w_losses, w_params, scale):
                raise _Fail(hint)
        _epoch_first_difference(losses, want_losses)

    def test(fn: Callable) -> None:
        nonlocal saved, frozen_sums
        saved = [p.detach().clone() for p in trainable]
        saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in trainable]
        frozen_sums = [_checksum(p) for p in frozen]
        was_training = model.training
        rng = torch.get_rng_state()
        try:
            judge(fn)
        finally:
            with torch.no_grad():
                for p, s, g in zip(trainable, saved, saved_grads):
                    p.copy_(s)
                    p.grad = g
            model.train(was_training)
            torch.set_rng_state(rng)

    frozen_sums: list[float] = []
    return _run(NUMBER["train_epoch"], fn, reference_train_epoch, test)
