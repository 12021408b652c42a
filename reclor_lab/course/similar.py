"""Copied work: pairs of students whose code for an exercise is the same once names, literals and
formatting are set aside.

For each exercise, each student's code as judged (``Verdict.code``, else read again from the
notebook with :mod:`reclor_lab.course.judge`: static, nothing runs) becomes a token sequence
(:func:`tokens`): the ``ast`` walked in order, every name the student chose replaced by its order
of first use (``v0``, ``v1`` …), every literal by its type, docstrings, type hints, imports and the
other exercises' functions left out; library names (``torch``, ``.argmax``, ``dim=``) and the
shape of the code kept. Two students' sequences are compared as sets of :data:`K`-token windows
(Jaccard index, :func:`similarity`); a pair at or above :data:`THRESHOLD` is listed.

**Calibration** (``tests/test_class_view.py``, on :mod:`reclor_lab.tools.honest`'s independent
solutions): honest students who make their own choices score below :data:`THRESHOLD`; renamed
and reformatted copies score 1.0. Exercises whose honest solutions are too short to tell apart
(two students who never met often write the same tokens) are in :data:`TOO_SHORT`, with the
reason; they are not compared. A stub (⏳) and a missing exercise are not compared either.

What it does not find: a copy whose logic was rewritten (statements reordered, a loop made a
comprehension, code added), code shared before it was typed, or copying on the short exercises.
A listed pair is a reason to read both notebooks, not a verdict.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from reclor_lab.course import judge
from reclor_lab.course.checks import EXERCISES
from reclor_lab.course.grade import MISSING, TODO, StudentResult

#: Window length in tokens: long enough that two solutions share a window only where they share
#: a piece of logic, short enough that a one-line difference spoils few windows.
K = 6
#: A pair at or above this Jaccard index of windows is listed (calibrated: see the module docstring).
THRESHOLD = 0.9
#: An exercise is compared only where two independent honest solutions reach :data:`THRESHOLD`
#: less often than this (in a class of 30, 435 pairs: under 0.5 false pairs expected per exercise).
MAX_CHANCE = 1e-3
#: Draws per exercise and seed of the calibration (:func:`calibrate`).
CALIBRATION_DRAWS, CALIBRATION_SEED = 300, 0
#: Exercises not compared, and why: :func:`calibrate` on :mod:`reclor_lab.tools.honest` (300
#: independent honest solutions each, 44 850 pairs; the share of pairs at or above the threshold in
#: brackets). ``tests/test_class_view.py`` checks that this list is what the calibration gives.
TOO_SHORT: dict[int, str] = {
    1: "one f-string or join: a handful of ways to write it (honest pairs alike: 17 %)",
    2: "a count and a comprehension (honest pairs alike: 2 %)",
    3: "one or two tensor lines (honest pairs alike: 20 %)",
    5: "one loop over named_modules (honest pairs alike: 4 %)",
    6: "one line (honest pairs alike: 25 %)",
    7: "one line (honest pairs alike: 25 %)",
    9: "three tensor lines (honest pairs alike: 25 %)",
    10: "the steps are prescribed (forward, loss, backward, clip, step, zero_grad; honest pairs alike: 5 %)",
    11: "one or two lines (honest pairs alike: 25 %)",
    12: "the steps are prescribed (eval, no_grad, loop, loss, accuracy; honest pairs alike: 7 %)",
    13: "a short rule: sweeping openers, then word overlap (honest pairs alike: 0.3 %)",
    14: "the parts are prescribed (frozen base, A, B, dropout, scale, one forward line; honest pairs alike: 0.9 %)",
    15: "the calls are prescribed (BitsAndBytesConfig, from_pretrained, LoraConfig, get_peft_model; honest pairs "
        "alike: 0.15 %)",
    16: "the steps are prescribed (train mode, then per batch forward, loss, backward, lr, clip, step, zero_grad; "
        "honest pairs alike: 7 %)",
}
#: Name of the kit's own solution in the pairs (a student whose code is the kit's solved notebook's).
KIT = "(kit solution)"
_BUILTINS = frozenset(dir(builtins))
_FUNCTIONS = {name for _, _, name in EXERCISES.values()}


@dataclass
class Pair:
    """Two students' code for one exercise, at or above :data:`THRESHOLD`."""

    number: int
    a: str
    b: str
    score: float
    code_a: str = field(repr=False, default="")
    code_b: str = field(repr=False, default="")


@dataclass
class Similarity:
    """The pairs found (highest first), the exercises left out and why, and how many codes each
    exercise compared."""

    pairs: list[Pair]
    skipped: dict[int, str]
    compared: dict[int, int]


class _Tokens(ast.NodeVisitor):
    def __init__(self, modules: dict[str, str]):
        self.out: list[str] = []
        self.names: dict[str, str] = {}
        self.modules = modules  # a student's alias → the module it stands for

    def name(self, ident: str) -> str:
        if ident in self.modules:
            return self.modules[ident]
        if ident in _BUILTINS:
            return ident
        return self.names.setdefault(ident, f"v{len(self.names)}")

    def generic_visit(self, node: ast.AST) -> None:
        if isinstance(node, (ast.expr_context,)):
            return
        self.out.append(type(node).__name__)
        super().generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        self.out.append(self.name(node.id))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.visit(node.value)
        self.out.append("." + node.attr)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        self.out.append(type(value).__name__ if isinstance(value, (int, float, complex, str, bytes))
                        and not isinstance(value, bool) else repr(value))

    def visit_keyword(self, node: ast.keyword) -> None:
        self.out.append(f"{node.arg}=")
        self.visit(node.value)

    def visit_arg(self, node: ast.arg) -> None:  # the annotation is left out
        self.out.append(self.name(node.arg))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.out.append("def " + self.name(node.name))
        for d in node.decorator_list:
            self.visit(d)
        self.visit(node.args)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]  # the docstring
        for st in body:
            self.visit(st)
        self.out.append("end")

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.out.append("Assign")
            self.visit(node.target)
            self.visit(node.value)

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a bare string: a comment in disguise
        self.generic_visit(node)


def tokens(source: str, name: str) -> list[str]:
    """The token sequence of the code for exercise ``name`` (its function's name): imports, the
    other exercises' functions, docstrings and type hints left out; the student's names numbered
    by first use; literals replaced by their type. ``[]`` for code that does not parse.

    >>> tokens("def f(a):\\n    '''doc'''\\n    return a + 1", "f") == tokens("def g(x): return x+2", "g")
    True
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    modules: dict[str, str] = {}
    body = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                            for a in node.names})
        elif isinstance(node, ast.ImportFrom):
            modules.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in _FUNCTIONS - {name}:
            continue
        else:
            body.append(node)
    visitor = _Tokens(modules)
    for node in sorted(body, key=lambda n: isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                       and n.name == name):  # the exercise's own def last, helpers first, as judged
        visitor.visit(node)
    return visitor.out


def windows(seq: list[str], k: int = K) -> frozenset[int]:
    """The set of ``k``-token windows of ``seq`` (hashed); a sequence shorter than ``k`` is one window."""
    if len(seq) < k:
        return frozenset({hash(tuple(seq))}) if seq else frozenset()
    return frozenset(hash(tuple(seq[i:i + k])) for i in range(len(seq) - k + 1))


def similarity(a: frozenset[int], b: frozenset[int]) -> float:
    """Jaccard index of two window sets (1.0: the same code once normalised)."""
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def exercise_codes(result: StudentResult) -> dict[int, str]:
    """Exercise → the code judged for it, for the exercises the student attempted (not ⏳, not
    missing): ``Verdict.code`` where the grader filled it, else the same extraction from the
    notebook file (:func:`reclor_lab.course.judge.exercise_code`; static, nothing runs)."""
    found: dict[int, str] = {}
    for nb in result.notebooks:
        parsed = None
        for n, v in nb.verdicts.items():
            if v.status in (TODO, MISSING):
                continue
            if v.code:
                found[n] = v.code
                continue
            if parsed is None:
                try:
                    parsed = judge.read_notebook(Path(nb.path))
                except (OSError, ValueError):
                    parsed = False
            if parsed:
                code = judge.exercise_code(parsed, EXERCISES[n][2])
                if code.source:
                    found[n] = code.source
    return found


def kit_codes(notebooks: Path | None = None) -> dict[int, str]:
    """The kit's own solutions (its solved notebooks), so that a copy of them is listed too."""
    from reclor_lab.config import REPO_ROOT

    folder = notebooks or REPO_ROOT / "notebooks"
    found: dict[int, str] = {}
    for n, (notebook, _, name) in EXERCISES.items():
        for path in sorted(folder.glob(f"{notebook}_*.ipynb"))[:1]:
            try:
                code = judge.exercise_code(judge.read_notebook(path), name)
            except (OSError, ValueError):
                continue
            if code.source:
                found[n] = code.source
    return found


def find_pairs(codes: dict[str, dict[int, str]], threshold: float = THRESHOLD,
               too_short: dict[int, str] | None = None) -> Similarity:
    """Pairs of students (``codes``: student → exercise → code) at or above ``threshold`` on an
    exercise, highest first; the exercises in ``too_short`` (default :data:`TOO_SHORT`) skipped."""
    too_short = TOO_SHORT if too_short is None else too_short
    pairs: list[Pair] = []
    compared: dict[int, int] = {}
    for n, (_, _, name) in sorted(EXERCISES.items()):
        if n in too_short:
            continue
        prints = {s: windows(tokens(c[n], name)) for s, c in codes.items() if n in c}
        prints = {s: w for s, w in prints.items() if w}
        compared[n] = len(prints)
        for a, b in combinations(sorted(prints), 2):
            score = similarity(prints[a], prints[b])
            if score >= threshold:
                pairs.append(Pair(n, a, b, round(score, 3), codes[a][n], codes[b][n]))
    pairs.sort(key=lambda p: (-p.score, p.number, p.a, p.b))
    return Similarity(pairs, dict(too_short), compared)


def similar_pairs(results: list[StudentResult], threshold: float = THRESHOLD, with_kit: bool = True) -> Similarity:
    """:func:`find_pairs` over a graded class (and the kit's own solutions, as :data:`KIT`)."""
    codes = {r.student: exercise_codes(r) for r in results}
    if with_kit:
        codes[KIT] = kit_codes()
    return find_pairs(codes, threshold)


def calibrate(draws: int = CALIBRATION_DRAWS, threshold: float = THRESHOLD,
              seed: int = CALIBRATION_SEED) -> dict[int, float]:
    """Exercise → the share of pairs of independent honest solutions
    (:func:`reclor_lab.tools.honest.solution`, ``draws`` each) at or above ``threshold``: how often
    two students who never met would be listed. :data:`TOO_SHORT` holds those above :data:`MAX_CHANCE`."""
    import random

    from reclor_lab.tools import honest

    chance: dict[int, float] = {}
    for n, (_, _, name) in sorted(EXERCISES.items()):
        rng = random.Random(f"{seed}:{name}")
        prints = [windows(tokens(honest.solution(name, rng), name)) for _ in range(draws)]
        pairs = list(combinations(prints, 2))
        chance[n] = sum(similarity(a, b) >= threshold for a, b in pairs) / len(pairs)
    return chance
