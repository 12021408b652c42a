"""The instructor's grading command: run students' notebooks offline and tabulate their exercises.

``reclor-lab course grade SUBMISSIONS...`` executes each student ``.ipynb`` (files, or folders
searched for them) in a fresh kernel, with a time limit per cell, in a temporary working
directory (the notebooks' ``runs/`` land there, so an instructor's own runs are never touched;
the submission file itself is only read). A final cell calls :func:`reclor_lab.checks.summary`,
which judges every exercise of the notebook on the student's functions as they stand. The result
is one row per submission and one column per exercise:

    ✅ passed   ❌ wrong   ⏳ not started   error: the notebook stopped before the check ran
    timeout: a cell ran past the limit   not a notebook: the file is not notebook JSON

A notebook that crashes, hangs or is not a notebook gets a row that says so; the others are
still graded.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from reclor_lab.checks import EXERCISES
from reclor_lab.config import REPO_ROOT
from reclor_lab.course import KERNELSPEC
from reclor_lab.errors import ReclorLabError
from reclor_lab.notebook import WORKDIR_ENV

#: Per-cell time limit (seconds) by default: a tiny-preset notebook's slowest cell (the training
#: run of notebook 04) takes about a minute on a 2-core CPU.
DEFAULT_TIMEOUT = 300
#: The cell the grader appends: it marks where its own output starts.
_MARK = "=== reclor-lab grade: exercises ==="
_GRADE_CELL = f"print({_MARK!r})\nfrom reclor_lab import checks as _grade_checks\n_grade_checks.summary()"
_LINE = re.compile(r"^(✅|❌|⏳) Exercise (\d+) \(")

ERROR, TIMEOUT, NOT_A_NOTEBOOK = "error", "timeout", "not a notebook"


class GradeError(ReclorLabError, ValueError):
    """Submissions that cannot be graded at all (no such file, no notebook found)."""


@dataclass
class Submission:
    """One graded notebook: the status of each exercise, and what went wrong if anything did."""

    path: Path
    results: dict[int, str] = field(default_factory=dict)  # exercise number -> status
    problem: str = ""  # "" when the notebook ran to the end
    seconds: float = 0.0


def find_submissions(paths: list[str | Path]) -> list[Path]:
    """The ``.ipynb`` files among ``paths`` and inside the folders among them, in a stable order.

    Raises :class:`GradeError` naming every path that does not exist, or when no notebook is found.
    """
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise GradeError(f"no such file or folder: {', '.join(missing)}")
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            found.append(p)
    if not found:
        raise GradeError(f"no .ipynb notebooks in {', '.join(map(str, paths))}")
    return found


def _workdir(tmp: Path) -> Path:
    """A working directory whose ``data`` and ``models`` are the kit's (read through links), so the
    notebooks' relative paths work, and whose ``runs`` is the temporary directory's own."""
    work = tmp / "work"
    work.mkdir()
    for name in ("data", "models"):
        if (REPO_ROOT / name).exists():
            (work / name).symlink_to(REPO_ROOT / name, target_is_directory=True)
    return work


def grade_notebook(path: Path, timeout: int = DEFAULT_TIMEOUT, kernel_name: str = KERNELSPEC["name"]) -> Submission:
    """Execute one submission (a copy of it) and read its exercises' statuses."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    sub = Submission(path=path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # not JSON, or JSON that is no notebook
        sub.problem = f"{NOT_A_NOTEBOOK} ({type(e).__name__})"
        return sub
    nb.cells.append(nbformat.v4.new_code_cell(_GRADE_CELL))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reclor-lab-grade-") as tmp:
        work = _workdir(Path(tmp))
        # the kernel's environment: the grader's, plus these; the grader's own is left as it is
        env = {**os.environ, WORKDIR_ENV: str(work), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        # allow_errors: a cell that raises does not stop the run, so the checks after it (and the
        # summary) still report; the first error is what the row says.
        client = NotebookClient(nb, kernel_name=kernel_name, timeout=timeout, allow_errors=True,
                                resources={"metadata": {"path": str(work)}})
        try:
            client.execute(env=env)
            sub.problem = _first_error(nb)
        except CellTimeoutError:
            sub.problem = f"{TIMEOUT}: a cell ran longer than {timeout} s"
        except DeadKernelError as e:
            sub.problem = f"{ERROR}: the kernel died ({_first_line(str(e))})"
        except Exception as e:  # a kernel that cannot start, a broken notebook structure
            sub.problem = f"{ERROR}: {type(e).__name__}: {_first_line(str(e))}"
    sub.seconds = time.perf_counter() - t0
    sub.results = _statuses(nb, sub.problem)
    return sub


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else "no message"


def _first_error(nb) -> str:
    """``error: cell N: Name: message`` for the first cell that raised, else ``""``."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    for k, cell in enumerate(code[:-1], start=1):  # the last one is the grader's own
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{ERROR}: code cell {k}: {out.get('ename')}: {_first_line(out.get('evalue', ''))}"
    return ""


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _verdicts(text: str) -> dict[int, str]:
    found = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            found[int(m.group(2))] = m.group(1)
    return found


def _statuses(nb, problem: str) -> dict[int, str]:
    """The exercises' statuses: from the grader's summary cell when it ran (the functions as they
    stand at the end), else the last verdict each check cell printed; exercises of the notebook
    that neither reached get ``error`` or ``timeout``."""
    results: dict[int, str] = {}
    for cell in nb.cells[:-1]:
        if cell.cell_type == "code":
            results.update(_verdicts(_stdout(cell)))
    last = _stdout(nb.cells[-1])
    if _MARK in last:
        results.update(_verdicts(last.split(_MARK, 1)[1]))
    missing = ERROR if not problem.startswith(TIMEOUT) else TIMEOUT
    notebooks = {EXERCISES[n][0] for n in results} | _notebooks_named_in(nb)
    for number, (notebook, _, _) in EXERCISES.items():
        if notebook in notebooks and number not in results:
            results[number] = missing
    return results


def _notebooks_named_in(nb) -> set[str]:
    """Notebooks whose exercises' check cells appear in ``nb`` (even if they never ran)."""
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return {notebook for notebook, _, name in EXERCISES.values()
            if re.search(rf"^{name} = checks\.check_\w+\({name}\b", source, re.M)}


def grade(paths: list[str | Path], timeout: int = DEFAULT_TIMEOUT, kernel_name: str = KERNELSPEC["name"],
          progress=print) -> list[Submission]:
    """Grade every submission found in ``paths`` (see :func:`find_submissions`), one by one."""
    subs = []
    for path in find_submissions(paths):
        sub = grade_notebook(path, timeout, kernel_name)
        if progress:
            progress(f"graded {path} in {sub.seconds:.0f} s" + (f": {sub.problem}" if sub.problem else ""))
        subs.append(sub)
    return subs


def _columns(subs: list[Submission]) -> list[int]:
    return sorted({n for s in subs for n in s.results})


def table(subs: list[Submission]) -> str:
    """Submission × exercise, fixed width, then the problem of each submission that had one."""
    cols = _columns(subs)
    names = [str(s.path) for s in subs]
    w = max([len("submission")] + [len(n) for n in names])
    lines = [f"{'submission':<{w}}  " + "  ".join(f"{'ex ' + str(n):<8}" for n in cols) + "  notes"]
    for name, s in zip(names, subs):
        cells = "  ".join(f"{s.results.get(n, '-'):<8}" for n in cols)
        lines.append(f"{name:<{w}}  {cells}  {s.problem}".rstrip())
    return "\n".join(lines)


def write_csv(subs: list[Submission], out: Path) -> None:
    """One row per submission: its path, one column per exercise, and the problem (if any)."""
    cols = _columns(subs)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", *[f"exercise {n}" for n in cols], "problem"])
        for s in subs:
            writer.writerow([str(s.path), *[s.results.get(n, "") for n in cols], s.problem])
    os.replace(tmp, out)
