"""The checks of notebook 06 (baselines and errors)."""

from __future__ import annotations

import operator
from typing import Callable

import torch

from reclor_lab.config import NUM_LABELS, OPTION_LETTERS
from reclor_lab.course.checks.common import NUMBER, _Fail, _run

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
