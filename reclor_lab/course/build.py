"""Course mode: the student notebooks, generated from the reference ones.

A reference notebook (``notebooks/NN_name.py``, jupytext percent format) marks the solution of
each exercise inside the exercise function::

    def format_record(record: dict) -> str:
        \"\"\"Exercise 1: ...\"\"\"
        # BEGIN SOLUTION: unpack the four answers, then one f-string
        a, b, c, d = record["answers"]
        return ...
        # END SOLUTION

:func:`build_student_notebooks` replaces each region, markers included, by a stub at the same
indentation, and keeps everything else::

        # TODO: unpack the four answers, then one f-string
        raise NotImplementedError("Exercise 1: write `format_record`")

The hint is the text after ``# BEGIN SOLUTION:``, or a generic one. The exercise number is taken
from the function's docstring (``Exercise N``), else counted across the notebooks in order.
Each student notebook is written twice, as a pair: ``NN_name.py`` (percent format) and
``NN_name.ipynb`` without outputs, kernel ``reclor-lab``. The output depends only on the
reference sources: no timestamps, fixed cell ids, so building twice gives identical bytes and
``check_up_to_date`` can compare a fresh build with the committed set.

>>> build_student_notebooks("notebooks", "notebooks/student")       # doctest: +SKIP
[PosixPath('notebooks/student/01_data_and_tokenization.py'), ...]
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reclor_lab.errors import ReclorLabError

#: Reference notebooks: two-digit prefix, jupytext percent sources.
SOURCE_GLOB = "[0-9][0-9]_*.py"
#: The Jupyter kernel the student notebooks run in (``make install`` registers it).
KERNELSPEC = {"display_name": "reclor-lab (Python 3)", "language": "python", "name": "reclor-lab"}
#: The student pair: the notebook and its percent-format twin (jupytext keeps them in sync).
JUPYTEXT_FORMATS = "ipynb,py:percent"
GENERIC_HINT = "write the body of `{name}` (its docstring says what it returns)"

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)#\s*BEGIN SOLUTION\b(?:\s*:\s*(?P<hint>.*?))?\s*$")
_END = re.compile(r"^(?P<indent>[ \t]*)#\s*END SOLUTION\b\s*$")
_CELL = re.compile(r"^# %%(?P<rest>.*)$")
_DEF = re.compile(r"^(?P<indent>[ \t]*)(?:async\s+)?def\s+(?P<name>\w+)")
_EXERCISE = re.compile(r"\bExercise\s+(?P<n>\d+)\b")
_STUB_TODO = re.compile(r"^[ \t]*# TODO: ")
_STUB_RAISE = re.compile(r'^[ \t]*raise NotImplementedError\("Exercise \d+')


class CourseError(ReclorLabError, ValueError):
    """A reference notebook the student set cannot be built from; the message names file and line."""


@dataclass(frozen=True)
class Region:
    """One solution region of a reference source (1-based line numbers, markers included)."""

    begin: int
    end: int
    indent: str
    hint: str
    function: str
    exercise: int


# --- parsing ----------------------------------------------------------------------------------

def find_regions(text: str, path: str | Path = "<source>", first_exercise: int = 1) -> list[Region]:
    """Every solution region of a percent-format source, checked.

    Markers count only in code cells (a markdown cell may mention them). Raises one
    :class:`CourseError` naming the file and line for: a BEGIN inside an open region, an END
    without a BEGIN, a BEGIN never closed (also at a cell boundary), or a region outside a
    function body (its ``raise`` would stop the student's notebook).
    """
    lines = text.splitlines()
    regions: list[Region] = []
    open_at: int | None = None
    in_markdown = False
    for i, line in enumerate(lines, start=1):
        cell = _CELL.match(line)
        if cell:
            if open_at is not None:
                raise CourseError(f"{path}:{open_at}: `# BEGIN SOLUTION` is not closed before the next "
                                  f"cell (line {i}); add `# END SOLUTION` at the end of the solution")
            in_markdown = "[markdown]" in cell.group("rest") or "[md]" in cell.group("rest")
            continue
        if in_markdown:
            continue
        if _BEGIN.match(line):
            if open_at is not None:
                raise CourseError(f"{path}:{i}: `# BEGIN SOLUTION` inside the region opened at line "
                                  f"{open_at}; close that one with `# END SOLUTION` first")
            open_at = i
        elif _END.match(line):
            if open_at is None:
                raise CourseError(f"{path}:{i}: `# END SOLUTION` without a `# BEGIN SOLUTION` before it")
            regions.append(_region(lines, open_at, i, path, first_exercise + len(regions)))
            open_at = None
    if open_at is not None:
        raise CourseError(f"{path}:{open_at}: `# BEGIN SOLUTION` is never closed; add `# END SOLUTION`")
    return regions


def _region(lines: list[str], begin: int, end: int, path: str | Path, counted: int) -> Region:
    m = _BEGIN.match(lines[begin - 1])
    indent = m.group("indent")
    # The enclosing function: the nearest `def` above, indented less than the marker.
    for j in range(begin - 2, -1, -1):
        d = _DEF.match(lines[j])
        if d and len(d.group("indent").expandtabs()) < len(indent.expandtabs()):
            function, def_line = d.group("name"), j
            break
    else:
        raise CourseError(f"{path}:{begin}: the solution region is not inside a function; an exercise is "
                          "a function whose body holds the solution (a stub at top level would stop the "
                          "student's notebook)")
    found = _EXERCISE.search("\n".join(lines[def_line:begin - 1]))
    exercise = int(found.group("n")) if found else counted
    hint = m.group("hint") or GENERIC_HINT.format(name=function)
    return Region(begin=begin, end=end, indent=indent, hint=hint, function=function, exercise=exercise)


def stub_lines(region: Region) -> list[str]:
    """The two lines that replace a solution region."""
    message = json.dumps(f"Exercise {region.exercise}: write `{region.function}`", ensure_ascii=False)
    return [f"{region.indent}# TODO: {region.hint}", f"{region.indent}raise NotImplementedError({message})"]


def student_source(text: str, path: str | Path = "<source>", first_exercise: int = 1) -> tuple[str, list[Region]]:
    """The reference source with every solution region replaced by its stub, and the regions."""
    regions = find_regions(text, path, first_exercise)
    lines = text.splitlines()
    out: list[str] = []
    last = 0
    for r in regions:
        out += lines[last:r.begin - 1] + stub_lines(r)
        last = r.end
    out += lines[last:]
    return "\n".join(out) + "\n", regions


def put_back_solutions(student_text: str, reference_text: str) -> str:
    """The student source with each stub replaced by the reference's solution (markers included).

    The inverse of :func:`student_source`, for tests and for instructors comparing a student's
    copy with the reference. Stubs and regions are matched in order.
    """
    ref_lines = reference_text.splitlines()
    bodies = [ref_lines[r.begin - 1:r.end] for r in find_regions(reference_text)]
    lines = student_text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and _STUB_TODO.match(lines[i]) and _STUB_RAISE.match(lines[i + 1]):
            if not bodies:
                raise CourseError("the student source has more stubs than the reference has solutions")
            out += bodies.pop(0)
            i += 2
        else:
            out.append(lines[i])
            i += 1
    if bodies:
        raise CourseError(f"the reference has {len(bodies)} more solution(s) than the student source has stubs")
    return "\n".join(out) + "\n"


# --- notebooks -----------------------------------------------------------------------------------

#: The last two cells of a student notebook that has exercises: where the student stands.
SUMMARY_MARKDOWN = ("## Your exercises\n\nEach exercise of this notebook, judged again on your functions as "
                    "they stand now (✅ done, ❌ not yet right, ⏳ not started).")
SUMMARY_CODE = "checks.summary()"


def _student_notebook(text: str, with_summary: bool = False):  # -> nbformat.NotebookNode
    """The percent-format source as a notebook without outputs, fixed metadata and cell ids; with
    ``with_summary``, ending in the exercises' summary (:data:`SUMMARY_CODE`)."""
    import jupytext
    import nbformat

    nb = jupytext.reads(text, fmt="py:percent")
    if with_summary:
        nb.cells += [nbformat.v4.new_markdown_cell(SUMMARY_MARKDOWN), nbformat.v4.new_code_cell(SUMMARY_CODE)]
    nb.metadata = {"jupytext": {"formats": JUPYTEXT_FORMATS}, "kernelspec": dict(KERNELSPEC),
                   "language_info": {"name": "python"}}
    for k, cell in enumerate(nb.cells):
        cell.id = f"cell-{k:03d}"  # jupytext draws random ids; fixed ones keep builds identical
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def render_student(text: str, path: str | Path = "<source>", first_exercise: int = 1) -> tuple[str, str, list[Region]]:
    """One reference source → (student ``.py``, student ``.ipynb``, its regions), as text."""
    import jupytext
    import nbformat

    source, regions = student_source(text, path, first_exercise)
    nb = _student_notebook(source, with_summary=bool(regions))
    py = jupytext.writes(nb, fmt="py:percent")
    ipynb = nbformat.writes(nb)
    return py if py.endswith("\n") else py + "\n", ipynb + "\n", regions


def reference_sources(src_dir: str | Path) -> list[Path]:
    """The reference notebooks' ``.py`` sources in course order."""
    return sorted(Path(src_dir).glob(SOURCE_GLOB))


def render_all(src_dir: str | Path) -> dict[str, str]:
    """File name → content of the whole student set (not written)."""
    sources = reference_sources(src_dir)
    if not sources:
        raise CourseError(f"{src_dir}: no reference notebooks ({SOURCE_GLOB}) found")
    files: dict[str, str] = {}
    counted = 1
    for path in sources:
        py, ipynb, regions = render_student(path.read_text(encoding="utf-8"), path, counted)
        counted += len(regions)
        files[path.name] = py
        files[path.with_suffix(".ipynb").name] = ipynb
    return files


def _generated(out_dir: Path) -> list[Path]:
    """Files in ``out_dir`` that look generated (what a build writes, and stale leftovers)."""
    return sorted(p for p in out_dir.glob("[0-9][0-9]_*") if p.suffix in (".py", ".ipynb") and p.is_file())


def build_student_notebooks(src_dir: str | Path = "notebooks", out_dir: str | Path = "notebooks/student") -> list[Path]:
    """Write the student set (``.py`` + ``.ipynb`` per reference notebook) into ``out_dir``.

    Every source is rendered before anything is written, so a marker error leaves ``out_dir``
    untouched. Generated files of notebooks that no longer exist are removed. Returns the
    written paths.
    """
    files = render_all(src_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in _generated(out_dir):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, content in files.items():
        path = out_dir / name
        path.write_bytes(content.encode("utf-8"))
        written.append(path)
    return written


def check_up_to_date(src_dir: str | Path = "notebooks", out_dir: str | Path = "notebooks/student") -> list[Path]:
    """The student files that a build would change: missing, different, or left over. Empty: up to date."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in build_student_notebooks(src_dir, tmp)}
    stale = [out_dir / name for name, content in fresh.items()
             if not (out_dir / name).is_file() or (out_dir / name).read_bytes() != content]
    if out_dir.is_dir():
        stale += [p for p in _generated(out_dir) if p.name not in fresh]
    return sorted(stale)


__all__ = [
    "CourseError",
    "KERNELSPEC",
    "Region",
    "build_student_notebooks",
    "check_up_to_date",
    "find_regions",
    "put_back_solutions",
    "render_student",
    "student_source",
]
