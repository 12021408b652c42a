"""What each student reads after grading: a Markdown file per student.

``reclor-lab course grade CLASS --feedback DIR`` writes ``DIR/STUDENT.md``: the points, then one
line per exercise with its verdict, the check's hint (the same line the notebook prints on the
check's own cases) and, where the exercise passed the check's cases but not the hidden ones, which
hidden case failed (``Verdict.hidden``: what the case was, never its expected value). Nothing in
it comes from the references: the grader's reasons name what went wrong, not the answer.
The class report (:mod:`reclor_lab.course.report`) shows the same lines in each student's row.
"""

from __future__ import annotations

import re
from pathlib import Path

from reclor_lab.course.checks import EXERCISES
from reclor_lab.course.grade import FAIL, LIMIT, MISSING, PASS, TODO
from reclor_lab.course.outfiles import OutputError, check_free, safe_name, write_file
from reclor_lab.course.roster import ClassRow

#: How each status reads in a student's file.
WORDS = {PASS: "passed", FAIL: "not yet", TODO: "not started", MISSING: "missing", LIMIT: "stopped by a limit"}
_PREFIX = re.compile(r"^(?:✅|❌|⏳) Exercise \d+ \([^)]*\): ")


def hint(reason: str) -> str:
    """The reason without the verdict's own head (``❌ Exercise 4 (NF4 on one block): ``)."""
    return _PREFIX.sub("", reason or "").strip()


def exercise_lines(row: ClassRow, points: dict[int, float]) -> list[tuple[int, str, str, str, str]]:
    """Per exercise: ``(number, status, points text, hint, hidden case)``."""
    got = row.earned(points)
    out = []
    for n, v in row.result.verdicts.items():
        text = "" if v.passed else hint(v.reason)
        out.append((n, v.status, f"{got[n]:g}/{points[n]:g}", text, v.hidden))
    return out


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _notebook_lines(row: ClassRow) -> list[str]:
    """One bullet per notebook found for the student (with its problem, if any), then a blank line."""
    lines = []
    for nb in row.result.notebooks:
        lines.append(f"- `{Path(nb.path).name}` (notebook {nb.notebook or '?'})"
                     + (f": {_cell(nb.problem)}" if nb.problem else ""))
    if row.result.notebooks:
        lines.append("")
    return lines


def _exercise_row(n: int, status: str, pts: str, text: str, hidden: str) -> str:
    """The table row of one exercise: its mark, name, points and what to look at."""
    mark = status if status in (PASS, FAIL, TODO) else "–"
    look = text or ("" if status == PASS else WORDS.get(status, status))
    if hidden:
        look = (look if not look or look[-1] in ".!?" else look + ".") + f" The hidden case that failed: {hidden}."
    return f"| {mark} | {n}. {_cell(EXERCISES[n][1])} | {pts} | {_cell(look)} |"


def feedback_markdown(row: ClassRow, points: dict[int, float]) -> str:
    """The Markdown a student gets (see the module docstring)."""
    total, possible = sum(row.earned(points).values()), sum(points.values())
    who = row.entry.name if row.entry and row.entry.name else row.submission
    lines = [f"# Feedback: {_cell(who)}", "", f"**{total:g} of {possible:g} points** "
             f"({100 * total / possible:.0f} %)" if possible else "", ""]
    if not row.submitted:
        lines += ["No notebook of yours was found among the submissions. If you handed one in, tell your "
                  "instructor the file name you used.", ""]
    lines += _notebook_lines(row)
    lines += ["| | exercise | points | what to look at |", "|---|---|---|---|"]
    lines += [_exercise_row(*line) for line in exercise_lines(row, points)]
    lines += ["", "✅ passed · ❌ not yet (the hint says what to look at) · ⏳ not started · – missing or stopped "
              "by a limit. Hidden cases are drawn when grading; their answers are not shown.", ""]
    return "\n".join(lines)


def write_feedback(rows: list[ClassRow], points: dict[int, float], folder: Path, overwrite: bool = False) -> list[Path]:
    """``folder/STUDENT.md`` for every row; raises :class:`OutputError` before writing anything when
    one of them exists (without ``overwrite``) or is a symbolic link, or ``folder`` is one."""
    folder = Path(folder)
    if folder.is_symlink():
        raise OutputError(f"{folder} is a symbolic link; nothing is written through one (choose a real folder)")
    paths = [folder / f"{safe_name(row.submission)}.md" for row in rows]
    twice = {p.name for p in paths if paths.count(p) > 1}
    if twice:
        raise OutputError(f"two students would share the feedback file {sorted(twice)[0]}; rename one submission")
    for path in paths:
        check_free(path, overwrite)
    return [write_file(path, feedback_markdown(row, points), overwrite=overwrite) for row, path in zip(rows, paths)]
