"""The checks of notebook 01 (data and tokenization)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from reclor_lab.config import NUM_LABELS, OPTION_LETTERS, REFERENCE_TEMPLATE
from reclor_lab.data import class_weights, format_example
from reclor_lab.course.checks.common import CHECK_RECORDS, NUMBER, _Fail, _close, _kind_problem, _run

# --- 1. format a record --------------------------------------------------------------------------

def reference_format_record(record: dict) -> str:
    """The reference layout (:data:`REFERENCE_TEMPLATE`) of one record."""
    return format_example(record, REFERENCE_TEMPLATE)


def _first_difference(got: str, want: str) -> int:
    for i, (x, y) in enumerate(zip(got, want)):
        if x != y:
            return i
    return min(len(got), len(want))


def _format_hint(got: str, record: dict) -> str:
    want = reference_format_record(record)
    labels = ["Context:", "Question:"] + [f"Option {c}:" for c in OPTION_LETTERS]
    missing = [lab for lab in labels if lab not in got]
    if missing:
        return (f"the text has no {', '.join(repr(m) for m in missing)}; every part is introduced by "
                "its label: 'Context:', 'Question:', 'Option A:' … 'Option D:'.")
    positions = [got.index(lab) for lab in labels]
    if positions != sorted(positions):
        return ("the parts are out of order; the layout is context, question, then options A, B, C, D "
                "(answers[0] is option A).")
    if got.replace(" ", "") == want.replace(" ", ""):
        return ("right parts, wrong spacing: exactly one space between a label and its text and "
                "between one part and the next, none at the start or end.")
    i = _first_difference(got, want)
    return (f"the text first differs from the reference layout at character {i}: yours has "
            f"{got[max(0, i - 15):i + 15]!r}. Compare your f-string with the layout above, "
            "character by character.")


def check_format_record(fn: Callable[[dict], str]) -> Callable[[dict], str]:
    """Exercise 1: ``fn(record) -> str`` in the reference layout, on several hand-written records."""

    def test(fn: Callable) -> None:
        for k, record in enumerate(CHECK_RECORDS):
            got = fn(dict(record, answers=list(record["answers"])))
            if not isinstance(got, str):
                raise _Fail(f"on test record {k} it returned a {type(got).__name__}; return one str.")
            if got != reference_format_record(record):
                raise _Fail(f"on test record {k}: {_format_hint(got, record)}")

    return _run(NUMBER["format_record"], fn, reference_format_record, test)


# --- 2. class weights ------------------------------------------------------------------------------

def reference_class_weights(labels: Sequence[int]) -> list[float]:
    """``w_c = N / (4 · n_c)`` as a list of floats (:func:`reclor_lab.data.class_weights`)."""
    return class_weights(labels).tolist()


_WEIGHT_CASES: tuple[tuple[str, list[int]], ...] = (
    ("balanced labels [0, 1, 2, 3, 0, 1, 2, 3]", [0, 1, 2, 3] * 2),
    ("skewed labels [0, 0, 1, 2, 3, 3, 3, 3]", [0, 0, 1, 2, 3, 3, 3, 3]),
    ("skewed labels [1, 1, 1, 1, 1, 0, 2, 3, 3, 1] (mostly 1s)", [1, 1, 1, 1, 1, 0, 2, 3, 3, 1]),
    # last: an absent option is an edge case; the formula above is the lesson
    ("labels [0, 1, 1, 3] (no option C)", [0, 1, 1, 3]),
)


def _weights_hint(got: list[float], labels: list[int]) -> str:
    counts = [labels.count(c) for c in range(NUM_LABELS)]
    if 0 in counts:
        return "an option that never occurs (n_c = 0) gets weight 1.0: it adds no loss either way."
    return (_weights_formula_hint(got, counts, len(labels)) or _weights_order_hint(got, labels, counts)
            or "the weight of class c is N / (4 · n_c), with N the number of labels and n_c the count of c.")


def _same_weights(got: list[float], xs: list[float]) -> bool:
    return all(_close(a, b) for a, b in zip(got, xs))


def _weights_formula_hint(got: list[float], counts: list[int], n: int) -> str | None:
    """A known wrong formula (frequencies, a missing factor), or None."""
    if len(set(counts)) == 1 and _same_weights(got, [1 / NUM_LABELS] * NUM_LABELS):
        return ("four 0.25s are the label frequencies n_c / N, or weights normalised to sum to 1; the weight "
                "is N / (4 · n_c), not normalised, so balanced labels give four weights of 1.")
    if _same_weights(got, [c / n for c in counts]):
        return "those are the label frequencies n_c / N; the weight is the inverse, scaled: N / (4 · n_c)."
    if _same_weights(got, [n / c for c in counts]):
        return "almost: divide by the number of classes (4) as well, so balanced labels give weights of 1."
    if _same_weights(got, [1 / c for c in counts]):
        return "almost: multiply by N / 4 (N = number of labels), so balanced labels give weights of 1."
    return None


def _weights_order_hint(got: list[float], labels: list[int], counts: list[int]) -> str | None:
    """The right weights in Counter order, or in the right proportions at another scale; or None."""
    want = [len(labels) / (NUM_LABELS * c) for c in counts]
    first_seen = list(dict.fromkeys(labels))  # the order a Counter (or a dict) keeps its keys in
    if first_seen != sorted(first_seen) and _same_weights(got, [want[c] for c in first_seen]):
        order = ", ".join(str(c) for c in first_seen)
        return (f"the right weights in the wrong order: class {order}, the order in which the classes first "
                f"appear in these labels, which is the order of Counter.values(). Return them for class 0, 1, "
                "2, 3: look each class up, counts[c], instead of iterating over the values.")
    if _close(sum(got), 1.0) or (got[0] and all(_close(g / got[0], w / want[0]) for g, w in zip(got, want))):
        return ("right proportions, wrong scale: the weights are not normalised (to sum to 1 or any other "
                "total); N / (4 · n_c) as it is, so balanced labels give four weights of 1.")
    return None


def check_class_weights(fn: Callable[[list[int]], list[float]]) -> Callable[[list[int]], list[float]]:
    """Exercise 2: ``fn(labels) -> list[float]`` equal to ``N / (4 · n_c)``, balanced and skewed."""

    def test(fn: Callable) -> None:
        for what, labels in _WEIGHT_CASES:
            try:
                got = fn(list(labels))
            except ZeroDivisionError:
                if 0 in [labels.count(c) for c in range(NUM_LABELS)]:
                    raise _Fail(f"for {what} it divided by zero: an option that never occurs gets "
                                "weight 1.0.") from None
                raise
            problem = _kind_problem(got, "list")
            if problem:
                raise _Fail(f"for {what} it returned {problem}.")
            try:
                got = [float(x) for x in got]
            except (TypeError, ValueError):
                raise _Fail(f"for {what} it returned {type(got).__name__}; return a list of 4 floats.") from None
            if len(got) != NUM_LABELS:
                raise _Fail(f"for {what} it returned {len(got)} weights; return one per answer position (4).")
            want = reference_class_weights(labels)
            if not all(_close(a, b) for a, b in zip(got, want)):
                shown = "[" + ", ".join(f"{x:.3g}" for x in got) + "]"
                raise _Fail(f"for {what} it returned {shown}: {_weights_hint(got, labels)}")

    return _run(NUMBER["class_weights_by_hand"], fn, reference_class_weights, test)


# --- 3. the position the head reads ------------------------------------------------------------------

def reference_last_token_index(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """:func:`reclor_lab.model.last_token_index`: per row, the rightmost non-pad position."""
    from reclor_lab.model import last_token_index

    return last_token_index(input_ids, pad_token_id)


def _pooling_cases(tokenizer) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Right-padded batches of the check records' questions (pad = eos): plain, and one whose
    first row holds an eos id inside its text (the head still reads that row's last token)."""
    texts = [r["question"] for r in CHECK_RECORDS] + [CHECK_RECORDS[0]["answers"][0]]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    inner = ids.clone()
    row = int(mask.sum(1).argmax())  # the longest row: no padding
    inner[row, int(mask[row].sum()) // 2] = tokenizer.pad_token_id
    short = int(mask.sum(1).argmin())
    inner[short, 1] = tokenizer.pad_token_id
    return [
        ("a right-padded batch of 4 (one row without padding)", ids, mask),
        ("the same batch with an eos (= pad) id inside the text of two rows", inner, mask),
    ]


def _pooling_hint(got: torch.Tensor, want: torch.Tensor, ids: torch.Tensor, pad: int) -> str:
    lengths = (ids != pad).sum(1)
    width = ids.shape[1]
    if torch.equal(got, want + 1) or torch.equal(got, lengths):
        return ("one past the last real token: that is where the padding starts; the head reads the "
                "last token that is not padding.")
    if bool((got == width - 1).all()):
        return ("the last column of every row: on a padded row that position holds padding, whose "
                "hidden state has not seen the text the way the last real token has.")
    if bool((got < 0).any()):
        return ("a negative position: a row without padding has no pad token to find; return "
                "positions 0 … length−1.")
    if torch.equal(got, lengths - 1):
        return ("counting the non-pad tokens goes wrong when the pad id (= eos) also occurs inside "
                "the text: such a token is not padding. The model takes the rightmost position "
                "whose id is not the pad id.")
    first_pad = torch.where((ids == pad).any(1), (ids == pad).int().argmax(1), torch.full_like(lengths, width))
    if torch.equal(got, first_pad - 1):
        return ("the position before the FIRST pad id is right only when the pad id never occurs "
                "inside the text; the model takes the rightmost position whose id is not the pad id.")
    return "for each row, the position of the last token that is not padding (its id is not the pad id)."


def _wrong_row(ids: torch.Tensor, pad: int, got: torch.Tensor, want: torch.Tensor) -> str:
    """The first row the answer gets wrong, as a student can read it (the pad id shown as `pad`)."""
    row = int((got != want).nonzero()[0, 0]) if bool((got != want).any()) else 0
    shown = " ".join("pad" if i == pad else str(i) for i in ids[row].tolist())
    return (f"Row {row} of the input ids (pad id {pad}): [{shown}]: it returned {int(got[row])}, the head reads "
            f"position {int(want[row])}.")


def check_last_token_index(fn: Callable[[torch.Tensor, int], torch.Tensor], model: nn.Module,
                           tokenizer) -> Callable:
    """Exercise 3: ``fn(input_ids, pad_token_id)`` → per row, the position the classification head
    reads. Judged against the model itself: the head applied to the hidden states at the
    student's positions must give the model's own logits."""
    pad = tokenizer.pad_token_id
    cases = _pooling_cases(tokenizer)
    body = getattr(model, model.base_model_prefix)

    def model_logits(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the model's own logits, the head's logits at every position)."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ids, mask = ids.to(device), mask.to(device)
                own = model(input_ids=ids, attention_mask=mask).logits.float().cpu()
                hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
                every = model.score(hidden.to(model.score.weight.dtype)).float().cpu()
        finally:
            model.train(was_training)
        return own, every

    def test(fn: Callable) -> None:
        for what, ids, mask in cases:
            got = fn(ids.clone(), pad)
            problem = _kind_problem(got, "tensor")
            if problem:
                raise _Fail(f"for {what} (input ids of shape {tuple(ids.shape)}) it returned {problem}.")
            if not isinstance(got, torch.Tensor) or got.is_floating_point() or got.dtype == torch.bool:
                raise _Fail(f"for {what} it returned {type(got).__name__}"
                            f"{'' if not isinstance(got, torch.Tensor) else ' of ' + str(got.dtype)}; "
                            "return one integer position per row (a LongTensor of shape (batch,)).")
            got = got.cpu().long()
            if got.shape != (ids.shape[0],):
                raise _Fail(f"for {what} it returned shape {tuple(got.shape)}; return one position per row, "
                            f"shape ({ids.shape[0]},).")
            want = reference_last_token_index(ids, pad)
            if bool((got < 0).any()) or bool((got >= ids.shape[1]).any()):
                raise _Fail(f"for {what} it returned {got.tolist()}: {_pooling_hint(got, want, ids, pad)} "
                            f"{_wrong_row(ids, pad, got, want)}")
            own, every = model_logits(ids, mask)
            picked = every[torch.arange(ids.shape[0]), got]
            if not torch.allclose(picked, own, rtol=1e-4, atol=1e-5):
                raise _Fail(f"for {what} it returned {got.tolist()}, where the head does not give the model's "
                            f"logits: {_pooling_hint(got, want, ids, pad)} {_wrong_row(ids, pad, got, want)}")

    return _run(NUMBER["last_token_index"], fn, reference_last_token_index, test)
