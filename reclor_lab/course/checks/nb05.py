"""The checks of notebook 05 (results)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from reclor_lab.config import NUM_LABELS
from reclor_lab.loss import weighted_cross_entropy
from reclor_lab.metrics import accuracy_over_examples
from reclor_lab.course.checks.common import CHECK_RECORDS, NUMBER, _Fail, _close, _run
from reclor_lab.course.checks.nb01 import reference_format_record

# --- 11. accuracy over batches --------------------------------------------------------------------------

def reference_accuracy(batches: Sequence[tuple[Sequence[int], Sequence[int]]]) -> float:
    """:func:`reclor_lab.metrics.accuracy_over_examples`: correct / number of examples."""
    return accuracy_over_examples(batches)


_ACCURACY_CASES: tuple[tuple[str, list[tuple[list[int], list[int]]]], ...] = (
    ("one batch of 4", [([0, 1, 2, 3], [0, 1, 2, 0])]),
    ("two batches of 4", [([0, 1, 2, 3], [0, 1, 2, 0]), ([1, 1, 1, 1], [1, 1, 0, 0])]),
    ("a batch of 3 and a short last batch of 1", [([0, 1, 2], [0, 1, 2]), ([3], [0])]),
)


def _accuracy_hint(got: float, batches: list[tuple[list[int], list[int]]]) -> str:
    correct = [sum(p == y for p, y in zip(ps, ys)) for ps, ys in batches]
    if _close(got, 100 * reference_accuracy(batches)):
        return "that is a percentage; return the fraction between 0 and 1 (the notebooks format it as %)."
    if _close(got, sum(correct) / len(batches)):
        return ("it divides the correct count by the number of BATCHES (the reference notebook's bug); "
                "divide by the number of examples.")
    if _close(got, sum(c / len(ys) for c, (_, ys) in zip(correct, batches)) / len(batches)):
        return ("it averages the per-batch accuracies, which weighs a short last batch as much as a full "
                "one; count correct answers and examples over all batches, then divide once.")
    return "accuracy is (correct predictions over all batches) / (examples over all batches)."


def check_accuracy(fn: Callable[[list[tuple[list[int], list[int]]]], float]) -> Callable:
    """Exercise 11: ``fn(batches) -> float`` = correct over EXAMPLES, with unequal batch sizes."""

    def test(fn: Callable) -> None:
        for what, batches in _ACCURACY_CASES:
            got = fn([(list(p), list(y)) for p, y in batches])
            if isinstance(got, torch.Tensor) and got.dim() == 0:
                got = got.item()
            if isinstance(got, bool) or not isinstance(got, (int, float)):
                raise _Fail(f"for {what} it returned {type(got).__name__}; return a float between 0 and 1.")
            want = reference_accuracy(batches)
            if not _close(float(got), want):
                raise _Fail(f"for {what} it returned {float(got):.3f}: {_accuracy_hint(float(got), batches)}")

    return _run(NUMBER["accuracy_over_examples"], fn, reference_accuracy, test)


# --- 12. the evaluation pass ------------------------------------------------------------------------

def reference_evaluation_pass(model: nn.Module, batches: Sequence[dict],
                              weights: torch.Tensor | None) -> tuple[float, float]:
    """(eval loss, accuracy) of ``model`` over every example of ``batches``, as
    :func:`reclor_lab.train.evaluate` computes them (a test pins the two together): eval mode and
    back, no gradients, the logits of all batches first, then the weighted loss
    ``Σ w[y_i]·CE_i / Σ w[y_i]`` and correct / examples over the whole set at once."""
    return _eval_result(*_eval_logits(model, batches), weights)


def _eval_result(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> tuple[float, float]:
    loss = weighted_cross_entropy(logits, labels, weights).item()
    return loss, int((logits.argmax(-1) == labels).sum()) / len(labels)


def _eval_logits(model: nn.Module, batches: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = [model(**{k: v for k, v in b.items() if k != "labels"}).logits.float().cpu() for b in batches]
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat([b["labels"].cpu() for b in batches])


#: The skewed class weights of the evaluation cases: a loss averaged per batch is visibly off.
_EVAL_WEIGHTS = (1.0, 2.0, 2.0, 0.5)


def _eval_cases(model: nn.Module, tokenizer) -> list[tuple[str, list[dict], torch.Tensor]]:
    """Uneven batches of the check records and their options rotated (six records), each batch
    padded to its own longest, on the model's device. The labels are set from the model's own
    predictions so that the first batch is all right and the last all wrong: a mean of per-batch
    accuracies or losses cannot agree with the value over examples by accident."""
    records = [dict(r, answers=r["answers"][k:] + r["answers"][:k]) for k in (0, 1) for r in CHECK_RECORDS]
    texts = [reference_format_record(r) for r in records]
    device = next(model.parameters()).device

    def batch_of(idx: list[int]) -> dict:
        enc = tokenizer([texts[i] for i in idx], padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device),
                "labels": torch.zeros(len(idx), dtype=torch.long, device=device)}

    cases = []
    for what, sizes, weights in (("batches of 4 and 2, class weights [1, 2, 2, 0.5]", (4, 2), _EVAL_WEIGHTS),
                                 ("batches of 3, 2 and 1, no class weights (all 1)", (3, 2, 1), (1.0,) * 4)):
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        batches = [batch_of(list(range(a, a + n))) for a, n in zip(starts, sizes)]
        preds = _eval_logits(model, batches)[0].argmax(-1)
        for k, b in enumerate(batches):
            own = preds[starts[k]:starts[k] + sizes[k]]
            b["labels"] = (own if k == 0 else (own + 1) % NUM_LABELS).to(device)
        cases.append((what, batches, torch.tensor(weights)))
    return cases


def _eval_hint(got_loss: float, got_acc: float, batches: list[dict], weights: torch.Tensor,
               want: tuple[float, float], logits: torch.Tensor) -> str:
    sizes = [len(b["labels"]) for b in batches]
    labels = torch.cat([b["labels"].cpu() for b in batches])
    parts = list(zip(logits.split(sizes), labels.split(sizes)))
    if not _close(got_acc, want[1]):
        right = [int((lg.argmax(-1) == y).sum()) for lg, y in parts]
        if _close(got_acc, sum(right) / len(batches)):
            return ("its accuracy divides the correct count by the number of BATCHES; divide by the number "
                    "of examples (exercise 11).")
        if _close(got_acc, sum(r / n for r, n in zip(right, sizes)) / len(batches)):
            return ("its accuracy averages the per-batch accuracies, which weighs the short last batch as much "
                    "as a full one; count correct answers and examples over all batches, divide once.")
        return f"its accuracy {got_acc:.3f} is not correct answers / examples over all the batches ({want[1]:.3f})."
    if _close(got_loss, sum(weighted_cross_entropy(lg, y, weights).item() for lg, y in parts) / len(batches)):
        return ("its loss is the mean of the per-batch losses: batches of different sizes (and weights) then "
                "count alike. Keep every batch's logits and labels, and compute the loss once over all of them.")
    if _close(got_loss, weighted_cross_entropy(logits, labels).item()):
        return "its loss is the plain cross-entropy: use the class weights it is given, as in training."
    return (f"its loss {got_loss:.4f} is not the weighted cross-entropy over all examples at once "
            f"({want[0]:.4f}): Σ w[y_i]·CE_i / Σ w[y_i].")


def _eval_ran_right(what: str, seen: list[tuple[bool, bool]], model: nn.Module) -> None:
    """Fails unless the evaluation called the model, every forward pass without gradients and in
    eval mode (``seen``: grad enabled and training, per forward pass), and left it in training mode."""
    if not seen:
        raise _Fail(f"for {what} the model was never called; run model(input_ids=…, "
                    "attention_mask=…) on each batch.")
    if any(grad for grad, _ in seen):
        raise _Fail(f"for {what} the forward passes ran with gradients on: autograd kept every "
                    "activation for a backward that never comes. Wrap the loop in torch.no_grad().")
    if any(training for _, training in seen):
        raise _Fail(f"for {what} the model ran in training mode (LoRA's dropout on): call "
                    "model.eval() before the loop.")
    if not model.training:
        raise _Fail(f"for {what} the model was left in eval mode: the next training epoch would "
                    "run without dropout. Put it back with model.train() at the end.")


def _eval_floats(what: str, out: Any) -> list[float]:
    """The two numbers an evaluation returned, as floats: fails unless it returned two Python
    numbers (a one-element tensor is taken as its number)."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise _Fail(f"for {what} it returned {type(out).__name__}; return two floats: "
                    "(eval_loss, accuracy).")
    got = []
    for x in out:
        if isinstance(x, torch.Tensor) and x.numel() == 1:
            x = x.item()
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise _Fail(f"for {what} it returned a {type(x).__name__}; return Python floats "
                        "(loss.item()).")
        got.append(float(x))
    return got


def check_evaluation_pass(fn: Callable, model: nn.Module, tokenizer) -> Callable:
    """Exercise 12: ``fn(model, batches, weights) -> (eval_loss, accuracy)``, two Python floats over
    every example of ``batches`` (a list of dicts with ``input_ids``, ``attention_mask``,
    ``labels``), on uneven batches.

    Judged on the model itself: every forward pass must run in eval mode (no dropout) and without
    gradients (a hook records both), the model must be back in training mode afterwards, and the
    two numbers must equal the reference's (:func:`reclor_lab.train.evaluate`'s definitions).
    """
    cases = _eval_cases(model, tokenizer)

    def test(fn: Callable) -> None:
        seen: list[tuple[bool, bool]] = []
        hook = model.register_forward_pre_hook(lambda m, args: seen.append((torch.is_grad_enabled(), m.training)))
        was_training = model.training
        try:
            for what, batches, weights in cases:
                logits, labels = _eval_logits(model, batches)  # the model as it is now
                want = _eval_result(logits, labels, weights)
                model.train()  # as a training epoch leaves it
                seen.clear()
                out = fn(model, [dict(b) for b in batches], weights.clone())
                _eval_ran_right(what, seen, model)
                got = _eval_floats(what, out)
                if not (_close(got[0], want[0]) and _close(got[1], want[1])):
                    raise _Fail(f"for {what}: {_eval_hint(got[0], got[1], batches, weights, want, logits)}")
        finally:
            hook.remove()
            model.train(was_training)

    return _run(NUMBER["evaluation_pass"], fn, reference_evaluation_pass, test)
