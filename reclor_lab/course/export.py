"""The gradebook in the layouts that other tools import: otter-grader, Canvas, Moodle.

``reclor-lab course grade CLASS --csv grades.csv`` writes the kit's own gradebook (``kit``, the
default: :func:`reclor_lab.course.grade.write_gradebook`); ``--export FORMAT`` adds
``grades_FORMAT.csv`` beside it. Each layout is taken from the tool's own code or documentation
(cited in ``tests/test_class_view.py``):

* ``otter``: otter-grader's ``final_grades.csv`` (``otter/grade/utils.py``, ``merge_scores_to_df``,
  otter-grader 7.0): ``file``, one column per question (named ``q1`` …, in otter's order: sorted
  as text), ``total_points_earned``, ``percent_correct`` (a fraction, 4 digits), ``grading_status``
  (``Completed`` or what went wrong); the first row is ``file = points-per-question`` with each
  question's points, the total, ``1`` and ``--``.
* ``canvas``: Canvas's gradebook CSV: ``Student, ID, SIS User ID, SIS Login ID, Section``, then one
  column per assignment; the second row is ``Points Possible``. The assignment columns are one per
  notebook (``--canvas-columns notebook``) or one for the course (``course``). Canvas matches a
  row on ``SIS User ID`` (the roster's ``id``) or ``SIS Login ID`` (its ``email``); a column whose
  name Canvas does not know becomes a new assignment on import.
* ``moodle``: Moodle's CSV grade import: one identity column (``Email address``, mapped to
  ``useremail``, or ``ID number``, mapped to ``useridnumber``) and one grade column (the course
  total in points), every row as wide as the header.

Canvas and Moodle need the roster (``--roster``): a row is matched on an id or an e-mail, not on a
folder name. A submission that is not in the roster has neither, so it cannot be imported; it is
left out of those two files and :func:`write_export` returns its name (the CLI prints it). It
stays in the kit's gradebook and in otter's file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Literal

from reclor_lab.course.checks import EXERCISES
from reclor_lab.course.grade import spreadsheet_safe
from reclor_lab.course.outfiles import write_file
from reclor_lab.course.roster import ClassRow
from reclor_lab.errors import ReclorLabError

Format = Literal["kit", "otter", "canvas", "moodle"]
FORMATS: tuple[str, ...] = ("kit", "otter", "canvas", "moodle")
#: Name of the course's column (Canvas ``--canvas-columns course``, Moodle's grade column).
COURSE_COLUMN = "reclor-lab"
#: otter-grader's constants (otter/grade/utils.py, 7.0).
OTTER_POINTS_LABEL = "points-per-question"
OTTER_FILE, OTTER_TOTAL = "file", "total_points_earned"
OTTER_PERCENT, OTTER_STATUS = "percent_correct", "grading_status"
OTTER_COMPLETED = "Completed"
#: Canvas's gradebook columns before the assignments, and the label of its points row.
CANVAS_IDENTITY = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")
CANVAS_POINTS = "Points Possible"
#: Moodle's names for the two identity columns it can map (its own export's headers).
MOODLE_EMAIL, MOODLE_IDNUMBER = "Email address", "ID number"
#: The kit gradebook's identity columns, added after ``student`` when a roster is given.
KIT_IDENTITY = ("id", "name", "email")


class ExportError(ReclorLabError, ValueError):
    """An export that cannot be written as asked (a roster is needed, identities are missing)."""


def _num(x: float) -> str:
    return f"{x:g}"


def _notebooks() -> list[str]:
    return sorted({nb for nb, _, _ in EXERCISES.values()})


def notebook_column(notebook: str) -> str:
    """Canvas's column for one notebook: ``reclor-lab 01``."""
    return f"{COURSE_COLUMN} {notebook}"


def _question(n: int) -> str:
    return f"q{n}"


def otter_rows(rows: list[ClassRow], points: dict[int, float]) -> list[list[str]]:
    """otter-grader's ``final_grades.csv``: header, the ``points-per-question`` row, one row per student."""
    questions = sorted(_question(n) for n in EXERCISES)  # otter sorts its question columns as text
    number = {_question(n): n for n in EXERCISES}
    possible = sum(points[n] for n in EXERCISES)
    out = [[OTTER_FILE, *questions, OTTER_TOTAL, OTTER_PERCENT, OTTER_STATUS],
           [OTTER_POINTS_LABEL, *[_num(points[number[q]]) for q in questions], _num(possible), "1", "--"]]
    for row in rows:
        got = row.earned(points)
        total = sum(got.values())
        status = OTTER_COMPLETED if row.submitted and not row.result.problems else row.status
        out.append([row.submission, *[_num(got[number[q]]) for q in questions], _num(total),
                    repr(round(total / possible, 4)) if possible else "0", status])
    return out


def _identified(rows: list[ClassRow], fmt: str) -> tuple[list[ClassRow], list[str]]:
    if not any(row.rostered for row in rows):
        raise ExportError(f"--export {fmt} needs --roster: {fmt.capitalize()} matches a grade on a student id or "
                          "e-mail, which only the roster has (see `reclor-lab course grade --help`)")
    kept = [row for row in rows if row.entry is not None]
    return kept, [row.submission for row in rows if row.entry is None]


def canvas_rows(rows: list[ClassRow], points: dict[int, float],
                columns: Literal["notebook", "course"] = "notebook") -> tuple[list[list[str]], list[str]]:
    """Canvas's gradebook CSV and the submissions left out (not in the roster)."""
    kept, left_out = _identified(rows, "canvas")
    if columns == "course":
        groups = {COURSE_COLUMN: sorted(EXERCISES)}
    elif columns == "notebook":
        groups = {notebook_column(nb): [n for n, (nb_, _, _) in sorted(EXERCISES.items()) if nb_ == nb]
                  for nb in _notebooks()}
    else:
        raise ExportError(f"--canvas-columns {columns!r}: choose notebook or course")
    out = [[*CANVAS_IDENTITY, *groups],
           [CANVAS_POINTS, *[""] * (len(CANVAS_IDENTITY) - 1),
            *[_num(sum(points[n] for n in g)) for g in groups.values()]]]
    for row in kept:
        got = row.earned(points)
        out.append([row.name, "", row.entry.id, row.entry.email, "", *[_num(sum(got[n] for n in g))
                                                                       for g in groups.values()]])
    return out, left_out


def moodle_rows(rows: list[ClassRow], points: dict[int, float]) -> tuple[list[list[str]], list[str]]:
    """Moodle's grade import: the identity column every roster student has (``Email address``,
    else ``ID number``) and the course total; the submissions left out (not in the roster)."""
    kept, left_out = _identified(rows, "moodle")
    if all(row.entry.email for row in kept):
        header, key = MOODLE_EMAIL, "email"
    elif all(row.entry.id for row in kept):
        header, key = MOODLE_IDNUMBER, "id"
    else:
        lines = sorted({row.entry.line for row in kept if not row.entry.email})[:3]
        raise ExportError("--export moodle needs an email for every roster student, or an id for every one "
                          f"(Moodle maps one column); e.g. roster line(s) {', '.join(map(str, lines))} have no email")
    out = [[header, COURSE_COLUMN]]
    for row in kept:
        out.append([getattr(row.entry, key), _num(sum(row.earned(points).values()))])
    return out, left_out


def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([[spreadsheet_safe(c) for c in row] for row in rows])
    return buf.getvalue()


def export_path(csv_path: Path, fmt: str) -> Path:
    """Where ``--export FMT`` writes next to ``--csv FILE``: ``FILE_STEM_FMT.csv``."""
    return csv_path.with_name(f"{csv_path.stem}_{fmt}.csv")


def write_export(fmt: str, rows: list[ClassRow], points: dict[int, float], path: Path, overwrite: bool = False,
                 canvas_columns: Literal["notebook", "course"] = "notebook") -> list[str]:
    """Write ``rows`` in layout ``fmt`` (``otter``, ``canvas``, ``moodle``) to ``path``; return the
    submissions left out (not in the roster: Canvas and Moodle only)."""
    if fmt == "otter":
        table, left_out = otter_rows(rows, points), []
    elif fmt == "canvas":
        table, left_out = canvas_rows(rows, points, canvas_columns)
    elif fmt == "moodle":
        table, left_out = moodle_rows(rows, points)
    else:
        raise ExportError(f"--export {fmt!r}: choose one of {', '.join(FORMATS)}")
    write_file(path, _csv_text(table), overwrite=overwrite)
    return left_out


def add_identity(csv_path: Path, rows: list[ClassRow]) -> None:
    """Add the roster to the kit's gradebook that :func:`reclor_lab.course.grade.write_gradebook`
    wrote at ``csv_path``: ``id, name, email`` after ``student``, and each row's status from
    :attr:`ClassRow.status` (``missing: no submission``, ``…; not in the roster``)."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    header = table[0]
    at, status = header.index("student") + 1, header.index("status") if "status" in header else None
    by_name = {row.submission: row for row in rows}
    out = [header[:at] + list(KIT_IDENTITY) + header[at:]]
    for line in table[1:]:
        row = by_name.get(line[at - 1])
        if row is None:  # the POINTS row
            out.append(line[:at] + [""] * len(KIT_IDENTITY) + line[at:])
            continue
        if status is not None:
            line[status] = row.status
        entry = row.entry
        out.append(line[:at] + ([entry.id, entry.name, entry.email] if entry else ["", "", ""]) + line[at:])
    write_file(csv_path, _csv_text(out), overwrite=True)
