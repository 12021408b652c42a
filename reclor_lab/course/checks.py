"""Self-checks for the notebooks' exercises.

Each ``check_X(fn, ...)`` runs a student's function on small test cases and prints ONE line:

* ``✅ Exercise N (title): correct.``: the student's function is returned;
* ``⏳ Exercise N (title): not done yet …``: the function still raises ``NotImplementedError``;
* ``❌ Exercise N (title): <which case failed, what was expected in kind, a hint> …``.

On anything but a pass the check returns a :class:`Fallback`: it runs the package's reference
implementation, so the cells after an unsolved exercise still run, but it remembers the student's
own function. Checking the name again therefore judges the student's code (still ⏳ or ❌), never
the reference: a ✅ always means the student's own function passed. :func:`summary` (the last cell
of each student notebook) re-judges every exercise of the notebook as the functions stand. A check
never prints the solution itself.

>>> format_record = check_format_record(format_record)       # doctest: +SKIP
✅ Exercise 1 (format a record): correct.

``reclor-lab course grade`` does not rely on any of this running in the student's kernel: it
runs the notebook's final ``def`` of each exercise in an OS sandbox on the inputs of the test a
check builds (:func:`build_test`) and on hidden cases, and replays that test outside the sandbox
on the answers that came back (:mod:`reclor_lab.course.grade`). A new exercise adds its entry
to :data:`EXERCISES` and to ``reclor_lab.course.grading.exercises.SPECS``.

**Return types, the same rule in every check.** A number may come back as a Python number or as a
one-element tensor (exercise 10 excepted: a kept loss tensor holds the batch's graph). A collection
must be the kind the exercise asks for, because the cells after the check use it as that kind: a
list where a list is asked (exercise 2), a tensor where a tensor is asked (exercises 3, 4, 7, 9).
The other kind fails, naming the conversion (:func:`_kind_problem`). A failure shows the inputs
that broke the answer.

The test records below are hand-written (the same as ``tests/fixtures/mini``), never ReClor text.
"""

from __future__ import annotations

import math
import operator
import weakref
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reclor_lab.config import NUM_LABELS, OPTION_LETTERS, REFERENCE_TEMPLATE
from reclor_lab.data import class_weights, format_example
from reclor_lab.loss import weighted_cross_entropy
from reclor_lab.metrics import accuracy_over_examples
from reclor_lab.shapes import LLAMA2_7B_SHAPE, ModelShape, lora_param_count, lora_params, nf4_bytes_per_param

#: The gradient-norm clip of the exercise's train step (QLoRA's value, ``RunConfig.max_grad_norm``).
MAX_GRAD_NORM = 0.3
#: Relative tolerance for float results (fp32 maths done in another order differs in the last digits).
RTOL = 1e-4
FALLBACK = "using the reference implementation so the rest of the notebook runs."

#: Hand-written records (copies of tests/fixtures/mini; a test keeps them in sync).
CHECK_RECORDS: tuple[dict, ...] = (
    {
        "context": "Every lighthouse keeper in Varn rises before dawn. Mara rises after dawn.",
        "question": "If the statements above are true, which one of the following must also be true?",
        "answers": [
            "Mara is not a lighthouse keeper in Varn.",
            "Mara is a lighthouse keeper in Varn.",
            "Some keepers in Varn rise after dawn.",
            "No one in Varn rises before dawn.",
        ],
        "label": 0,
        "id_string": "mini_0",
    },
    {
        "context": "The council claims the new bridge cut commute times, because commutes were shorter "
                   "in the month after it opened. But a school holiday fell in that month.",
        "question": "Which one of the following most strongly supports the council's claim?",
        "answers": [
            "The holiday was a week long.",
            "Commutes stayed shorter after the holiday ended.",
            "The bridge cost more than planned.",
            "Some commuters never use the bridge.",
        ],
        "label": 1,
        "id_string": "mini_1",
    },
    {
        "context": "Sales of the orchard's cider fell last year. The orchard's manager concludes that "
                   "the new label drove customers away.",
        "question": "Which one of the following, if true, most seriously weakens the manager's argument?",
        "answers": [
            "The new label was printed in green.",
            "The manager designed the old label.",
            "A frost destroyed half of last year's apple harvest.",
            "Cider sales rose at other orchards.",
        ],
        "label": 2,
        "id_string": "mini_2",
    },
)


class _Fail(Exception):
    """A failed test case; the message is what the student reads."""


class Fallback:
    """The reference implementation standing in for a student's function that did not pass.

    Calling it runs the reference (so later cells work). It keeps the student's function in
    ``student``: a check given a ``Fallback`` judges ``student``, so re-running only the check cell
    repeats the ⏳ or ❌ instead of passing the reference off as the student's work. It has no
    attribute that hands out the reference itself (it is kept in :data:`_REFERENCES`), and
    ``reclor-lab course grade`` never judges a ``Fallback``: it judges the ``def`` in the notebook.
    """

    def __init__(self, reference: Callable, student: Callable, verdict: str) -> None:
        _REFERENCES[self] = reference
        self.student = student
        self.verdict = verdict  # "⏳" or "❌"
        self.__name__ = _name(student)
        self.__doc__ = reference.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _REFERENCES[self](*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.__name__}: the reference implementation, standing in for yours ({self.verdict})>"


#: Each Fallback's reference, kept out of the object so that no attribute of it is the answer.
_REFERENCES: "weakref.WeakKeyDictionary[Fallback, Callable]" = weakref.WeakKeyDictionary()


def _own(fn: Callable) -> Callable:
    """The student's own function behind ``fn`` (a Fallback is unwrapped, however often)."""
    while isinstance(fn, Fallback):
        fn = fn.student
    return fn


#: Each exercise: (notebook, title, the function's name in the notebook), numbered in course order.
EXERCISES: dict[int, tuple[str, str, str]] = {
    1: ("01", "format a record", "format_record"),
    2: ("01", "class weights", "class_weights_by_hand"),
    3: ("01", "the position the head reads", "last_token_index"),
    4: ("02", "NF4 on one block", "nf4_block"),
    5: ("02", "find the LoRA targets", "lora_targets"),
    6: ("03", "count the LoRA parameters", "count_lora_params"),
    7: ("03", "the LoRA forward pass", "lora_forward"),
    8: ("03", "QLoRA memory of Llama-2-7B", "qlora_memory"),
    9: ("04", "weighted cross-entropy", "weighted_ce"),
    10: ("04", "one training step", "one_train_step"),
    11: ("05", "accuracy over examples", "accuracy_over_examples"),
    12: ("05", "the evaluation pass", "evaluation_pass"),
    13: ("06", "beat the model without a model", "rule_baseline"),
}
#: An exercise's number from the name of its function.
NUMBER: dict[str, int] = {name: n for n, (_, _, name) in EXERCISES.items()}

#: Names in the package (and bitsandbytes) that compute an exercise's answer. A student notebook
#: must not use them above or inside the exercise, up to its check, nor import a function under
#: the exercise's own name (a test scans the notebooks): reading the answer off the package would
#: teach nothing.
GIVEAWAYS: dict[str, tuple[str, ...]] = {
    "format_record": ("format_example", "REFERENCE_TEMPLATE", "TINY_TEMPLATE", "reference_format_record"),
    "class_weights_by_hand": ("class_weights", "reference_class_weights"),
    "last_token_index": ("model.last_token_index", "reference_last_token_index"),
    "nf4_block": ("quantize_4bit", "dequantize_4bit", "nf4_roundtrip", "reference_nf4_block"),
    "lora_targets": ("find_lora_targets", "quantizable_linears", "reference_lora_targets"),
    "count_lora_params": ("predicted_lora_params", "reference_count_lora_params"),
    "lora_forward": ("reference_lora_forward",),
    "qlora_memory": ("reference_qlora_memory", "estimate_bytes", "nf4_bytes_per_param", "memory_report"),
    "weighted_ce": ("weighted_cross_entropy", "reference_weighted_ce"),
    "one_train_step": ("train_step", "optimizer_step", "reference_train_step"),
    "accuracy_over_examples": ("metrics.accuracy_over_examples", "reference_accuracy"),
    "evaluation_pass": ("train.evaluate", "predict_proba", "reference_evaluation_pass"),
    "rule_baseline": ("rule_answer", "overlap_answer", "rule_baselines", "opens_sweepingly", "opens_modestly",
                      "SWEEPING", "SWEEPING_CLAUSE", "generate_split", "generated_parts", "reference_rule_baseline"),
}

#: What :func:`summary` needs to judge an exercise again: its test and the function last checked.
_CHECKED: dict[int, tuple[Callable[[Callable], None], Callable]] = {}


def _judge(number: int, fn: Callable, test: Callable[[Callable], None]) -> tuple[str, str]:
    """Run ``test(fn)``; return the verdict symbol and the line a student reads (no fallback note)."""
    head = f"Exercise {number} ({EXERCISES[number][1]})"
    try:
        test(fn)
    except NotImplementedError:
        return "⏳", f"⏳ {head}: not done yet (`{_name(fn)}` still raises NotImplementedError)."
    except _Fail as e:
        return "❌", f"❌ {head}: {e}"
    except Exception as e:  # the student's code crashed: show what, not a traceback
        return "❌", f"❌ {head}: `{_name(fn)}` raised {type(e).__name__}: {_short(str(e))}."
    return "✅", f"✅ {head}: correct."

#: What a student is told to do next, after the verdict line.
_NEXT = {"⏳": "Replace the TODO with your code and re-run the cell;", "❌": "Fix it and re-run the cell;"}


def _run(number: int, fn: Callable, reference: Callable, test: Callable[[Callable], None]) -> Callable:
    """Judge the student's own function, print the one-line verdict, return what to use from now on:
    the function itself when it passed, else a :class:`Fallback` to the reference.

    Inside :func:`build_test` (the grader) it only hands over ``test``: nothing runs, nothing prints."""
    if _TESTS is not None:
        _TESTS.append(test)
        return fn
    fn = _own(fn)
    _CHECKED[number] = (test, fn)
    symbol, line = _judge(number, fn, test)
    if symbol == "✅":
        print(line)
        return fn
    print(f"{line} {_NEXT[symbol]} {FALLBACK}")
    return Fallback(reference, fn, symbol)


#: Set only while :func:`build_test` asks a check for its test.
_TESTS: list | None = None


def build_test(check: Callable, *args: Any) -> Callable[[Callable], None]:
    """The test a check runs (``test(fn)`` raises on a wrong ``fn``), built on ``args`` without
    judging anything: what ``reclor-lab course grade`` judges a submission's function with, in a
    process where no student code ran before the test was built."""
    global _TESTS
    _TESTS = []
    try:
        check(lambda *a, **k: None, *args)
        (test,) = _TESTS
    finally:
        _TESTS = None
    return test


def whose(fn: Callable) -> str:
    """``"yours"`` for a student's own function, else ``"the reference's"``: what a line comparing
    the function with the package says it compares (a stand-in is never "yours")."""
    return "the reference's" if isinstance(fn, Fallback) else "yours"


def note(*fns: Callable) -> None:
    """The first line of a cell that uses exercises' functions after their checks: says, for each
    one still ⏳ or ❌, that the cell runs the reference implementation instead. Prints nothing
    when they all passed."""
    for fn in fns:
        if isinstance(fn, Fallback):
            number = NUMBER.get(fn.__name__)
            which = f"exercise {number}" if number else f"`{fn.__name__}`"
            print(f"(this cell uses the reference implementation of `{fn.__name__}`: {which} is still "
                  f"{fn.verdict}, so what it shows is not your work)")


def summary(namespace: dict | None = None) -> None:
    """Every exercise of the notebooks checked in this session, judged again on the student's
    functions as they stand now (looked up by name in the notebook, else the one last checked):
    one line each, then the count. The last cell of every student notebook."""
    if namespace is None:
        namespace = _notebook_namespace()
    notebooks = sorted({EXERCISES[n][0] for n in _CHECKED})
    if not notebooks:
        print("No exercise checked yet: run the notebook's cells from the top (Run All), then this one.")
        return
    done = total = 0
    for number, (notebook, title, name) in sorted(EXERCISES.items()):
        if notebook not in notebooks:
            continue
        total += 1
        if number not in _CHECKED:
            print(f"⏳ Exercise {number} ({title}): not checked yet (its check cell has not run).")
            continue
        test, last = _CHECKED[number]
        current = namespace.get(name, last)
        symbol, line = _judge(number, _own(current) if callable(current) else last, test)
        done += symbol == "✅"
        print(line)
    print(f"{done} of {total} exercises done.")


def _notebook_namespace() -> dict:
    """The running notebook's variables (empty outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return {}
    shell = get_ipython()
    return dict(shell.user_ns) if shell is not None else {}


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", "your function")


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-6)


def _kind_problem(got: Any, kind: str) -> str | None:
    """Why ``got`` is not the collection an exercise asks for (``kind``: "list" or "tensor"), or
    None when it is (see the module's return-type rule)."""
    name = type(got).__name__
    is_numpy = type(got).__module__.split(".")[0] == "numpy"
    if kind == "list" and (isinstance(got, torch.Tensor) or is_numpy):
        return (f"a {name}, not a list; return a Python list (`.tolist()` turns a {name} into one): the "
                "cells after the check use it as a list")
    if kind == "tensor" and (isinstance(got, (list, tuple)) or is_numpy):
        return (f"a {name}, not a tensor; return a torch tensor (`torch.tensor(...)` makes one): the cells "
                "after the check call tensor methods on it, such as .tolist()")
    return None


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
    n = len(labels)
    counts = [labels.count(c) for c in range(NUM_LABELS)]

    if 0 in counts:
        return "an option that never occurs (n_c = 0) gets weight 1.0: it adds no loss either way."

    def same(xs: list[float]) -> bool:
        return all(_close(a, b) for a, b in zip(got, xs))

    if len(set(counts)) == 1 and same([1 / NUM_LABELS] * NUM_LABELS):
        return ("four 0.25s are the label frequencies n_c / N, or weights normalised to sum to 1; the weight "
                "is N / (4 · n_c), not normalised, so balanced labels give four weights of 1.")
    if same([c / n for c in counts]):
        return "those are the label frequencies n_c / N; the weight is the inverse, scaled: N / (4 · n_c)."
    if same([n / c for c in counts]):
        return "almost: divide by the number of classes (4) as well, so balanced labels give weights of 1."
    if same([1 / c for c in counts]):
        return "almost: multiply by N / 4 (N = number of labels), so balanced labels give weights of 1."
    want = [n / (NUM_LABELS * c) for c in counts]
    first_seen = list(dict.fromkeys(labels))  # the order a Counter (or a dict) keeps its keys in
    if first_seen != sorted(first_seen) and same([want[c] for c in first_seen]):
        order = ", ".join(str(c) for c in first_seen)
        return (f"the right weights in the wrong order: class {order}, the order in which the classes first "
                f"appear in these labels, which is the order of Counter.values(). Return them for class 0, 1, "
                "2, 3: look each class up, counts[c], instead of iterating over the values.")
    if _close(sum(got), 1.0) or (got[0] and all(_close(g / got[0], w / want[0]) for g, w in zip(got, want))):
        return ("right proportions, wrong scale: the weights are not normalised (to sum to 1 or any other "
                "total); N / (4 · n_c) as it is, so balanced labels give four weights of 1.")
    return "the weight of class c is N / (4 · n_c), with N the number of labels and n_c the count of c."


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


# --- 4. NF4 on one block ------------------------------------------------------------------------------

def reference_nf4_block(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bitsandbytes' NF4 of one block of 64 weights: ``(codes, absmax, dequantized)``.

    ``quantize_4bit`` packs two 4-bit codes per byte, the first in the high nibble.
    """
    import bitsandbytes.functional as bnbf

    from reclor_lab.model import NF4_BLOCKSIZE

    block = block.detach().float().cpu().flatten()
    packed, state = bnbf.quantize_4bit(block, blocksize=NF4_BLOCKSIZE, quant_type="nf4",
                                       compress_statistics=False)
    packed = packed.flatten()
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).flatten().long()
    values = bnbf.dequantize_4bit(packed.reshape(-1, 1), state, quant_type="nf4").flatten()
    return codes, state.absmax.flatten()[0], values


def _nf4_cases() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(4)
    weights = torch.randn(64, generator=g) * 0.02
    outlier = torch.randn(64, generator=g) * 0.02
    outlier[17] = -0.31  # the absmax is a negative weight
    skewed = torch.randn(64, generator=g).abs() * 0.05 + 0.01  # all positive
    return [
        ("a block of 64 normal weights (std 0.02)", weights),
        ("a block whose largest |weight| is negative (an outlier, -0.31)", outlier),
        ("a block of 64 positive weights", skewed),
    ]


def _nf4_hint(part: str, got: torch.Tensor, block: torch.Tensor, codes: torch.Tensor,
              absmax: torch.Tensor) -> str:
    from reclor_lab.model import NF4_CODE

    code = torch.tensor(NF4_CODE)
    if part == "absmax":
        if torch.isclose(got, block.max()):
            return ("the scale is the block's largest ABSOLUTE value, so that every weight / scale lies in "
                    "[-1, 1]; the largest value misses a larger negative one.")
        if torch.isclose(got, block.abs().mean()) or torch.isclose(got, block.std()):
            return "the scale is the block's absolute maximum, not an average: it maps the block onto [-1, 1]."
        return "the scale of a block is its absolute maximum (absmax)."
    if part == "codes":
        unscaled = (block.unsqueeze(-1) - code).abs().argmin(-1)
        if torch.equal(got, unscaled):
            return "those are the codes nearest to the raw weights; divide the block by its absmax first."
        uniform = torch.round((block / absmax + 1) * 7.5).long()
        if (got - uniform).abs().max() <= 1:
            return ("those look like 16 evenly spaced levels (uniform int4); NF4's 16 levels are the values "
                    "of NF4_CODE, dense near 0: pick the index of the nearest one.")
        return "for each weight, the index (0–15) of the NF4_CODE value nearest to weight / absmax."
    if torch.allclose(got, code[codes]):
        return "those are the code values in [-1, 1]; multiply them by the block's absmax."
    if torch.allclose(got, block):
        return "those are the original weights; dequantize from the codes: code value × absmax."
    return "dequantized value = NF4_CODE[code] × absmax, in float32."


def check_nf4_block(fn: Callable[[torch.Tensor], tuple]) -> Callable:
    """Exercise 4: ``fn(block) -> (codes, absmax, dequantized)`` for one block of 64 weights, equal
    bit for bit to ``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit`` (NF4, block 64)."""

    def test(fn: Callable) -> None:
        for what, block in _nf4_cases():
            out = fn(block.clone())
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise _Fail(f"for {what} it returned {type(out).__name__}; return three things: "
                            "(codes, absmax, dequantized).")
            codes, absmax, values = out
            for part, got in (("codes", codes), ("dequantized values", values)):
                problem = _kind_problem(got, "tensor")
                if problem:
                    raise _Fail(f"for {what} the {part} are {problem}.")
            want_codes, want_absmax, want_values = reference_nf4_block(block)
            absmax = torch.as_tensor(absmax).detach().float().cpu().flatten()
            if absmax.numel() != 1:
                raise _Fail(f"for {what} the absmax has {absmax.numel()} numbers; one block has one scale.")
            if not torch.equal(absmax[0], want_absmax):
                raise _Fail(f"for {what} the absmax is {absmax[0].item():.4g}: "
                            f"{_nf4_hint('absmax', absmax[0], block, want_codes, want_absmax)}")
            codes = torch.as_tensor(codes).detach().cpu().flatten()
            if codes.is_floating_point() or codes.numel() != block.numel():
                raise _Fail(f"for {what} the codes are {codes.numel()} {codes.dtype} values; return one integer "
                            "index 0–15 per weight.")
            codes = codes.long()
            if not torch.equal(codes, want_codes):
                wrong = int((codes != want_codes).sum())
                raise _Fail(f"for {what} {wrong} of 64 codes differ from bitsandbytes': "
                            f"{_nf4_hint('codes', codes, block, want_codes, want_absmax)}")
            values = torch.as_tensor(values).detach().cpu().flatten()
            if values.shape != want_values.shape or not torch.equal(values.float(), want_values):
                raise _Fail(f"for {what} the codes and absmax are right, the dequantized values are not: "
                            f"{_nf4_hint('values', values.float(), block, want_codes, want_absmax)}")

    return _run(NUMBER["nf4_block"], fn, reference_nf4_block, test)


# --- 5. LoRA targets -----------------------------------------------------------------------------------

def reference_lora_targets(model: nn.Module) -> list[str]:
    """:func:`reclor_lab.lora.find_lora_targets`."""
    from reclor_lab.lora import find_lora_targets

    return find_lora_targets(model)


def check_lora_targets(fn: Callable[[nn.Module], list[str]], model: nn.Module) -> Callable[[nn.Module], list[str]]:
    """Exercise 5: ``fn(model)`` → sorted unique leaf names of every 4-bit linear layer but ``score``."""
    want = reference_lora_targets(model)

    def test(fn: Callable) -> None:
        got = fn(model)
        if isinstance(got, (str, bytes)) or not isinstance(got, (list, tuple)):
            raise _Fail(f"it returned {type(got).__name__}; return a list of module names (str).")
        got = list(got)
        if any("score" == g or g.endswith(".score") for g in got):
            raise _Fail("the list contains the head `score`; the head is new and trains in full, "
                        "so it gets no LoRA adapter: leave it out.")
        if any("." in g for g in got):
            raise _Fail("the list holds full paths like 'model.layers.0.self_attn.q_proj'; peft wants the "
                        "leaf names ('q_proj'): keep the part after the last dot.")
        if len(set(got)) != len(got):
            raise _Fail("the list has repeated names (each layer of the model has its own q_proj…); "
                        "return each name once.")
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing:
            raise _Fail(f"{len(missing)} kind(s) of 4-bit linear layer are missing, e.g. {missing[0]!r}; "
                        "look at every module whose type is bitsandbytes' Linear4bit.")
        if extra:
            raise _Fail(f"{extra[0]!r} is not a 4-bit linear layer (or is the head); keep only Linear4bit "
                        "modules.")
        if got != want:
            raise _Fail("right names, wrong order: return them sorted.")

    return _run(NUMBER["lora_targets"], fn, reference_lora_targets, test)


# --- 6. count LoRA parameters -----------------------------------------------------------------------------

def reference_count_lora_params(shapes: Sequence[tuple[int, int]], r: int) -> int:
    """LoRA parameters for layers of ``(out_features, in_features)``: A is r×in and B is out×r.

    The same rule as :func:`reclor_lab.lora.predicted_lora_params`, from shapes alone.

    >>> reference_count_lora_params([(4, 8)], r=2)
    24
    """
    return lora_param_count(shapes, r)


#: One Llama-2-7B decoder layer: q, k, v, o (4096×4096), gate and up (11008×4096), down (4096×11008),
#: as ``(out, in)``.
_LLAMA2_7B_LAYER = [(out, in_) for in_, out in LLAMA2_7B_SHAPE.projections.values()]
_COUNT_CASES: tuple[tuple[str, list[tuple[int, int]], int], ...] = (
    ("one 4×8 layer, r=2", [(4, 8)], 2),
    ("a 3×5 and a 6×2 layer, r=1", [(3, 5), (6, 2)], 1),
    ("one Llama-2-7B decoder layer (7 projections), r=16", _LLAMA2_7B_LAYER, 16),
    ("all 32 Llama-2-7B decoder layers, r=8", _LLAMA2_7B_LAYER * 32, 8),
)


def _count_hint(got: int, shapes: list[tuple[int, int]], r: int) -> str:
    full, square = sum(o * i for o, i in shapes), sum(2 * r * max(o, i) for o, i in shapes)
    if got == full == square:
        return ("that is the size of the full weights W, and also 2r·max(in, out) here; LoRA trains only "
                "A (r×in) and B (out×r): r·in + out·r per layer.")
    if got == full:
        return "that is the size of the full weights W; LoRA trains only A (r×in) and B (out×r)."
    if got == sum(r * o * i for o, i in shapes):
        return "LoRA adds A (r×in) and B (out×r) per layer: r·in + out·r, not r·in·out."
    if got in (sum(r * i for o, i in shapes), sum(r * o for o, i in shapes)):
        return "you counted only one of the two matrices; each layer has A (r×in) and B (out×r)."
    if got == square:
        return ("2r·max(in, out) treats A and B as the same size; they are not for a non-square layer: "
                "A is r×in and B is out×r, so r·in + out·r.")
    if got == sum(o + i for o, i in shapes):
        return "the rank r is missing: A has r rows, B has r columns."
    return "each layer adds A (r×in) and B (out×r); sum over all the layers."


def check_count_lora_params(fn: Callable[[list[tuple[int, int]], int], int]) -> Callable:
    """Exercise 6: ``fn(shapes, r) -> int`` = Σ r·(in + out) over ``(out, in)`` shapes."""

    def test(fn: Callable) -> None:
        for what, shapes, r in _COUNT_CASES:
            got = fn(list(shapes), r)
            if isinstance(got, bool) or not isinstance(got, int):
                if isinstance(got, float) and got.is_integer():
                    raise _Fail(f"for {what} it returned the float {got}; return an int (use // or int()).")
                raise _Fail(f"for {what} it returned {type(got).__name__}; return an int.")
            want = reference_count_lora_params(shapes, r)
            if got != want:
                raise _Fail(f"for {what} it returned {got:,}: {_count_hint(got, shapes, r)}")

    return _run(NUMBER["count_lora_params"], fn, reference_count_lora_params, test)


# --- 7. the LoRA forward pass ----------------------------------------------------------------------

def reference_lora_forward(x: torch.Tensor, W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           alpha: float, r: int, dropout: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``W0 x + (alpha / r) · B A dropout(x)`` for a batch of row vectors ``x`` (batch, in):
    the frozen path sees ``x`` itself, only the update sees the dropped-out input."""
    return x @ W0.T + (alpha / r) * (dropout(x) @ A.T) @ B.T


#: The alphas the check tries per rank r: alpha = r (scale 1, the reference), 4r and r/2.
_ALPHA_FACTORS = (1.0, 4.0, 0.5)


class _ReplayDropout(nn.Module):
    """The dropout peft's layer just applied, replayed: returns the same dropped-out input, so the
    student's function sees the very mask peft drew (on a GPU, peft's mask comes from the CUDA
    generator, which a CPU ``nn.Dropout`` cannot reproduce)."""

    def __init__(self, output: torch.Tensor, p: float) -> None:
        super().__init__()
        self.output, self.p = output, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.output.shape:
            raise _Fail(f"dropout was given a tensor of shape {tuple(x.shape)}; apply it to x "
                        f"{tuple(self.output.shape)}, the input of the update.")
        return self.output.to(x.device, x.dtype)


def _lora_hint(got: torch.Tensor, x: torch.Tensor, W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
               alpha: float, r: int, dropped: torch.Tensor | None, bound: torch.Tensor) -> str:
    def near(y: torch.Tensor) -> bool:
        return bool(((got.double() - y.double()).abs() <= bound + 1e-4 * y.abs().double()).all())

    lora_in = x if dropped is None else dropped
    update = (lora_in @ A.T) @ B.T
    if alpha // r != alpha / r and near(x @ W0.T + (alpha // r) * update):
        return ("alpha // r is integer division (0 when alpha < r, 4 for alpha = 4.5·r); the scale is the "
                "float alpha / r.")
    if A.shape[1] == B.shape[0] and near(x @ W0.T + alpha / r * (lora_in @ B) @ A):
        return ("A and B are swapped: the input goes through A first (x·Aᵀ, r numbers per row), then B "
                "(·Bᵀ); A is (r, in), B is (out, r).")
    if near(x @ W0.T):
        return "that is W0·x alone: the LoRA update (alpha/r)·B·A·x is missing."
    for scale, what in ((1.0, "unscaled"), (r / alpha, "scaled by r/alpha"), (alpha * r, "scaled by alpha·r"),
                        (alpha, "scaled by alpha")):
        if scale != alpha / r and near(x @ W0.T + scale * update):
            return f"the update is {what}; LoRA scales B·A·x by alpha / r."
    if near(update * alpha / r):
        return "that is the update alone; add the frozen layer's output W0·x."
    if dropped is not None:
        if near(x @ W0.T + alpha / r * (x @ A.T) @ B.T):
            return ("in training (this case) dropout must act on the update's input: call `dropout(x)` once and "
                    "feed that to A.")
        if near(dropped @ W0.T + alpha / r * update):
            return "dropout belongs to the LoRA branch only: the frozen W0 sees x unchanged."
    return "expected W0·x + (alpha/r)·B·(A·dropout(x)) for each row x (x is (batch, in), A (r, in), B (out, r))."


def check_lora_forward(fn: Callable, lora_layer: nn.Module, adapter: str = "default") -> Callable:
    """Exercise 7: ``fn(x, W0, A, B, alpha, r, dropout)`` → the adapted layer's output, compared
    with peft's own ``lora.Linear4bit`` on the same input: in eval mode (dropout off) for three
    alphas, and in train mode with the dropout mask peft drew (replayed). The tolerance is the rounding
    bound of the dtype the layer computes in (:func:`reclor_lab.lora.lora_error_bound`)."""
    import bitsandbytes.functional as bnbf

    from reclor_lab.cpu4bit import layer_compute_dtype
    from reclor_lab.lora import lora_error_bound

    base = lora_layer.get_base_layer()
    device = base.weight.device
    W0 = bnbf.dequantize_4bit(base.weight.data, base.weight.quant_state).float().cpu()
    out_features, in_features = W0.shape
    r = int(lora_layer.r[adapter])
    a_weight, b_weight = lora_layer.lora_A[adapter].weight, lora_layer.lora_B[adapter].weight
    dropout = lora_layer.lora_dropout[adapter]
    p = float(getattr(dropout, "p", 0.0))
    layer_dtype = layer_compute_dtype(base)
    g = torch.Generator().manual_seed(7)
    A = torch.randn(r, in_features, generator=g) / in_features ** 0.5
    B = torch.randn(out_features, r, generator=g) / r ** 0.5  # not zero: as if trained
    x = torch.randn(3, in_features, generator=g)
    cases = [(f"eval mode, alpha = {f * r:g}, r = {r}", f * r, False) for f in _ALPHA_FACTORS]
    cases.append((f"train mode (dropout p = {p:g} on), alpha = {r}, r = {r}", float(r), True))

    def peft_output(alpha: float, training: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """peft's output, and in training the dropped-out input its adapter saw."""
        lora_layer.scaling[adapter] = alpha / r
        lora_layer.train(training)
        torch.manual_seed(seed)
        seen: list[torch.Tensor] = []
        hook = dropout.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().float().cpu()))
        try:
            with torch.no_grad():
                y = lora_layer(x.to(device)).float().cpu()
        finally:
            hook.remove()
        return y, (seen[0] if training else None)

    def test(fn: Callable) -> None:
        saved = (a_weight.detach().clone(), b_weight.detach().clone(), lora_layer.scaling[adapter],
                 lora_layer.training, torch.get_rng_state())
        try:
            with torch.no_grad():
                a_weight.copy_(A)
                b_weight.copy_(B)
            for k, (what, alpha, training) in enumerate(cases):
                want, dropped = peft_output(alpha, training, seed=100 + k)
                dropout.train(training)  # in eval mode the layer's own dropout: the identity
                given = _ReplayDropout(dropped, p) if training else dropout
                try:
                    got = fn(x.clone(), W0.clone(), A.clone(), B.clone(), alpha, r, given)
                except RuntimeError as e:
                    if "shape" in str(e) or "size" in str(e):
                        raise _Fail(f"for {what} a matmul's shapes do not fit ({_short(str(e), 80)}; A and B "
                                    f"swapped?): x is "
                                    f"(batch, in) = {tuple(x.shape)}, A is (r, in) = {tuple(A.shape)}, B is "
                                    f"(out, r) = {tuple(B.shape)}; y is (batch, out).") from None
                    raise
                if not isinstance(got, torch.Tensor):
                    raise _Fail(f"for {what} it returned {type(got).__name__}; return the output tensor.")
                got = got.detach().float().cpu()
                if got.shape != want.shape:
                    raise _Fail(f"for {what} it returned shape {tuple(got.shape)}; the layer gives "
                                f"(batch, out) = {tuple(want.shape)}.")
                scale_x = x / (1 - p) if training else x  # dropout scales what it keeps by 1/(1-p)
                bound = lora_error_bound(scale_x, W0, A, B, alpha / r, layer_dtype)
                if not bool(((got.double() - want.double()).abs() <= bound).all()):
                    raise _Fail(f"for {what} the output differs from peft's layer beyond rounding: "
                                f"{_lora_hint(got, x, W0, A, B, alpha, r, dropped, bound)}")
        finally:
            with torch.no_grad():
                a_weight.copy_(saved[0])
                b_weight.copy_(saved[1])
            lora_layer.scaling[adapter] = saved[2]
            lora_layer.train(saved[3])
            torch.set_rng_state(saved[4])

    return _run(NUMBER["lora_forward"], fn, reference_lora_forward, test)


# --- 8. QLoRA memory of Llama-2-7B --------------------------------------------------------------------

#: The exercise's shapes are the planner's (:class:`reclor_lab.shapes.ModelShape`): it reads
#: ``layers``, ``hidden``, ``intermediate``, ``heads`` and ``vocab``.
LLAMA2_7B = LLAMA2_7B_SHAPE
LLAMA2_13B = ModelShape(layers=40, hidden=5120, intermediate=13824, heads=40, kv_heads=40, vocab=32000)
#: Bits one NF4 weight costs with double quantization: the 4-bit code, an 8-bit absmax per block
#: of 64, and one fp32 scale per 256 absmaxes.
NF4_DQ_BITS = nf4_bytes_per_param(double_quant=True) * 8
#: Bytes per trained parameter with AdamW: the fp32 weight, its fp32 gradient, AdamW's two fp32
#: moments (m and v).
TRAINED_BYTES = 4 + 4 + 4 + 4
#: Bytes of the kept non-quantized weights (embeddings, norms, head): fp32, because peft's
#: ``prepare_model_for_kbit_training`` casts them up for stable training.
KEPT_BYTES = 4
#: Activation bytes one decoder layer keeps for backward, per sequence of length s: s·(34·h + 5·a·s)
#: in 16-bit (Korthikanti et al. 2022, "Reducing Activation Recomputation", without recompute).
ACT_PER_TOKEN_HIDDEN, ACT_ATTENTION = 34, 5
#: With gradient checkpointing a layer keeps only its input: s·h numbers in bf16.
CHECKPOINT_BYTES = 2


def _memory_terms(shape: ModelShape, batch_size: int, seq_len: int, r: int) -> tuple[int, int, int, int]:
    """The counts the memory estimate is made of: 4-bit weights, kept (non-4-bit) weights, LoRA
    parameters, and one layer's activation bytes without checkpointing."""
    h = shape.hidden
    quantized = shape.quantized_params
    kept = shape.sixteen_bit_params + shape.head_params
    lora = lora_params(shape, r)
    per_layer = batch_size * seq_len * (ACT_PER_TOKEN_HIDDEN * h + ACT_ATTENTION * shape.heads * seq_len)
    return quantized, kept, lora, per_layer


def reference_qlora_memory(shape: ModelShape, batch_size: int, seq_len: int, r: int,
                           checkpointing: bool) -> dict[str, float]:
    """Bytes of a QLoRA fine-tune of a Llama-style 4-way classifier, in three parts.

    * ``weights``: the 7 projections of each layer in NF4 with double quantization
      (:data:`NF4_DQ_BITS` each); embeddings, 2 norms a layer + the final one and the head
      ``score`` (4 × hidden) in fp32. No ``lm_head``: a classifier never loads it.
    * ``trained``: the LoRA matrices of all 7 projections (r·(in + out) each) and the head, at
      :data:`TRAINED_BYTES` each (weight, gradient, AdamW's m and v). The head's weight is
      counted in ``weights`` as well (a few KB).
    * ``activations``: per layer ``b·s·(34·h + 5·a·s)`` bytes without checkpointing, all layers
      kept; with checkpointing each layer keeps its input (``b·s·h`` bf16) and one layer's full
      activations exist at a time while backward recomputes it.

    >>> m = reference_qlora_memory(LLAMA2_7B, 1, 640, 16, checkpointing=True)
    >>> round(m["weights"] / 2**30, 2), round(m["trained"] / 2**30, 2), round(m["activations"] / 2**30, 2)
    (3.6, 0.6, 0.3)
    """
    h, L = shape.hidden, shape.layers
    quantized, kept, lora, per_layer = _memory_terms(shape, batch_size, seq_len, r)
    if checkpointing:
        activations = L * batch_size * seq_len * h * CHECKPOINT_BYTES + per_layer
    else:
        activations = L * per_layer
    return {
        "weights": quantized * NF4_DQ_BITS / 8 + kept * KEPT_BYTES,
        "trained": (lora + NUM_LABELS * h) * TRAINED_BYTES,
        "activations": float(activations),
    }


_MEMORY_CASES: tuple[tuple[str, ModelShape, int, int, int, bool], ...] = (
    ("Llama-2-7B, batch 1 × 640 tokens, r=16, checkpointing on", LLAMA2_7B, 1, 640, 16, True),
    ("Llama-2-7B, batch 1 × 640 tokens, r=16, checkpointing off", LLAMA2_7B, 1, 640, 16, False),
    ("Llama-2-7B, batch 8 × 256 tokens, r=64, checkpointing on", LLAMA2_7B, 8, 256, 64, True),
    ("Llama-2-13B, batch 2 × 512 tokens, r=8, checkpointing off", LLAMA2_13B, 2, 512, 8, False),
)


def _memory_hint(part: str, got: float, shape: ModelShape, b: int, s: int, r: int, ckpt: bool) -> str:
    h, L = shape.hidden, shape.layers
    quantized, kept, lora, per_layer = _memory_terms(shape, b, s, r)
    want = reference_qlora_memory(shape, b, s, r, ckpt)[part]

    def near(x: float) -> bool:
        return math.isclose(got, x, rel_tol=1e-6)

    for unit, size in (("GiB", 2**30), ("GB", 1e9), ("MiB", 2**20), ("MB", 1e6)):
        if math.isclose(got, want / size, rel_tol=1e-4):
            return f"that is the right amount in {unit}; return bytes (the notebook divides by 2**30 to print GiB)."
    if part == "weights":
        if near(want + shape.vocab * h * KEPT_BYTES) or near(want + shape.vocab * h * 2):
            return "it counts an lm_head: a 4-way classifier never loads it (transformers drops it)."
        if near(quantized * 0.5 + kept * KEPT_BYTES):
            return ("4 bits flat misses the scales: each block of 64 also stores an 8-bit absmax, and every 256 "
                    "absmaxes one fp32 scale.")
        if near(quantized * 4.5 / 8 + kept * KEPT_BYTES):
            return ("4.5 bits is NF4 without double quantization (an fp32 absmax per 64); with it the absmax "
                    "is 8-bit plus one fp32 scale per 256 blocks.")
        if near(quantized * NF4_DQ_BITS / 8 + kept * 2):
            return ("the embeddings, norms and head are fp32 while training: prepare_model_for_kbit_training "
                    "casts every weight that is not 4-bit up.")
        return ("weights = the 7 projections of every layer at 4 + 8/64 + 32/(64·256) bits, plus embeddings, "
                "norms (2 a layer + 1) and the 4-way head in fp32.")
    if part == "trained":
        trained = lora + NUM_LABELS * h
        for per, what in ((4, "only the weights"), (8, "weights and gradients but no optimizer state"),
                          (12, "AdamW with one state; it keeps two (m and v)")):
            if near(trained * per) or near(lora * per):
                return f"that counts {what}: each trained parameter has an fp32 weight, gradient, m and v."
        if near(lora * TRAINED_BYTES):
            return "the head `score` trains too (4 × hidden parameters with their gradient and AdamW states)."
        return "LoRA's r·(in + out) for each of the 7 projections of each layer, plus the head, at 16 bytes each."
    if ckpt and near(L * per_layer):
        return ("that is without checkpointing: with it each layer keeps only its input (b·s·h in bf16), and "
                "backward recomputes one layer's activations at a time.")
    if ckpt and near(L * b * s * h * CHECKPOINT_BYTES):
        return "the layers' inputs are right; add the one layer whose activations backward recomputes."
    if not ckpt and near(L * b * s * h * CHECKPOINT_BYTES + per_layer):
        return "that is with checkpointing; without it every layer keeps all of b·s·(34·h + 5·a·s) bytes."
    if near(want / b) or near(want / s):
        return "activations grow with the batch size and the sequence length: both are in the formula."
    return "per layer b·s·(34·h + 5·a·s) bytes; all L layers without checkpointing."


def check_qlora_memory(fn: Callable[..., dict]) -> Callable:
    """Exercise 8: ``fn(shape, batch_size, seq_len, r, checkpointing)`` → bytes of ``weights``,
    ``trained`` and ``activations``, as :func:`reference_qlora_memory` (two model shapes, so the
    numbers cannot be copied)."""

    def test(fn: Callable) -> None:
        for what, shape, b, s, r, ckpt in _MEMORY_CASES:
            got = fn(shape, b, s, r, ckpt)
            if not isinstance(got, dict):
                raise _Fail(f"for {what} it returned {type(got).__name__}; return a dict with 'weights', "
                            "'trained' and 'activations' (bytes).")
            want = reference_qlora_memory(shape, b, s, r, ckpt)
            if set(got) != set(want):
                raise _Fail(f"for {what} it returned the keys {sorted(got)}; return exactly {sorted(want)}.")
            for part in ("weights", "trained", "activations"):
                value = got[part]
                if isinstance(value, torch.Tensor):
                    value = value.item()
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise _Fail(f"for {what} '{part}' is {type(value).__name__}; return a number of bytes.")
                if not math.isclose(float(value), want[part], rel_tol=1e-6):
                    raise _Fail(f"for {what} '{part}' is {float(value) / 2**30:.3f} GiB: "
                                f"{_memory_hint(part, float(value), shape, b, s, r, ckpt)}")

    return _run(NUMBER["qlora_memory"], fn, reference_qlora_memory, test)


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

    The package's loop (:func:`reclor_lab.train.train_step` + :func:`~reclor_lab.train.optimizer_step`)
    with the optimizer's own learning rate; returns the loss before the step.
    """
    from reclor_lab.train import optimizer_step, train_step

    loss = train_step(model, batch, weights, dtype=torch.float32)  # train_step leaves the batch as it was
    optimizer_step(model, optimizer, lr=optimizer.param_groups[0]["lr"], max_grad_norm=max_grad_norm)
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
                if not (_close(got[0], want[0]) and _close(got[1], want[1])):
                    raise _Fail(f"for {what}: {_eval_hint(got[0], got[1], batches, weights, want, logits)}")
        finally:
            hook.remove()
            model.train(was_training)

    return _run(NUMBER["evaluation_pass"], fn, reference_evaluation_pass, test)


# --- 13. beat the model without a model --------------------------------------------------------------

def reference_rule_baseline(record: dict) -> int:
    """:func:`reclor_lab.results.baselines.rule_answer`: reject the options that open sweepingly, then the
    option with the most word overlap with the passage."""
    from reclor_lab.results.baselines import rule_answer

    return rule_answer(record)


#: Records the rule is judged on: a fresh stream of the kit's generator (not the bundled files).
RULE_CASES = 300
_RULE_SEED = 31_337
#: What a rule must reach on those records: overall, and on their HARD part (no cue in the options).
RULE_FLOOR = 0.85
RULE_HARD_FLOOR = 0.5


def _rule_cases(seed: int) -> tuple[list[dict], list[int], list[str]]:
    """The judged records without their labels and ids, their labels, and their EASY / HARD parts."""
    from reclor_lab.tools.synth import cue_part, generate_split

    records = generate_split("val", RULE_CASES, seed=seed)
    shown = [{k: (list(v) if k == "answers" else v) for k, v in r.items() if k in ("context", "question", "answers")}
             for r in records]
    return shown, [r["label"] for r in records], [cue_part(r) for r in records]


def check_rule_baseline(fn: Callable[[dict], int], seed: int | None = None) -> Callable[[dict], int]:
    """Exercise 13: ``fn(record) -> int``, an option index from the record's text alone (no label),
    reaching :data:`RULE_FLOOR` on fresh records of the kit's generator and :data:`RULE_HARD_FLOOR`
    on their HARD part. ``seed`` draws the records (the notebook's fixed one by default; the grader
    passes its own, so no shipped file holds the records a submission is graded on)."""
    records, labels, parts = _rule_cases(_RULE_SEED if seed is None else seed)

    def test(fn: Callable) -> None:
        preds = []
        for k, record in enumerate(records):
            got = fn({key: (list(v) if key == "answers" else v) for key, v in record.items()})
            if isinstance(got, torch.Tensor) and got.numel() == 1:
                got = got.item()
            try:
                index = None if isinstance(got, bool) else operator.index(got)  # int, numpy's integers
            except TypeError:
                index = None
            if index is None or not 0 <= index < NUM_LABELS:
                raise _Fail(f"on record {k} it returned {got!r}; return the index (0–3) of the chosen option.")
            preds.append(index)

        def acc(part: str | None) -> float:
            idx = [i for i, p in enumerate(parts) if part in (None, p)]
            return sum(preds[i] == labels[i] for i in idx) / len(idx)

        total, easy, hard = acc(None), acc("EASY"), acc("HARD")
        shown = f"{total:.3f} overall (EASY {easy:.3f}, HARD {hard:.3f}) on {len(records)} fresh records"
        if len(set(preds)) == 1:
            raise _Fail(f"it answers {OPTION_LETTERS[preds[0]]} every time: {shown}. Read the options.")
        if easy < RULE_FLOOR:
            raise _Fail(f"{shown}: on the EASY records the options give the answer away. Which way do the "
                        "wrong options open, and the right one? Reject the sweeping ones first.")
        if hard < RULE_HARD_FLOOR:
            raise _Fail(f"{shown}: where no option opens sweepingly (HARD), it does little better than a "
                        "guess; there, take the option that shares the most words with the passage.")
        if total < RULE_FLOOR:
            raise _Fail(f"{shown}: below the floor of {RULE_FLOOR}; combine the two: reject the sweeping "
                        "options, then the most word overlap with the passage.")

    return _run(NUMBER["rule_baseline"], fn, reference_rule_baseline, test)


__all__ = [
    "CHECK_RECORDS",
    "EXERCISES",
    "Fallback",
    "build_test",
    "note",
    "whose",
    "MAX_GRAD_NORM",
    "check_accuracy",
    "check_class_weights",
    "check_evaluation_pass",
    "check_rule_baseline",
    "check_count_lora_params",
    "check_format_record",
    "check_lora_targets",
    "check_train_step",
    "check_weighted_ce",
    "reference_accuracy",
    "reference_class_weights",
    "reference_count_lora_params",
    "reference_evaluation_pass",
    "reference_rule_baseline",
    "reference_format_record",
    "reference_lora_targets",
    "reference_train_step",
    "reference_weighted_ce",
    "summary",
]
