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

The test records below are hand-written (the same as ``tests/fixtures/mini``), never ReClor text.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reclor_lab.config import NUM_LABELS, OPTION_LETTERS, REFERENCE_TEMPLATE
from reclor_lab.data import class_weights, format_example
from reclor_lab.loss import weighted_cross_entropy
from reclor_lab.metrics import accuracy_over_examples

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
    repeats the ⏳ or ❌ instead of passing the reference off as the student's work.
    """

    def __init__(self, reference: Callable, student: Callable, verdict: str) -> None:
        self.reference = reference
        self.student = student
        self.verdict = verdict  # "⏳" or "❌"
        self.__name__ = _name(student)
        self.__doc__ = reference.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.reference(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.__name__}: the reference implementation, standing in for yours ({self.verdict})>"


def _own(fn: Callable) -> Callable:
    """The student's own function behind ``fn`` (a Fallback is unwrapped, however often)."""
    while isinstance(fn, Fallback):
        fn = fn.student
    return fn


#: Each exercise: (notebook, title, the function's name in the notebook).
EXERCISES: dict[int, tuple[str, str, str]] = {
    1: ("01", "format a record", "format_record"),
    2: ("01", "class weights", "class_weights_by_hand"),
    3: ("02", "find the LoRA targets", "lora_targets"),
    4: ("03", "count the LoRA parameters", "count_lora_params"),
    5: ("04", "weighted cross-entropy", "weighted_ce"),
    6: ("04", "one training step", "one_train_step"),
    7: ("05", "accuracy over examples", "accuracy_over_examples"),
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
    the function itself when it passed, else a :class:`Fallback` to the reference."""
    fn = _own(fn)
    _CHECKED[number] = (test, fn)
    symbol, line = _judge(number, fn, test)
    if symbol == "✅":
        print(line)
        return fn
    print(f"{line} {_NEXT[symbol]} {FALLBACK}")
    return Fallback(reference, fn, symbol)


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

    return _run(1, fn, reference_format_record, test)


# --- 2. class weights ------------------------------------------------------------------------------

def reference_class_weights(labels: Sequence[int]) -> list[float]:
    """``w_c = N / (4 · n_c)`` as a list of floats (:func:`reclor_lab.data.class_weights`)."""
    return class_weights(labels).tolist()


_WEIGHT_CASES: tuple[tuple[str, list[int]], ...] = (
    ("balanced labels [0, 1, 2, 3, 0, 1, 2, 3]", [0, 1, 2, 3] * 2),
    ("skewed labels [0, 0, 1, 2, 3, 3, 3, 3]", [0, 0, 1, 2, 3, 3, 3, 3]),
    ("skewed labels with 10 examples, mostly 1s", [1, 1, 1, 1, 1, 0, 2, 3, 3, 1]),
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

    if same([c / n for c in counts]):
        return "those are the label frequencies n_c / N; the weight is the inverse, scaled: N / (4 · n_c)."
    if same([n / c for c in counts]):
        return "almost: divide by the number of classes (4) as well, so balanced labels give weights of 1."
    if same([1 / c for c in counts]):
        return "almost: multiply by N / 4 (N = number of labels), so balanced labels give weights of 1."
    if _close(sum(got), 1.0):
        return "the weights should not be normalised to sum to 1: balanced labels give four weights of 1."
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

    return _run(2, fn, reference_class_weights, test)


# --- 3. LoRA targets -----------------------------------------------------------------------------------

def reference_lora_targets(model: nn.Module) -> list[str]:
    """:func:`reclor_lab.lora.find_lora_targets`."""
    from reclor_lab.lora import find_lora_targets

    return find_lora_targets(model)


def check_lora_targets(fn: Callable[[nn.Module], list[str]], model: nn.Module) -> Callable[[nn.Module], list[str]]:
    """Exercise 3: ``fn(model)`` → sorted unique leaf names of every 4-bit linear layer but ``score``."""
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

    return _run(3, fn, reference_lora_targets, test)


# --- 4. count LoRA parameters -----------------------------------------------------------------------------

def reference_count_lora_params(shapes: Sequence[tuple[int, int]], r: int) -> int:
    """LoRA parameters for layers of ``(out_features, in_features)``: A is r×in and B is out×r.

    The same rule as :func:`reclor_lab.lora.predicted_lora_params`, from shapes alone.

    >>> reference_count_lora_params([(4, 8)], r=2)
    24
    """
    return sum(r * (out_features + in_features) for out_features, in_features in shapes)


#: One Llama-2-7B decoder layer: q, k, v, o (4096×4096), gate and up (11008×4096), down (4096×11008).
_LLAMA2_7B_LAYER = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]
_COUNT_CASES: tuple[tuple[str, list[tuple[int, int]], int], ...] = (
    ("one 4×8 layer, r=2", [(4, 8)], 2),
    ("a 3×5 and a 6×2 layer, r=1", [(3, 5), (6, 2)], 1),
    ("one Llama-2-7B decoder layer (7 projections), r=16", _LLAMA2_7B_LAYER, 16),
    ("all 32 Llama-2-7B decoder layers, r=8", _LLAMA2_7B_LAYER * 32, 8),
)


def _count_hint(got: int, shapes: list[tuple[int, int]], r: int) -> str:
    if got == sum(o * i for o, i in shapes):
        return "that is the size of the full weights W; LoRA trains only A (r×in) and B (out×r)."
    if got == sum(r * o * i for o, i in shapes):
        return "LoRA adds A (r×in) and B (out×r) per layer: r·in + out·r, not r·in·out."
    if got in (sum(r * i for o, i in shapes), sum(r * o for o, i in shapes)):
        return "you counted only one of the two matrices; each layer has A (r×in) and B (out×r)."
    if got == sum(o + i for o, i in shapes):
        return "the rank r is missing: A has r rows, B has r columns."
    return "each layer adds A (r×in) and B (out×r); sum over all the layers."


def check_count_lora_params(fn: Callable[[list[tuple[int, int]], int], int]) -> Callable:
    """Exercise 4: ``fn(shapes, r) -> int`` = Σ r·(in + out) over ``(out, in)`` shapes."""

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

    return _run(4, fn, reference_count_lora_params, test)


# --- 5. weighted cross-entropy ------------------------------------------------------------------------------

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


def _ce_hint(got: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> str:
    per_example = F.cross_entropy(logits, labels, reduction="none")
    w = weights[labels]
    if torch.allclose(got, (w * per_example).sum() / len(labels), rtol=RTOL):
        return ("it divides by the batch size; divide the weighted sum by the sum of the weights of the "
                "batch's labels (as CrossEntropyLoss(weight=w) does).")
    if torch.allclose(got, per_example.mean(), rtol=RTOL):
        return "that is plain cross-entropy: the class weights were not used."
    if torch.allclose(got, (w * per_example).sum(), rtol=RTOL):
        return "that is the weighted sum; divide it by the sum of the weights of the batch's labels."
    return ("expected the mean cross-entropy weighted by each example's label weight: "
            "Σ w[y_i]·CE_i / Σ w[y_i].")


def check_weighted_ce(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    """Exercise 5: ``fn(logits, labels, weights)`` → the scalar loss of ``F.cross_entropy(weight=w)``."""

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
                raise _Fail(f"for {what} it returned {got.item():.4f}: "
                            f"{_ce_hint(got, logits, labels, weights)}")

    return _run(5, fn, reference_weighted_ce, test)


# --- 6. one training step ----------------------------------------------------------------------------------

def reference_train_step(model: nn.Module, batch: dict, optimizer: torch.optim.Optimizer,
                         weights: torch.Tensor | None, max_grad_norm: float = MAX_GRAD_NORM) -> float:
    """Forward, weighted loss, backward, clip the gradient norm to ``max_grad_norm`` (0.3), step,
    zero the gradients.

    The package's loop (:func:`reclor_lab.train.train_step` + :func:`~reclor_lab.train.optimizer_step`)
    with the optimizer's own learning rate; returns the loss before the step.
    """
    from reclor_lab.train import optimizer_step, train_step

    loss = train_step(model, dict(batch), weights, dtype=torch.float32)  # a copy: train_step pops labels
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
    """Exercise 6: ``fn(model, batch, optimizer, weights) -> float`` (its ``max_grad_norm`` left at
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
        """``n`` steps from the saved parameters with a fresh SGD optimizer and seeded dropout."""
        reset()
        optimizer = torch.optim.SGD([p for _, p in trainable], lr=_CHECK_LR)
        losses, params = [], []
        for _ in range(n):
            losses.append(step_fn(model, dict(batch), optimizer, weights))  # a copy: the batch stays whole
            params.append([p.detach().clone() for _, p in trainable])
        return losses, params

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
            raise _Fail("no trainable parameter changed; after loss.backward() call optimizer.step().")
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
    return _run(6, fn, reference_train_step, test)


def _unclipped_step(model: nn.Module, batch: dict, optimizer: torch.optim.Optimizer,
                    weights: torch.Tensor | None) -> float:
    """The reference step without clipping: tells a missing clip apart from other mistakes."""
    from reclor_lab.train import optimizer_step, train_step

    loss = train_step(model, batch, weights, dtype=torch.float32)
    optimizer_step(model, optimizer, lr=optimizer.param_groups[0]["lr"], max_grad_norm=0)
    return loss.item()


def _plain_loss(model: nn.Module, batch: dict) -> float:
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return weighted_cross_entropy(model(**inputs).logits, batch["labels"]).item()


# --- 7. accuracy over batches --------------------------------------------------------------------------

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
    if _close(got, sum(correct) / len(batches)):
        return ("it divides the correct count by the number of BATCHES (the reference notebook's bug); "
                "divide by the number of examples.")
    if _close(got, sum(c / len(ys) for c, (_, ys) in zip(correct, batches)) / len(batches)):
        return ("it averages the per-batch accuracies, which weighs a short last batch as much as a full "
                "one; count correct answers and examples over all batches, then divide once.")
    return "accuracy is (correct predictions over all batches) / (examples over all batches)."


def check_accuracy(fn: Callable[[list[tuple[list[int], list[int]]]], float]) -> Callable:
    """Exercise 7: ``fn(batches) -> float`` = correct over EXAMPLES, with unequal batch sizes."""

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

    return _run(7, fn, reference_accuracy, test)


__all__ = [
    "CHECK_RECORDS",
    "EXERCISES",
    "Fallback",
    "MAX_GRAD_NORM",
    "check_accuracy",
    "check_class_weights",
    "check_count_lora_params",
    "check_format_record",
    "check_lora_targets",
    "check_train_step",
    "check_weighted_ce",
    "reference_accuracy",
    "reference_class_weights",
    "reference_count_lora_params",
    "reference_format_record",
    "reference_lora_targets",
    "reference_train_step",
    "reference_weighted_ce",
    "summary",
]
