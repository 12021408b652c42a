"""The class list: who the submissions belong to, and who handed in nothing.

``reclor-lab course grade CLASS --roster roster.csv`` reads a CSV (UTF-8, a header row, Excel's
byte-order mark allowed) with the columns ``submission,id,name,email``::

    submission,id,name,email
    ana,S1001,Ana Lima,ana@example.edu
    ben,S1002,Ben Okafor,ben@example.edu

``submission`` is what the grader calls the student (the sub-folder's name, or ``STUDENT`` of a
loose ``STUDENT__NN_name.ipynb``); ``id`` (the LMS's student or SIS id) and ``email`` are what an
LMS matches a grade row on, so each row needs at least one of them; ``name`` is for people.

:func:`join` puts the grader's results and the roster side by side: every roster student gets a
row (0 points and ``missing`` when nothing was handed in), and a submission that is not in the
roster keeps its row, marked, so no one's work is dropped.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from reclor_lab.course.grade import StudentResult, status_of
from reclor_lab.errors import ReclorLabError

#: The roster's columns, in the order the examples show them (any order is read).
COLUMNS = ("submission", "id", "name", "email")
#: Enough of an address to catch a shifted column or a typo; the LMS checks the rest.
_EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
#: Status of a roster student with no submission.
NO_SUBMISSION = "missing: no submission"
#: Added to the status of a submission that is not in the roster.
NOT_IN_ROSTER = "not in the roster"


class RosterError(ReclorLabError, ValueError):
    """A roster that cannot be used; the message names the file, the line and what is wrong."""


@dataclass(frozen=True)
class RosterEntry:
    """One student of the roster (``line``: where in the file, for messages)."""

    submission: str
    id: str = ""
    name: str = ""
    email: str = ""
    line: int = 0


@dataclass
class ClassRow:
    """One row of the class: the grader's result and, when a roster was given, its entry.

    ``entry`` is ``None`` for a submission that is not in the roster (or when there is no roster);
    ``submitted`` is ``False`` for a roster student who handed in nothing."""

    result: StudentResult
    entry: RosterEntry | None = None
    submitted: bool = True
    rostered: bool = False  # a roster was given (so a missing entry means "not in the roster")

    @property
    def submission(self) -> str:
        return self.result.student

    @property
    def name(self) -> str:
        return self.entry.name if self.entry and self.entry.name else self.result.student

    @property
    def status(self) -> str:
        """``missing: no submission``, or the grader's status (``graded`` …), marked when the
        submission is not in the roster."""
        if not self.submitted:
            return NO_SUBMISSION
        status = status_of(self.result)
        return f"{status}; {NOT_IN_ROSTER}" if self.rostered and self.entry is None else status

    def earned(self, points: dict[int, float]) -> dict[int, float]:
        """Points per exercise: all of an exercise's points when it passed, else 0."""
        return {n: points[n] if v.passed else 0.0 for n, v in self.result.verdicts.items()}


def _roster_text(path: Path) -> str:
    """The roster file's text (UTF-8, a byte-order mark allowed)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RosterError(f"--roster {path}: no such file") from None
    except IsADirectoryError:
        raise RosterError(f"--roster {path}: is a folder, not a CSV file") from None
    except UnicodeDecodeError as e:
        raise RosterError(f"--roster {path}: not UTF-8 text (byte {e.start}); save it as CSV UTF-8") from None


def _roster_header(path: Path, head_line: int, header: list[str]) -> list[str]:
    """The header's column names (stripped, lower case): known ones, each once, with ``submission``
    and ``id`` or ``email``."""
    header = [h.strip().lower() for h in header]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise RosterError(f"{path} line {head_line}: unknown column(s) {', '.join(map(repr, unknown))}; "
                          f"the columns are {','.join(COLUMNS)} (submission, and id or email, are needed)")
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise RosterError(f"{path} line {head_line}: column {twice[0]!r} is named twice")
    if "submission" not in header or not ({"id", "email"} & set(header)):
        raise RosterError(f"{path} line {head_line}: the header needs `submission` and `id` or `email` "
                          f"(got {','.join(header)}); e.g. {','.join(COLUMNS)}")
    return header


def _roster_entry(path: Path, line: int, row: list[str], header: list[str]) -> RosterEntry:
    """One student's row: as many cells as the header, a ``submission``, an ``id`` or an ``email``,
    and an ``email`` that is an address."""
    if len(row) != len(header):
        raise RosterError(f"{path} line {line}: {len(row)} cell(s), the header has {len(header)} "
                          "(a comma inside a name needs quotes)")
    cells = dict(zip(header, (c.strip() for c in row)))
    entry = RosterEntry(cells["submission"], cells.get("id", ""), cells.get("name", ""),
                        cells.get("email", ""), line)
    if not entry.submission:
        raise RosterError(f"{path} line {line}: `submission` is empty (the student's folder or file name)")
    if not entry.id and not entry.email:
        raise RosterError(f"{path} line {line}: {entry.submission!r} has neither an id nor an email "
                          "(the LMS matches a grade on one of them)")
    if entry.email and not _EMAIL.match(entry.email):
        raise RosterError(f"{path} line {line}: email {entry.email!r} is not an address")
    return entry


def _note_unique(path: Path, entry: RosterEntry, seen: dict[tuple[str, str], int]) -> None:
    """Adds the entry's ``submission``, ``id`` and ``email`` to ``seen`` (value: the line), failing
    on one already there (an email in any case)."""
    line = entry.line
    for column in ("submission", "id", "email"):
        value = getattr(entry, column)
        key = (column, value.lower() if column == "email" else value)
        if value and key in seen:
            raise RosterError(f"{path} line {line}: {column} {value!r} is already on line {seen[key]}")
        seen[key] = line


def read_roster(path: str | Path) -> list[RosterEntry]:
    """The roster's students, in file order. Raises :class:`RosterError` (one line: the file, the
    line number and what is wrong) for a missing file, text that is not UTF-8, a header without
    ``submission`` or without ``id``/``email``, an unknown column, a row with the wrong number of
    cells, an empty ``submission``, a row with neither ``id`` nor ``email``, an ``email`` that is
    not an address, or a ``submission``, ``id`` or ``email`` given twice."""
    path = Path(path)
    text = _roster_text(path)
    rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text)), start=1) if any(c.strip() for c in row)]
    if not rows:
        raise RosterError(f"{path}: empty; the first line must be the header {','.join(COLUMNS)}")
    header = _roster_header(path, *rows[0])
    entries: list[RosterEntry] = []
    seen: dict[tuple[str, str], int] = {}
    for line, row in rows[1:]:
        entry = _roster_entry(path, line, row, header)
        _note_unique(path, entry, seen)
        entries.append(entry)
    if not entries:
        raise RosterError(f"{path}: no students, only the header")
    return entries


def join(results: list[StudentResult], roster: list[RosterEntry] | None) -> list[ClassRow]:
    """One :class:`ClassRow` per roster student, in roster order (an empty result, every exercise
    ``missing``, when nothing was handed in), then each submission that is not in the roster, in
    the grader's order. Without a roster: one row per result."""
    if roster is None:
        return [ClassRow(r) for r in results]
    by_name = {r.student: r for r in results}
    rows = []
    for entry in roster:
        result = by_name.pop(entry.submission, None)
        rows.append(ClassRow(result or StudentResult(entry.submission), entry, result is not None, rostered=True))
    rows += [ClassRow(r, None, True, rostered=True) for r in by_name.values()]
    return rows
