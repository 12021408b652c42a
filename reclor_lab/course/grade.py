"""The instructor's grading command: every submission runs in an OS sandbox, judged outside it.

``reclor-lab course grade SUBMISSIONS --jobs N --csv grades.csv``:

1. Reads every submitted ``.ipynb`` here, without running it, and takes each exercise's code:
   the notebook's final ``def`` of the exercise's function and what it needs
   (:mod:`reclor_lab.course.judge`).
2. Once per run, prepares every exercise's inputs (:func:`reclor_lab.course.grading.replay.prepare`):
   the calls the notebook check's test makes, and hidden cases drawn from the grading seed; the
   right answers stay in this process.
3. Per student, one sandbox (:mod:`reclor_lab.course.sandbox`: bubblewrap, namespaces, limits)
   holds that student's exercise code and the inputs as data; inside, the runner
   (:mod:`reclor_lab.course.runner`) calls each exercise's function in a process of its own and
   sends the answers back as plain data (:mod:`reclor_lab.course.plain`: JSON, safetensors).
   ``--jobs N`` sandboxes run at once.
4. Here, outside, each check's test runs again on those answers and the hidden answers are
   compared with the reference's (:func:`reclor_lab.course.grading.replay.verdict`).

Statuses: ✅ passed (the check's cases and the hidden ones), ❌ wrong (the reason says why), ⏳ still
the stub, ``missing`` (no such notebook or function submitted), ``limit`` (a limit stopped it),
``error`` (the notebook could not be read, or its sandbox failed twice).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from reclor_lab.course.checks import EXERCISES
from reclor_lab.course.sandbox import Limits
from reclor_lab.errors import ReclorLabError

PASS, FAIL, TODO, MISSING, LIMIT, ERROR = "✅", "❌", "⏳", "missing", "limit", "error"
#: Points of an exercise unless ``--points`` says otherwise: all or nothing per exercise.
DEFAULT_POINTS = 1.0
#: Per exercise: CPU seconds, memory on top of what the sandbox's runner holds, wall-clock
#: seconds. A correct exercise needs about 1-5 CPU seconds (exercise 10 runs four optimizer steps
#: of the tiny model).
CPU_SECONDS = Limits.cpu_seconds
MEMORY_BYTES = Limits.memory_bytes
WALL_SECONDS = Limits.wall_seconds
#: Separates the student from the notebook in a loose file's name: ``ana__01_data.ipynb``.
STUDENT_SEPARATOR = "__"
#: The most a sandbox may send back (all of one student's answers).
MAX_ANSWER_BYTES = 256 * 2**20
#: What every row says when the sandbox was switched off.
NO_SANDBOX = "graded WITHOUT a sandbox (--no-sandbox: trusted submissions only)"


class GradeError(ReclorLabError, ValueError):
    """Submissions that cannot be graded at all (no such file, no notebook found, no sandbox, bad option)."""


@dataclass
class Verdict:
    """One exercise of one student."""

    number: int
    status: str  # ✅ ❌ ⏳ missing limit error
    reason: str = ""  # the check's line for ❌/⏳, or why it is missing / not reached
    code: str = ""  # the exercise's source as judged (for similarity detection)
    hidden: str = ""  # the hidden case that failed, if one did (never its expected value)

    @property
    def passed(self) -> bool:
        return self.status == PASS


@dataclass
class NotebookResult:
    """One submitted notebook: its verdicts, how long judging took, and what went wrong if anything."""

    path: str
    notebook: str | None
    verdicts: dict[int, Verdict] = field(default_factory=dict)
    problem: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        """Whether it could not be read or graded (a limit is a grade; this is not)."""
        return bool(self.problem) and not self.problem.startswith((LIMIT, "left out"))


@dataclass
class StudentResult:
    """A student's notebooks and their exercises, merged (every exercise of the course has a verdict)."""

    student: str
    notebooks: list[NotebookResult] = field(default_factory=list)
    sandboxed: bool = True

    @property
    def verdicts(self) -> dict[int, Verdict]:
        merged: dict[int, Verdict] = {}
        for nb in self.notebooks:
            merged.update(nb.verdicts)
        for number, (notebook, _, _) in EXERCISES.items():
            merged.setdefault(number, Verdict(number, MISSING, f"no notebook {notebook} submitted"))
        return dict(sorted(merged.items()))

    @property
    def problems(self) -> list[str]:
        return [f"{Path(nb.path).name}: {nb.problem}" for nb in self.notebooks if nb.problem]


# --- finding the class --------------------------------------------------------------------------------

def find_students(paths: list[str | Path]) -> dict[str, list[Path]]:
    """Student → their ``.ipynb`` files. A folder given is a class: each sub-folder is a student
    (named after it; its notebooks are searched recursively), and a loose ``.ipynb`` in it is
    ``STUDENT__NN_name.ipynb``; a loose ``NN_name.ipynb`` belongs to the folder it is in (so one
    student's folder can be given on its own), any other loose file's stem names the student.
    A file given is read the same way. A symbolic link inside a class is listed, never followed:
    reading it is that student's error (:data:`reclor_lab.course.judge.LINK`).

    Raises :class:`GradeError` naming every path that does not exist, or when no notebook is found.
    """
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise GradeError(f"no such file or folder: {', '.join(missing)}")
    found: dict[str, list[Path]] = {}
    for p in (Path(x).absolute() for x in paths):  # a relative path grades like the absolute one
        entries = [(_student_of_file(p), p)] if p.is_file() else \
            [e for child in sorted(p.iterdir()) if not child.name.startswith(".") for e in _class_entry(child)]
        for student, path in entries:
            found.setdefault(student, []).append(path)
    if not found:
        raise GradeError(f"no .ipynb notebooks in {', '.join(map(str, paths))}")
    return found


def _class_entry(child: Path) -> list[tuple[str, Path]]:
    """(student, file) for one entry of a class folder: a student's folder (its notebooks, found
    recursively), a loose notebook, or a link (listed, never followed: an error in that row)."""
    if child.is_symlink():
        return [(child.name if child.suffix != ".ipynb" else _student_of_file(child), child)]
    if child.is_dir():  # links inside are listed, not followed
        return [(child.name, q) for q in sorted(child.rglob("*"))
                if ".ipynb_checkpoints" not in q.parts and (q.suffix == ".ipynb" or q.is_symlink())]
    return [(_student_of_file(child), child)] if child.suffix == ".ipynb" else []


def _student_of_file(path: Path) -> str:
    """``ana__01_x.ipynb`` → ``ana``; ``ana/01_x.ipynb`` (a course notebook's name) → the folder's
    name, ``ana``; any other name → its stem."""
    if STUDENT_SEPARATOR in path.stem:
        return path.stem.split(STUDENT_SEPARATOR, 1)[0]
    if re.match(r"\d\d_", path.name):  # a link's own folder, not its target's
        return (path.parent if path.is_symlink() else path.resolve().parent).name
    return path.stem


# --- reading the submissions ------------------------------------------------------------------------------

@dataclass
class Submission:
    """One student's notebooks as read here: each file's result so far, and the code each of its
    exercises runs in the sandbox (``number`` → ``ExerciseCode``)."""

    student: str
    notebooks: list[NotebookResult]
    code: dict[int, object] = field(default_factory=dict)


def read_submission(student: str, files: list[Path]) -> Submission:
    """Read a student's files; a file that is no notebook, or a second file for one notebook,
    becomes that notebook's problem (``error``), never a guess."""
    from reclor_lab.course import judge

    sub = Submission(student, [])
    by_notebook: dict[str, list[tuple[Path, object]]] = {}
    for path in files:
        try:
            nb = judge.read_notebook(path)
        except judge.NotANotebook as e:
            sub.notebooks.append(NotebookResult(str(path), None, problem=f"{ERROR}: {e}"))
            continue
        notebook = judge.notebook_of(path, nb)
        if notebook is None:
            sub.notebooks.append(NotebookResult(str(path), None, problem=(
                f"{ERROR}: no exercise of the course found (name the file NN_… or keep the exercises' functions)")))
            continue
        by_notebook.setdefault(notebook, []).append((path, nb))
    for notebook, found in sorted(by_notebook.items()):
        numbers = judge.exercises_of(notebook)
        if len(found) > 1:
            names = " and ".join(str(p) for p, _ in found)
            why = f"{ERROR}: two files for notebook {notebook}: {names}; keep one of them and grade again"
            result = NotebookResult(str(found[0][0]), notebook, problem=why)
            result.verdicts = {n: Verdict(n, ERROR, why) for n in numbers}
            sub.notebooks.append(result)
            continue
        path, nb = found[0]
        result = NotebookResult(str(path), notebook)
        if nb.unparsable:
            result.problem = "left out (does not parse): " + "; ".join(nb.unparsable)
        for n in numbers:
            name = EXERCISES[n][2]
            try:
                code = judge.exercise_code(nb, name, stand_ins={other for _, _, other in EXERCISES.values()} - {name})
            except (RecursionError, MemoryError) as e:  # code nested deeper than the reader goes
                result.verdicts[n] = Verdict(n, ERROR, f"{ERROR}: its code could not be read ({type(e).__name__})")
                result.problem = result.problem or result.verdicts[n].reason
                continue
            if code.problem:
                result.verdicts[n] = Verdict(n, FAIL, code.problem, code=code.source)
            else:
                sub.code[n] = code
        sub.notebooks.append(result)
    return sub


# --- grading -----------------------------------------------------------------------------------------------

class Grader:
    """One grading run: the prepared exercises (built once), the inputs every sandbox reads, and
    the judging of what each sandbox sends back."""

    def __init__(self, seed: int, limits: Limits, sandboxed: bool = True) -> None:
        from reclor_lab.course.grading.exercises import Context
        from reclor_lab.course.grading.replay import inputs_blob, prepare

        self.seed, self.limits, self.sandboxed = seed, limits, sandboxed
        self.ctx = Context()
        try:
            with _quiet():
                self.prepared = prepare(self.ctx, seed)
        except Exception as e:  # noqa: BLE001 - one line: the kit itself is broken here
            raise GradeError(f"the grader could not build what the checks need ({type(e).__name__}: "
                             f"{_first_line(str(e))}); check that models/tiny-llama exists (reclor-lab tiny build)")
        self.folder = Path(tempfile.mkdtemp(prefix="reclor-lab-grade-"))
        self.inputs = self.folder / "inputs"
        self.inputs.mkdir()
        blob, meta = inputs_blob(self.prepared)
        (self.inputs / "inputs.safetensors").write_bytes(blob)
        (self.inputs / "inputs.json").write_text(meta, encoding="utf-8")
        self.lock = threading.Lock()  # judging replays on the one context's models: one at a time
        self.verdicts: dict[tuple[int, str], tuple[str, str, str]] = {}

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def job(self, sub: Submission) -> dict:
        from reclor_lab.course.grading.exercises import SPECS

        exercises = []
        for n, code in sorted(sub.code.items()):
            name = EXERCISES[n][2]
            spec = SPECS[name]
            # another exercise's function it calls: the checks' reference, as the notebook's stand-in
            uses = {other: f"reclor_lab.course.checks.{SPECS[other].reference.__name__}"
                    for other in code.uses_exercises}
            exercises.append({"number": n, "name": name, "code": code.source, "cell": code.cell, "uses": uses,
                              "giveaways": list(spec.giveaways), "record_params": spec.record_params,
                              "files": code.files, "probe": spec.probe})
        return {"limits": self.limits.as_dict(), "exercises": exercises}

    def grade(self, sub: Submission) -> StudentResult:
        """Run the student's sandbox (again once if it failed) and judge what came back."""
        t0 = time.perf_counter()
        frames, problem = self._run(sub)
        if problem and not frames:
            frames, problem = self._run(sub)
        with self.lock:
            results = self._judge(sub, frames, problem)
        elapsed = time.perf_counter() - t0
        for nb in results.notebooks:
            nb.seconds = nb.seconds or elapsed / max(1, len(results.notebooks))
        return results

    def _run(self, sub: Submission) -> tuple[dict[int, tuple[dict, bytes]], str]:
        from reclor_lab.course import sandbox

        if not sub.code:
            return {}, ""
        folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.folder))
        try:
            (folder / "job.json").write_text(json.dumps(self.job(sub)), encoding="utf-8")
            if self.sandboxed:
                out = sandbox.run(folder, self.inputs, self.limits, len(sub.code), MAX_ANSWER_BYTES)
            else:
                out = sandbox.run_unsandboxed(folder, self.inputs, self.limits, len(sub.code), MAX_ANSWER_BYTES)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        frames = {}
        for header, blob in out.frames:
            if isinstance(header.get("number"), int) and header["number"] in sub.code:
                frames[header["number"]] = (header, blob)
        problem = ""
        if len(frames) < len(sub.code):
            tail = _first_line(out.stderr) if out.stderr.strip() else "no message"
            why = {"time": "the wall-clock limit of the whole sandbox", "size": "its answers were over the size cap"}
            problem = f"{ERROR}: the sandbox stopped ({why.get(out.stopped, out.stopped or 'early')}; {tail})"
        return frames, problem

    def _judge(self, sub: Submission, frames: dict, problem: str) -> StudentResult:
        from reclor_lab.course.grading.replay import verdict
        from reclor_lab.course.plain import PlainDataError, Raised, decode

        result = StudentResult(sub.student, sub.notebooks, sandboxed=self.sandboxed)
        for nb in sub.notebooks:
            if nb.notebook is None or nb.problem.startswith(ERROR):
                continue
            spent = 0.0
            for n in (m for m in _exercises_of(nb.notebook) if m in sub.code):
                code = sub.code[n]
                if n not in frames:
                    nb.verdicts[n] = Verdict(n, ERROR, f"not judged: {problem}", code=code.source)
                    nb.problem = nb.problem or problem
                    continue
                header, blob = frames[n]
                spent += float(header.get("seconds", 0.0)) if isinstance(header.get("seconds"), (int, float)) else 0
                nb.verdicts[n] = self._verdict(n, code, header, blob, verdict, decode, PlainDataError, Raised)
                if nb.verdicts[n].status == LIMIT and not nb.problem:
                    nb.problem = nb.verdicts[n].reason.removeprefix("not judged: ")
            nb.seconds = spent
        return result

    def _verdict(self, n, code, header, blob, verdict, decode, PlainDataError, Raised) -> Verdict:  # noqa: N803
        name = EXERCISES[n][2]
        if "limit" in header:
            return Verdict(n, LIMIT, f"not judged: {LIMIT}: {header['limit']}", code=code.source)
        if "crashed" in header:
            return Verdict(n, FAIL, f"`{name}` crashed: {header['crashed']}", code=code.source)
        if "load_error" in header:
            e = Raised.from_dict(header["load_error"])
            return Verdict(n, FAIL, f"the code `{name}` needs raised {e.type_name}: {_first_line(e.message)}",
                           code=code.source)
        if "send_error" in header:
            return Verdict(n, FAIL, f"`{name}`'s answers could not be sent back as plain data "
                                    f"({header['send_error']})", code=code.source)
        try:
            answers = decode(blob, str(header.get("answers", "[]")))
            if not isinstance(answers, list):
                raise PlainDataError("not a list of cases")
        except PlainDataError as e:
            return Verdict(n, FAIL, f"`{name}`'s answers came back malformed ({e})", code=code.source)
        # The verdict is a function of the answers alone: students whose answers are the same bytes
        # (every correct one, mostly) share one replay of the check.
        key = (n, hashlib.sha256(str(header.get("answers", "")).encode("utf-8") + b"\0" + blob).hexdigest())
        if key not in self.verdicts:
            self.verdicts[key] = verdict(n, self.prepared[n], self.ctx, answers)
        status, reason, hidden = self.verdicts[key]
        return Verdict(n, status, reason, code=code.source, hidden=hidden)


def _exercises_of(notebook: str) -> list[int]:
    return [n for n, (nb, _, _) in sorted(EXERCISES.items()) if nb == notebook]


def _quiet():
    import contextlib
    import io

    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def _first_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no message"


def grade(paths: list[str | Path], jobs: int = 1, seed: int | None = None, cpu_seconds: int = CPU_SECONDS,
          memory_bytes: int = MEMORY_BYTES, wall_seconds: int = WALL_SECONDS, progress=print,
          sandboxed: bool = True) -> list[StudentResult]:
    """Judge every student found in ``paths`` (:func:`find_students`), ``jobs`` sandboxes at once.

    ``seed`` draws the hidden cases; ``None`` draws a fresh one (the same seed gives the same
    cases, for re-grading one student the way the class was graded). ``sandboxed=False`` runs
    the submissions without a sandbox (trusted ones only; every row says so). Raises
    :class:`GradeError` when a sandbox cannot be made here, naming what is missing."""
    from reclor_lab.course import sandbox

    limits = Limits(cpu_seconds=_positive("cpu_seconds", cpu_seconds), wall_seconds=_positive("wall_seconds",
                    wall_seconds), memory_bytes=_positive("memory_bytes", memory_bytes))
    if jobs < 1:
        raise GradeError(f"--jobs must be at least 1, got {jobs}")
    if sandboxed and sandbox.unavailable():
        raise GradeError(f"cannot grade: {sandbox.unavailable()} (nothing was graded)")
    students = find_students(paths)
    subs = [read_submission(name, files) for name, files in students.items()]
    grader = Grader(secrets.randbits(32) if seed is None else seed, limits, sandboxed)
    try:
        with ThreadPoolExecutor(max_workers=min(jobs, len(subs))) as pool:
            results = []
            for r in pool.map(grader.grade, subs):
                results.append(r)
                if progress:
                    done = sum(v.passed for v in r.verdicts.values())
                    seconds = sum(nb.seconds for nb in r.notebooks)
                    problems = f" ({'; '.join(r.problems)})" if r.problems else ""
                    progress(printable(f"{r.student}: {len(r.notebooks)} notebook(s) in {seconds:.1f} s, {done} of "
                                       f"{len(EXERCISES)} passed{problems}"))
    finally:
        grader.close()
    for r in results:
        r.notebooks.sort(key=lambda nb: nb.path)
    return results


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
        raise GradeError(f"{name} must be a positive number, got {value!r}")
    return int(value)


# --- the gradebook ----------------------------------------------------------------------------------------

def parse_points(text: str | None) -> dict[int, float]:
    """``"1=2,8=3"`` → points per exercise (the others :data:`DEFAULT_POINTS`)."""
    points = {n: DEFAULT_POINTS for n in EXERCISES}
    if not text:
        return points
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*=\s*(\d+(?:\.\d+)?)\s*", item)
        if not m or int(m.group(1)) not in EXERCISES:
            raise GradeError(f"--points: {item.strip()!r} is not EXERCISE=POINTS with an exercise of "
                             f"{min(EXERCISES)}-{max(EXERCISES)} (e.g. --points 8=2,10=2)")
        points[int(m.group(1))] = float(m.group(2))
    return points


def _column(number: int) -> str:
    return f"q{number}"


def status_of(r: StudentResult) -> str:
    """``graded``, or ``graded with problems: …`` naming each notebook's problem (a limit, a crash)."""
    head = "graded" if r.sandboxed else NO_SANDBOX
    return head + (": " + "; ".join(r.problems) if r.problems else "")


def write_gradebook(results: list[StudentResult], csv_path: Path, points: dict[int, float] | None = None) -> list[Path]:
    """Write the gradebook and its companions; return the paths written.

    * ``csv_path``: one row per student in the layout of otter-grader's ``final_grades.csv``: a
      first column naming the submission (here ``student``), one column per question (``q1`` …)
      holding its points, then ``total``, ``possible``, ``percent``; the first data row is
      ``POINTS`` with each question's points possible. Added after those: ``status``
      (``graded`` or the problems) and ``seconds`` (judging time, all notebooks).
    * ``<stem>_details.csv``: one row per student × exercise: notebook, file, status symbol,
      points, the reason or hint, and the notebook's judging time.
    * ``<stem>_feedback/<student>.txt``: what a student reads: each exercise's verdict and, for
      each ❌, its hint or reason.
    """
    points = points or parse_points(None)
    rows, details = _gradebook_rows(results, points)
    written = []
    check_gradebook_path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    written.append(_write_csv(csv_path, rows))
    written.append(_write_csv(csv_path.with_name(csv_path.stem + "_details.csv"), details))
    folder = csv_path.with_name(csv_path.stem + "_feedback")
    with contextlib.suppress(FileExistsError):
        folder.mkdir()
    fd = _open_folder(folder)
    try:
        for r in results:
            name = f"{_safe(r.student)}.txt"
            _write_file(fd, name, feedback(r, points).encode("utf-8"), folder / name)
            written.append(folder / name)
    finally:
        os.close(fd)
    return written


def _gradebook_rows(results: list[StudentResult], points: dict[int, float]) -> tuple[list[list], list[list]]:
    """The gradebook's rows (header, ``POINTS``, one per student) and the details' rows."""
    numbers = sorted(EXERCISES)
    possible = sum(points[n] for n in numbers)
    rows = [["student", *map(_column, numbers), "total", "possible", "percent", "status", "seconds"],
            ["POINTS", *[f"{points[n]:g}" for n in numbers], f"{possible:g}", f"{possible:g}", "100.0", "", ""]]
    details = [["student", "exercise", "notebook", "file", "status", "points", "reason", "notebook seconds"]]
    for r in results:
        verdicts = r.verdicts
        got = {n: points[n] if verdicts[n].passed else 0.0 for n in numbers}
        total = sum(got.values())
        rows.append([r.student, *[f"{got[n]:g}" for n in numbers], f"{total:g}", f"{possible:g}",
                     f"{100 * total / possible:.1f}" if possible else "0.0", status_of(r),
                     f"{sum(nb.seconds for nb in r.notebooks):.1f}"])
        files = {n: nb for nb in r.notebooks for n in nb.verdicts}
        for n in numbers:
            nb = files.get(n)
            details.append([r.student, n, EXERCISES[n][0], Path(nb.path).name if nb else "", verdicts[n].status,
                            f"{got[n]:g}", verdicts[n].reason, f"{nb.seconds:.1f}" if nb else ""])
    return rows, details


def check_gradebook_path(csv_path: Path) -> None:
    """Raises :class:`GradeError` when the gradebook or a companion is a symbolic link (the grader
    never writes through one), or its folder is not a folder."""
    companions = [csv_path, csv_path.with_name(csv_path.stem + "_details.csv"),
                  csv_path.with_name(csv_path.stem + "_feedback")]
    links = [str(p) for p in companions if p.is_symlink()]
    if links:
        raise GradeError(f"{', '.join(links)} is a symbolic link; the gradebook is never written through one: "
                         "remove it or choose another --csv file")
    if csv_path.parent.exists() and not csv_path.parent.is_dir():
        raise GradeError(f"{csv_path.parent} is not a folder; choose another --csv file")


def feedback(r: StudentResult, points: dict[int, float]) -> str:
    """The text a student gets: per notebook its judging time and problems, per exercise the verdict."""
    verdicts = r.verdicts
    total = sum(points[n] for n, v in verdicts.items() if v.passed)
    lines = [f"{r.student}: {total:g} of {sum(points.values()):g} points", ""]
    for nb in r.notebooks:
        lines.append(f"{Path(nb.path).name} (notebook {nb.notebook or '?'}), judged in {nb.seconds:.1f} s"
                     + (f": {nb.problem}" if nb.problem else ""))
    lines.append("")
    for n, v in verdicts.items():
        title = EXERCISES[n][1]
        if v.passed:
            lines.append(f"✅ Exercise {n} ({title}): {points[n]:g} point(s).")
        else:
            why = re.sub(r"^(❌|⏳) Exercise \d+ \([^)]*\): ", "", v.reason)
            mark = {MISSING: "–", LIMIT: "⏱", ERROR: "⚠"}.get(v.status, v.status)
            lines.append(f"{mark} Exercise {n} ({title}): 0 point(s). {why}".rstrip())
    return "\n".join(lines) + "\n"


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (escape sequences, carriage return,
    backspace: a folder named to redraw its own row as 13/13) shown as its escape instead.

    >>> printable("eve\\x1b[2K\\r13/13")
    'eve\\\\x1b[2K\\\\r13/13'
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def table(results: list[StudentResult]) -> str:
    """Student × exercise (✅ ❌ ⏳ missing limit), then total and status, fixed width; nothing a
    student named is printed raw (:func:`printable`)."""
    numbers = sorted(EXERCISES)
    w = max([len("student")] + [len(printable(r.student)) for r in results])
    lines = [f"{'student':<{w}}  " + " ".join(f"{n:>3}" for n in numbers) + "  total  status"]
    short = {PASS: "✅", FAIL: "❌", TODO: "⏳", MISSING: "-", LIMIT: "L", ERROR: "E"}
    for r in results:
        v = r.verdicts
        marks = " ".join(f"{short.get(v[n].status, '?'):>3}" for n in numbers)
        total = sum(x.passed for x in v.values())
        lines.append(f"{printable(r.student):<{w}}  {marks}  {total:>2}/{len(numbers):<2}  {printable(status_of(r))}")
    lines.append("(✅ passed  ❌ wrong  ⏳ not started  - missing  L a limit was hit  E could not be graded)")
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name) or "student"


#: What makes a spreadsheet read a cell as a formula (the OWASP list for CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell):
    """A text cell that a spreadsheet would run as a formula (a student named ``=HYPERLINK(…)``),
    quoted with a leading ``'``, as spreadsheets show it; numbers and other text as they are.

    >>> spreadsheet_safe('=1+1'), spreadsheet_safe('-2.5'), spreadsheet_safe('--'), spreadsheet_safe('ana')
    ("'=1+1", '-2.5', '--', 'ana')
    """
    if not isinstance(cell, str) or not cell.startswith(FORMULA_START) or not cell.strip("=+-@\t\r "):
        return cell  # also a dash on its own, or two (otter's first row): nothing for a formula to run
    try:
        float(cell)
        return cell
    except ValueError:
        return "'" + cell


def _write_csv(path: Path, rows: list[list]) -> Path:
    text = io.StringIO(newline="")
    csv.writer(text).writerows([[spreadsheet_safe(c) for c in row] for row in rows])
    fd = _open_folder(path.parent)
    try:
        _write_file(fd, path.name, text.getvalue().encode("utf-8"), path)
    finally:
        os.close(fd)
    return path


def _open_folder(folder: Path) -> int:
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise GradeError(f"cannot write into {folder}: {e.strerror}"
                         + (" (a symbolic link: the gradebook is never written through one)"
                            if folder.is_symlink() else "")) from None


def _write_file(folder: int, name: str, data: bytes, shown: Path) -> None:
    """Write ``name`` in the open ``folder`` through a temporary file that replaces it at the end:
    links are never followed (a planted ``NAME.tmp`` link is removed, not written through), and
    a write that fails (a full disk) removes the temporary file and names the path."""
    tmp = name + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=folder)  # a stale temporary file, or a link: the link itself goes
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder)
    except OSError as e:
        raise GradeError(f"cannot write {shown}: {e.strerror}") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise GradeError(f"could not write {shown}: {e.strerror}; nothing there was replaced") from None
    os.close(fd)
    try:
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise GradeError(f"could not write {shown}: {e.strerror}") from None
