"""What every check shares: the exercise table, the verdict line, the stand-in for an unsolved
exercise, the grader's hook (:func:`build_test`) and the re-check of a notebook (:func:`summary`)."""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable

import torch


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
    14: ("03", "a LoRALinear module", "LoRALinear"),
    15: ("03", "the QLoRA configuration", "qlora_model"),
    16: ("04", "one epoch of training", "train_epoch"),
}
#: An exercise's number from the name of its function.
NUMBER: dict[str, int] = {name: n for n, (_, _, name) in EXERCISES.items()}

# What computes an exercise's answer in the package (and bitsandbytes, peft) is listed once, qualified,
# as each exercise's `giveaways` in reclor_lab/course/grading/exercises.py: the grader's list is the
# truth (inside the sandbox each one raises while its exercise runs). A student notebook must not use
# them above an exercise's check; tests/test_course.py derives the short names it scans the student
# notebooks for from that list. Nothing here repeats it: notebooks never import course.grading (it is
# an empty folder inside the sandbox), and a second list would drift from the first.

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
