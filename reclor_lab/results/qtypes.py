"""ReClor's 17 question (reasoning) types, and a rule-based classifier of question stems.

The official ReClor test file carries an integer ``question_type`` (0–16, in the order of
:data:`QUESTION_TYPES`); train.json and val.json carry none. :func:`classify_question` infers the
type from the question stem with ordered rules on its wording ("most seriously weakens" →
Weaken, "an assumption on which … depends" → Necessary Assumptions), and :func:`record_type`
uses the official field whenever a record has it. Where a file has both, :func:`agreement`
measures how often the rules agree with it: the number to look at when the official test file
is at hand.

>>> QUESTION_TYPES[classify_question("Which one of the following, if true, most seriously weakens the argument?")]
'Weaken'
>>> QUESTION_TYPES[classify_question("The argument depends on which one of the following assumptions?")]
'Necessary Assumptions'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: ReClor's 17 question types, in the order of the integer ``question_type`` of its test split.
QUESTION_TYPES: tuple[str, ...] = (
    "Necessary Assumptions", "Sufficient Assumptions", "Strengthen", "Weaken", "Evaluation",
    "Implication", "Conclusion/Main Point", "Most Strongly Supported", "Explain or Resolve",
    "Principle", "Dispute", "Technique", "Role", "Identify a Flaw", "Match Flaws",
    "Match Structures", "Others",
)
TYPE_INDEX = {name: i for i, name in enumerate(QUESTION_TYPES)}
#: The type of a stem no rule recognises.
OTHERS = TYPE_INDEX["Others"]

# Ordered rules: the first type whose pattern matches the (lower-cased) stem wins. The order
# settles the overlaps: "flawed reasoning most similar to" is Match Flaws before it is a flaw or a
# parallel; "principle … justifies" is Principle before Strengthen; "if assumed … properly drawn"
# is Sufficient before Necessary; "casts doubt on X's conclusion" is Weaken before Conclusion;
# "the statements above … support" is Most Strongly Supported, "… supports the argument" is
# Strengthen.
_PARALLEL = r"(similar|parallel|analogous|most like|closely resembles|same (pattern|logical feature))"
RULES: tuple[tuple[str, str], ...] = (
    ("Match Flaws", rf"(flaw|faulty|erroneous|questionable).*{_PARALLEL}"
                    rf"|{_PARALLEL}.*(flaw|faulty|erroneous|questionable)"),
    ("Match Structures", rf"{_PARALLEL}.*(reasoning|argument|pattern|structure)"
                         rf"|(reasoning|argument|pattern|structure).*{_PARALLEL}"),
    ("Identify a Flaw", r"flaw|vulnerable to (criticism|the (objection|criticism))|error (of|in) reasoning"
                        r"|reasoning is (questionable|faulty)|questionable because"),
    ("Dispute", r"disagree|point at issue|at issue (between|in)|in dispute|dispute (over|about|whether)"),
    ("Role", r"\broles?\b|function(s)? in the argument|figures in the argument|serves? (in|to) the argument"),
    ("Technique", r"technique|method of (argument|reasoning|argumentation)|proceeds by|argues by"
                  r"|strateg(y|ies)|(responds?|replies|response).* by\b|does which one of the following"),
    ("Principle", r"principle|proposition"),
    ("Sufficient Assumptions", r"if assumed|(enables?|allows?) the conclusion.*to be (properly|logically) "
                               r"(drawn|inferred)|follows logically if|properly (drawn|inferred) if"
                               r"|assumption that would allow"),
    ("Necessary Assumptions", r"assum|presuppos|relies on|depends on"),
    ("Explain or Resolve", r"explain|resolve|reconcile|discrepancy|paradox|account for"),
    ("Evaluation", r"evaluat|assess(ing)? the (argument|claim|reasoning)|useful to (know|determine|establish)"
                   r"|helpful (in|to) (determining|assess|know)|relevant to (assessing|determining)"),
    ("Weaken", r"weaken|undermine|cast(s)? (the )?(most )?(serious )?doubt|call(s)? into question|counter|challenge"
               r"|argues? against|most damaging"),
    ("Most Strongly Supported", r"(most|best) (strongly )?supported"
                                r"|(statements|information|passage|above)\b.*support(s)? which"),
    ("Strengthen", r"strengthen|support|justify|bolster"),
    ("Conclusion/Main Point", r"main (point|conclusion)|conclusion (drawn|of the argument|that the argument)"
                              r"|overall conclusion|expresses the conclusion|states the conclusion"),
    ("Implication", r"must (also )?be (true|false)|(properly|logically) (be )?(inferred|concluded)"
                    r"|can be (properly )?(inferred|concluded)|follows logically from|logically follows"
                    r"|could be true except|cannot be true"),
)
_COMPILED = tuple((TYPE_INDEX[name], re.compile(pattern)) for name, pattern in RULES)


def classify_question(stem: str) -> int:
    """The question type (an index into :data:`QUESTION_TYPES`) of a question stem, by the first
    rule of :data:`RULES` that matches; :data:`OTHERS` when none does.

    >>> QUESTION_TYPES[classify_question("The main point of the argument is that")]
    'Conclusion/Main Point'
    >>> QUESTION_TYPES[classify_question("Which one of the following most logically completes the passage?")]
    'Others'
    """
    text = " ".join(stem.lower().split())
    for index, pattern in _COMPILED:
        if pattern.search(text):
            return index
    return OTHERS


def official_type(record: dict) -> int | None:
    """The record's official ``question_type`` (0–16), or None when the record has none."""
    value = record.get("question_type")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < len(QUESTION_TYPES):
        raise ValueError(f"record {record.get('id_string')!r}: question_type must be 0-{len(QUESTION_TYPES) - 1}, "
                         f"got {value!r}")
    return value


def record_type(record: dict) -> int:
    """The official type where the record has one, else the one inferred from its stem."""
    official = official_type(record)
    return classify_question(record["question"]) if official is None else official


@dataclass(frozen=True)
class Agreement:
    """How often the inferred type equals the official one, per official type and overall."""

    per_type: dict[int, tuple[int, int]]  # official type -> (agreeing, records)
    agreeing: int
    total: int

    @property
    def rate(self) -> float:
        return self.agreeing / self.total if self.total else float("nan")

    def table(self) -> str:
        lines = [f"{'official type':<26}{'records':>8}{'agree':>8}{'rate':>8}"]
        for t, (a, n) in sorted(self.per_type.items()):
            lines.append(f"{t:>2} {QUESTION_TYPES[t]:<23}{n:>8}{a:>8}{a / n:>8.1%}")
        lines.append(f"{'overall':<26}{self.total:>8}{self.agreeing:>8}{self.rate:>8.1%}")
        return "\n".join(lines)


def agreement(records: list[dict]) -> Agreement | None:
    """Inferred vs official type over the records that have an official type (None if none has).

    >>> a = agreement([{"question": "Which one of the following most strengthens the argument?",
    ...                 "question_type": 2, "id_string": "x"}])
    >>> a.rate, a.per_type
    (1.0, {2: (1, 1)})
    """
    per: dict[int, list[int]] = {}
    for r in records:
        official = official_type(r)
        if official is None:
            continue
        counts = per.setdefault(official, [0, 0])
        counts[0] += classify_question(r["question"]) == official
        counts[1] += 1
    if not per:
        return None
    return Agreement({t: (a, n) for t, (a, n) in per.items()},
                     sum(a for a, _ in per.values()), sum(n for _, n in per.values()))
