"""The instructor's grading command: judge a class's notebooks without running them.

``reclor-lab course grade SUBMISSIONS --jobs N --csv grades.csv`` reads every submitted ``.ipynb``
and judges each exercise on the submission's final ``def`` of its function (see
:mod:`reclor_lab.course.judge` for what is read and what counts as gamed). No notebook is executed: no
training run, no kernel, nothing a notebook printed or stored counts.

How one notebook is judged:

* ``--jobs N`` worker processes each import :mod:`reclor_lab.course.checks`, capture the functions that
  judge (:data:`_CAPTURED`), load the tiny model, tokenizer and LoRA layer the checks need
  (:class:`JudgeContext`) once, then **fork a fresh child per submitted notebook**.
* The child contains the submission: no network (a new network namespace where the kernel allows
  one, else sockets refused), a temporary HOME and working folder, an environment of its own
  (nothing of the instructor's), CPU-time, memory and file-size limits (``resource.setrlimit``),
  output to ``/dev/null``. It builds every exercise's test and hidden cases **before** any
  student code runs, then executes each exercise's module and judges it with the captured
  functions. A change to ``reclor_lab.course.checks``, ``torch`` or the other modules the checks use,
  made while the student's code ran, voids the verdict (❌ gamed); so does a thread left running.
* The worker reads the child's verdicts from a pipe (one JSON line per exercise, so the
  exercises judged before a limit was hit keep their verdicts) and kills it at the wall-clock
  limit.

Statuses: ✅ passed (the check's cases and the hidden ones), ❌ wrong or gamed (the reason says
which), ⏳ still the stub, ``missing`` (no such notebook or function submitted), ``limit`` (the
notebook broke a limit before this exercise was judged).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import secrets
import select
import signal
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reclor_lab.course.checks import EXERCISES
from reclor_lab.errors import ReclorLabError

PASS, FAIL, TODO, MISSING, LIMIT = "✅", "❌", "⏳", "missing", "limit"
#: Points of an exercise unless ``--points`` says otherwise: all or nothing per exercise.
DEFAULT_POINTS = 1.0
#: Per submitted notebook: CPU seconds, extra memory (on top of what the worker holds), the
#: largest file it may write, and the wall-clock time after which it is killed. A correct
#: notebook needs about 1-5 CPU seconds (exercise 10 runs four optimizer steps of the tiny model).
CPU_SECONDS = 60
MEMORY_BYTES = 2 * 2**30
FILE_BYTES = 16 * 2**20
WALL_SECONDS = 180
#: Separates the student from the notebook in a loose file's name: ``ana__01_data.ipynb``.
STUDENT_SEPARATOR = "__"
#: Environment of the judging child: nothing of the instructor's, offline.
CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: Modules whose top-level names must be the same after a student's code ran as before.
GUARDED_MODULES = ("reclor_lab.course.checks", "reclor_lab.config", "reclor_lab.data", "reclor_lab.loss",
                   "reclor_lab.metrics", "reclor_lab.model", "reclor_lab.lora", "reclor_lab.train",
                   "reclor_lab.course.grade", "reclor_lab.course.judge", "torch", "torch.nn", "torch.nn.functional",
                   "torch.nn.utils", "math", "builtins", "bitsandbytes", "bitsandbytes.functional")


class GradeError(ReclorLabError, ValueError):
    """Submissions that cannot be graded at all (no such file, no notebook found, bad option)."""


@dataclass
class Verdict:
    """One exercise of one student."""

    number: int
    status: str  # ✅ ❌ ⏳ missing limit
    reason: str = ""  # the check's line for ❌/⏳, or why it is gamed / missing / not reached
    code: str = ""  # the exercise's source as judged (what the class report compares between students)
    hidden: str = ""  # the hidden case that failed (what it was, never its expected value)

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


@dataclass
class StudentResult:
    """A student's notebooks and their exercises, merged (every exercise of the course has a verdict)."""

    student: str
    notebooks: list[NotebookResult] = field(default_factory=list)

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
    A file given is read the same way.

    Raises :class:`GradeError` naming every path that does not exist, or when no notebook is found.
    """
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise GradeError(f"no such file or folder: {', '.join(missing)}")
    found: dict[str, list[Path]] = {}

    def add(student: str, path: Path) -> None:
        found.setdefault(student, []).append(path)

    for p in map(Path, paths):
        if p.is_file():
            add(_student_of_file(p), p)
            continue
        for child in sorted(p.iterdir()):
            if child.name.startswith("."):
                continue
            if child.is_dir():
                for q in sorted(child.rglob("*.ipynb")):
                    if ".ipynb_checkpoints" not in q.parts:
                        add(child.name, q)
            elif child.suffix == ".ipynb":
                add(_student_of_file(child), child)
    if not found:
        raise GradeError(f"no .ipynb notebooks in {', '.join(map(str, paths))}")
    return found


def _student_of_file(path: Path) -> str:
    """``ana__01_x.ipynb`` → ``ana``; ``ana/01_x.ipynb`` (a course notebook's name) → the folder's
    name, ``ana``; any other name → its stem."""
    if STUDENT_SEPARATOR in path.stem:
        return path.stem.split(STUDENT_SEPARATOR, 1)[0]
    if re.match(r"\d\d_", path.name):
        return path.resolve().parent.name
    return path.stem


# --- the judging process ----------------------------------------------------------------------------------

class JudgeContext:
    """What the checks need besides the student's function, built once per worker from the kit's
    tiny model (never from a submission): ``model`` (4-bit classifier), ``tokenizer``,
    ``lora_layer`` (peft's 4-bit LoRA layer), ``train_step_inputs`` (model with LoRA, a batch of
    the check records, class weights). Built on first use; a new exercise that needs something
    else adds a property here and names it in its :class:`reclor_lab.course.checks.Judging`."""

    def __init__(self) -> None:
        self._cache: dict[str, object] = {}
        self.seed: int | None = None  # the grading seed's draw for this notebook (None: the notebook's own)

    def _once(self, key: str, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def cfg(self):
        from reclor_lab.config import get_preset

        return self._once("cfg", lambda: get_preset("tiny"))

    @property
    def tokenizer(self):
        from reclor_lab.model import load_tokenizer

        return self._once("tokenizer", lambda: load_tokenizer(self.cfg.model_name_or_path))

    @property
    def model(self):
        from reclor_lab.model import load_model

        return self._once("model", lambda: _quiet(load_model, self.cfg, self.tokenizer))

    @property
    def peft_model(self):
        from reclor_lab.lora import inject_lora
        from reclor_lab.model import load_model

        return self._once("peft", lambda: inject_lora(_quiet(load_model, self.cfg, self.tokenizer), self.cfg))

    @property
    def lora_layer(self):
        return self.peft_model.base_model.model.model.layers[0].self_attn.q_proj

    @property
    def train_step_inputs(self) -> tuple:
        def build():
            import torch

            from reclor_lab.course.checks import CHECK_RECORDS
            from reclor_lab.data import class_weights, format_example

            texts = [format_example(r, self.cfg.template) for r in CHECK_RECORDS]
            enc = self.tokenizer(texts, padding=True, return_tensors="pt")
            labels = [r["label"] for r in CHECK_RECORDS]
            batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                     "labels": torch.tensor(labels)}
            return batch, class_weights(labels + [3])

        batch, weights = self._once("batch", build)
        return self.peft_model, batch, weights

    def build_all(self, names: list[str]) -> None:
        """Build what the exercises ``names`` need now (in the worker, before any fork)."""
        from reclor_lab.course.checks import JUDGING

        for name in names:
            if name in JUDGING:
                JUDGING[name].inputs(self)


def _quiet(fn, *args):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args)


_INIT_FAILED = "the grader could not build what the checks need"
#: The judging functions, taken from a fresh import of the checks in the worker before any
#: student code ran (a submission that rebinds ``checks._judge`` later changes nothing here).
_CAPTURED: dict[str, object] = {}
_CONTEXT: JudgeContext | None = None
_SETTINGS: dict[str, object] = {}


def _init_worker(settings: dict) -> None:
    global _CONTEXT
    import torch

    torch.set_num_threads(1)  # --jobs gives the parallelism; one thread also keeps fork() safe
    from reclor_lab.course import checks, judge

    _CAPTURED.update(judge=checks._judge, build_test=checks.build_test, judging=dict(checks.JUDGING),
                     exercises=dict(checks.EXERCISES), read=judge.read_notebook, tampering=judge.tampering,
                     code=judge.exercise_code, scan=judge.scan_exercise, notebook_of=judge.notebook_of,
                     exercises_of=judge.exercises_of)
    _SETTINGS.update(settings)
    _CONTEXT = JudgeContext()
    try:
        _CONTEXT.build_all([name for _, _, name in EXERCISES.values()])
    except Exception as e:  # noqa: BLE001 - reported on every task as one line
        _SETTINGS["init_error"] = f"{type(e).__name__}: {_first_line(str(e))}"


def _snapshot() -> dict[str, dict[str, object]]:
    """The top-level names of :data:`GUARDED_MODULES` and what they are bound to."""
    import sys

    return {m: dict(vars(sys.modules[m])) for m in GUARDED_MODULES if m in sys.modules}


def _changed_since(before: dict[str, dict[str, object]]) -> str:
    """``module.name`` of the first name rebound or deleted since ``before`` (names a module
    added later, such as a submodule imported since, change nothing the checks use), else ``""``."""
    import sys

    for module, names in before.items():
        now = vars(sys.modules[module])
        for key, value in names.items():
            if key not in now or now[key] is not value:
                return f"{module}.{key}"
    return ""


def _contain(work: Path) -> None:
    """In the child: offline, a temporary HOME and folder, an environment of its own, limits."""
    import ctypes
    import resource
    import socket

    try:  # a user + network namespace of its own: no interface but a loopback that is down
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.unshare(0x10000000 | 0x40000000) == 0  # CLONE_NEWUSER | CLONE_NEWNET
    except (OSError, AttributeError):
        ok = False
    if not ok:  # no namespaces here: refuse sockets off the machine in this process
        def refuse(*args, **kwargs):
            raise OSError("network access is disabled while grading")

        socket.socket.connect = refuse  # type: ignore[method-assign]
        socket.create_connection = refuse  # type: ignore[assignment]
    os.environ.clear()
    os.environ.update(CHILD_ENV, HOME=str(work), TMPDIR=str(work))
    tempfile.tempdir = str(work)
    os.chdir(work)
    cpu = int(_SETTINGS["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + int(_SETTINGS["memory_bytes"]),) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)


def _vm_size() -> int:
    """This process's virtual size in bytes (what the memory limit comes on top of)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _judge_in_child(path: str, seed: int, out) -> None:
    """Judge one notebook and write one JSON line per exercise to ``out`` (runs in the child)."""
    import threading

    c = _CAPTURED
    judging, exercises = c["judging"], c["exercises"]

    def emit(**kw) -> None:
        out.write(json.dumps(kw, ensure_ascii=False) + "\n")
        out.flush()

    try:
        nb = c["read"](Path(path))
    except ValueError as e:
        emit(problem=str(e))
        return
    notebook = c["notebook_of"](Path(path), nb)
    if notebook is None:
        emit(problem="no exercise of the course found (name the file NN_… or keep the exercises' functions)")
        return
    numbers = c["exercises_of"](notebook)
    emit(notebook=notebook, unparsable=nb.unparsable)
    gamed = c["tampering"](nb, numbers)
    # Everything the judging needs, built before any student code runs in this process.
    rng = random.Random(f"{seed}:{notebook}")
    _CONTEXT.seed = rng.randrange(2**31)  # checks that draw their own cases (exercise 13) draw them from here
    prepared = {}
    for n in numbers:
        name = exercises[n][2]
        spec = judging.get(name)
        if spec is None:
            continue
        test = c["build_test"](spec.check, *spec.inputs(_CONTEXT))
        drawn = spec.hidden(rng, _CONTEXT) if spec.hidden else []
        hidden = [(what, args, spec.reference(*args)) for what, args in drawn]
        prepared[n] = (spec, test, hidden)
    before, threads = _snapshot(), threading.active_count()
    passed: set[str] = set()
    for n in numbers:
        name = exercises[n][2]
        if n in gamed:
            emit(number=n, status=FAIL, reason=gamed[n])
            continue
        if n not in prepared:
            emit(number=n, status=FAIL, reason=f"the grader has no judging for `{name}` (checks.JUDGING)")
            continue
        others = {exercises[m][2] for m in numbers if m != n} - passed
        code = c["code"](nb, name, others)
        reason = code.problem or c["scan"](code, n)
        if reason:
            emit(number=n, status=FAIL, reason=reason)
            continue
        status, reason = _judge_code(n, code, prepared[n], others)
        changed = _changed_since(before) or ("a thread left running" if threading.active_count() != threads else "")
        if changed:
            status, reason = FAIL, (f"gamed: running `{name}` changed what the checks rely on ({changed}), "
                                    "so its verdict does not count")
            emit(number=n, status=status, reason=reason)
            emit(problem="the submission changed the grader's modules; its later exercises were not judged")
            return
        if status == PASS:
            passed.add(name)
        emit(number=n, status=status, reason=reason)


def _judge_code(number: int, code, prepared, others: set[str]) -> tuple[str, str]:
    spec, test, hidden = prepared
    judging = _CAPTURED["judging"]
    namespace: dict = {"__name__": f"submission_{code.name}"}
    for other in code.uses_exercises:  # an exercise not passed: the reference stands in, as in the notebook
        namespace[other] = judging[other].reference
    try:
        exec(compile(code.source, f"<{code.name}, from code cell {code.cell}>", "exec"), namespace)
        fn = namespace[code.name]
    except MemoryError:
        raise
    except BaseException as e:  # noqa: BLE001 - the student's top-level code, whatever it raised
        return FAIL, f"the code `{code.name}` needs raised {type(e).__name__}: {_first_line(str(e))}"
    try:
        symbol, line = _CAPTURED["judge"](number, fn, test)
    except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt … from the student's function
        return FAIL, f"`{code.name}` raised {type(e).__name__} while it was judged"
    if symbol != PASS:
        return symbol, line
    for what, args, want in hidden:
        try:
            got = fn(*args)
        except BaseException as e:  # noqa: BLE001
            return FAIL, f"passes the check's own cases but raised {type(e).__name__} on {what} (drawn when grading)"
        if not spec.same(got, want):
            return FAIL, (f"passes the check's own cases but not {what} (drawn when grading): an answer "
                          "that fits only the check's cases does not count")
    return PASS, line


def _grade_notebook(student: str, path: str) -> tuple[str, dict]:
    """In a worker: fork a contained child for one notebook and collect its verdicts."""
    t0 = time.perf_counter()
    result = NotebookResult(path=path, notebook=None)
    if "init_error" in _SETTINGS:
        result.problem = f"{_INIT_FAILED}: {_SETTINGS['init_error']}"
        return student, asdict(result)
    work = Path(tempfile.mkdtemp(prefix="reclor-lab-grade-"))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read_fd)
            with os.fdopen(write_fd, "w", encoding="utf-8") as out:
                try:
                    _contain(work)
                    _judge_in_child(path, int(_SETTINGS["seed"]), out)
                except MemoryError:
                    problem = f"{LIMIT}: memory ({_gib(_SETTINGS['memory_bytes'])}) exceeded"
                    out.write(json.dumps({"problem": problem}) + "\n")
                except BaseException as e:  # noqa: BLE001
                    out.write(json.dumps({"problem": f"error: {type(e).__name__}: {_first_line(str(e))}"}) + "\n")
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    os.close(write_fd)
    lines, timed_out = _read_until(read_fd, float(_SETTINGS["wall_seconds"]))
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    _remove(work)
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if "number" in item:
            result.verdicts[item["number"]] = Verdict(item["number"], item["status"], item.get("reason", ""))
        elif "notebook" in item:
            result.notebook = item["notebook"]
            if item.get("unparsable"):
                result.problem = "left out (does not parse): " + "; ".join(item["unparsable"])
        elif "problem" in item:
            result.problem = item["problem"]
    if timed_out:
        result.problem = f"{LIMIT}: wall-clock time ({_SETTINGS['wall_seconds']} s) exceeded"
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        cpu_limit = sig in (signal.SIGXCPU, signal.SIGKILL)
        result.problem = (f"{LIMIT}: CPU time ({_SETTINGS['cpu_seconds']} s) exceeded" if cpu_limit
                          else f"error: the judging process died ({signal.Signals(sig).name})")
    elif os.WEXITSTATUS(status) and not result.problem:
        result.problem = f"error: the judging process exited with status {os.WEXITSTATUS(status)}"
    if result.notebook and result.problem:  # exercises the child never reached
        for n in _CAPTURED["exercises_of"](result.notebook):
            result.verdicts.setdefault(n, Verdict(n, LIMIT if result.problem.startswith(LIMIT) else FAIL,
                                                  f"not judged: {result.problem}"))
    result.seconds = time.perf_counter() - t0
    return student, asdict(result)


def _read_until(fd: int, seconds: float) -> tuple[list[str], bool]:
    deadline = time.monotonic() + seconds
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.close(fd)
            return data.decode("utf-8", "replace").splitlines(), True
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                os.close(fd)
                return data.decode("utf-8", "replace").splitlines(), False
            data += chunk


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _gib(n) -> str:
    return f"{int(n) / 2**30:g} GiB"


def _first_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else "no message"


# --- the class ------------------------------------------------------------------------------------------

def grade(paths: list[str | Path], jobs: int = 1, seed: int | None = None, cpu_seconds: int = CPU_SECONDS,
          memory_bytes: int = MEMORY_BYTES, wall_seconds: int = WALL_SECONDS, progress=print) -> list[StudentResult]:
    """Judge every student found in ``paths`` (:func:`find_students`) with ``jobs`` workers.

    ``seed`` draws the hidden cases; ``None`` draws a fresh one (the same seed gives the same
    cases, for re-grading one student the way the class was graded)."""
    students = find_students(paths)
    if jobs < 1:
        raise GradeError(f"--jobs must be at least 1, got {jobs}")
    settings = {"seed": secrets.randbits(32) if seed is None else seed, "cpu_seconds": cpu_seconds,
                "memory_bytes": memory_bytes, "wall_seconds": wall_seconds}
    results = {name: StudentResult(name) for name in students}
    tasks = [(name, str(path)) for name, files in students.items() for path in files]
    import multiprocessing

    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(settings,)) as pool:
        futures = {pool.submit(_grade_notebook, name, path): (name, path) for name, path in tasks}
        for future in as_completed(futures):
            try:
                name, raw = future.result()
            except Exception as e:  # noqa: BLE001 - a worker that died: one line in that row
                name, path = futures[future]
                raw = asdict(NotebookResult(path=path, notebook=None,
                                            problem=f"error: the grading worker stopped ({type(e).__name__})"))
            if raw["problem"].startswith(_INIT_FAILED):
                raise GradeError(raw["problem"] + "; check that models/tiny-llama exists (reclor-lab tiny build)")
            nb = NotebookResult(path=raw["path"], notebook=raw["notebook"], problem=raw["problem"],
                                seconds=raw["seconds"],
                                verdicts={int(k): Verdict(**v) for k, v in raw["verdicts"].items()})
            results[name].notebooks.append(nb)
            if progress:
                done = sum(v.passed for v in nb.verdicts.values())
                progress(f"{name}: {Path(nb.path).name} in {nb.seconds:.1f} s, {done} of {len(nb.verdicts)} passed"
                         + (f" ({nb.problem})" if nb.problem else ""))
    for r in results.values():
        r.notebooks.sort(key=lambda nb: nb.path)
    return [results[name] for name in students]


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
    return "graded" + (": " + "; ".join(r.problems) if r.problems else "")


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
    numbers = sorted(EXERCISES)
    possible = sum(points[n] for n in numbers)
    written = []
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
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    written.append(_write_csv(csv_path, rows))
    written.append(_write_csv(csv_path.with_name(csv_path.stem + "_details.csv"), details))
    folder = csv_path.with_name(csv_path.stem + "_feedback")
    folder.mkdir(exist_ok=True)
    for r in results:
        path = folder / f"{_safe(r.student)}.txt"
        _atomic_write(path, feedback(r, points))
        written.append(path)
    return written


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
            mark = {MISSING: "–", LIMIT: "⏱"}.get(v.status, v.status)
            lines.append(f"{mark} Exercise {n} ({title}): 0 point(s). {why}".rstrip())
    return "\n".join(lines) + "\n"


def table(results: list[StudentResult]) -> str:
    """Student × exercise (✅ ❌ ⏳ missing limit), then total and status, fixed width."""
    numbers = sorted(EXERCISES)
    w = max([len("student")] + [len(r.student) for r in results])
    lines = [f"{'student':<{w}}  " + " ".join(f"{n:>3}" for n in numbers) + "  total  status"]
    short = {PASS: "✅", FAIL: "❌", TODO: "⏳", MISSING: "-", LIMIT: "L"}
    for r in results:
        v = r.verdicts
        marks = " ".join(f"{short.get(v[n].status, '?'):>3}" for n in numbers)
        total = sum(x.passed for x in v.values())
        lines.append(f"{r.student:<{w}}  {marks}  {total:>2}/{len(numbers):<2}  {status_of(r)}")
    lines.append("(✅ passed  ❌ wrong or gamed  ⏳ not started  - missing  L a limit was hit before it was judged)")
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name) or "student"


def _write_csv(path: Path, rows: list[list]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    os.replace(tmp, path)
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
