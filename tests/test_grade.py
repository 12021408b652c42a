"""`reclor-lab course grade`: every gamed submission of the corpus (tests/gamed_corpus.py) is ❌ with
its reason, honest work is ✅ / ❌ / ⏳ as it deserves, limits give a row saying which, and the
gradebook, details and feedback files have the documented layout."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import nbformat
import pytest

from reclor_lab.course import checks, grade, judge
from reclor_lab.cli import main
from reclor_lab.config import REPO_ROOT
from reclor_lab.course.build import KERNELSPEC

from gamed_corpus import write_class

SEED = 20261203


def _small(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


ACCURACY = ("def accuracy_over_examples(batches):\n"
            "    right = sum(p == y for ps, ys in batches for p, y in zip(ps, ys))\n"
            "    return right / sum(len(ys) for _, ys in batches)")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The corpus, plus submissions that break limits or are not notebooks, graded once (2 jobs)."""
    folder = tmp_path_factory.mktemp("class")
    cases = write_class(folder)
    _small(folder / "loops" / "05_results.ipynb",
           "def accuracy_over_examples(batches):\n    while True:\n        pass")
    _small(folder / "hog" / "05_results.ipynb",
           "def accuracy_over_examples(batches):\n    return len(bytearray(64 * 2**30))")
    (folder / "not_json").mkdir()
    (folder / "not_json" / "05_results.ipynb").write_text("this is not a notebook", encoding="utf-8")
    _small(folder / "loose__05_results.ipynb", ACCURACY)  # the file-name convention for a loose file
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    runs_before = sorted(os.listdir(REPO_ROOT / "runs")) if (REPO_ROOT / "runs").exists() else []
    results = grade.grade([folder], jobs=2, seed=SEED, cpu_seconds=5, wall_seconds=120, progress=None)
    return folder, cases, {r.student: r for r in results}, before, runs_before


@pytest.mark.slow
def test_every_gamed_submission_is_failed_with_its_reason_and_honest_work_is_not(graded):
    _, cases, results, _, _ = graded
    assert len(cases) >= 20
    for case in cases:
        verdicts = results[case.student].verdicts
        for number, status in case.expect.items():
            v = verdicts[number]
            assert v.status == status, f"{case.student}: exercise {number} is {v.status} ({v.reason})"
            if status == "❌":
                assert v.reason and (case.reason in v.reason or number not in _named(case)), (case.student, v.reason)
        assert not results[case.student].problems, (case.student, results[case.student].problems)
    gamed = [c for c in cases if not c.student.startswith("honest")]
    for case in gamed:  # never ✅ for the exercise the trick is about
        assert all(results[case.student].verdicts[n].status != "✅" for n, s in case.expect.items() if s == "❌")


def _named(case) -> list[int]:
    """The exercises whose reason must contain the case's word: the first ❌ one (all share a reason)."""
    return [min(n for n, s in case.expect.items() if s == "❌")]


@pytest.mark.slow
def test_limits_and_broken_files_get_a_row_saying_which(graded):
    _, _, results, _, _ = graded
    loops = results["loops"]
    assert loops.verdicts[11].status == "limit" and "CPU time (5 s) exceeded" in loops.problems[0], loops.problems
    hog = results["hog"].verdicts[11]
    assert hog.status == "❌" and "MemoryError" in hog.reason, hog
    not_json = results["not_json"]
    assert not_json.problems == ["05_results.ipynb: not a notebook (JSONDecodeError)"]
    assert not_json.verdicts[11].status == "missing"
    assert results["loose"].verdicts[11].status == "✅"  # loose__05_results.ipynb: student "loose"
    assert results["loose"].verdicts[1].status == "missing"


@pytest.mark.slow
def test_grading_changes_nothing_it_was_given(graded):
    folder, _, _, before, runs_before = graded
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    runs_after = sorted(os.listdir(REPO_ROOT / "runs")) if (REPO_ROOT / "runs").exists() else []
    assert runs_after == runs_before


@pytest.mark.slow
def test_gradebook_details_and_feedback(graded, tmp_path):
    _, _, results, _, _ = graded
    rows = [results["honest_solved"], results["patch_judge"], results["loops"]]
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
    assert book[2]["total"] == "0"
    assert book[3]["status"].startswith("graded: 05_results.ipynb: limit: CPU time")
    details = list(csv.DictReader((tmp_path / "grades_details.csv").open(encoding="utf-8")))
    assert len(details) == 3 * len(numbers)
    judge_row = next(d for d in details if d["student"] == "patch_judge" and d["exercise"] == "1")
    assert judge_row["status"] == "❌" and "writes into reclor_lab.course.checks" in judge_row["reason"]
    feedback = (tmp_path / "grades_feedback" / "patch_judge.txt").read_text(encoding="utf-8")
    assert ("❌ Exercise 1 (format a record): 0 point(s). gamed: code cell 1 writes into reclor_lab.course.checks"
            in feedback)
    assert "01_data_and_tokenization.ipynb (notebook 01), judged in" in feedback
    assert len(written) == 2 + 3


@pytest.mark.slow
def test_a_wrong_answer_gets_its_hint_in_the_feedback(graded):
    _, _, results, _, _ = graded
    text = grade.feedback(results["honest_wrong"], grade.parse_points(None))
    assert "❌ Exercise 1 (format a record): 0 point(s). on test record 0: the text has no 'Option A:'" in text
    assert "⏳ Exercise 2 (class weights): 0 point(s). not done yet" in text


def test_the_judged_module_is_the_final_def_and_what_it_needs(tmp_path):
    path = _small(tmp_path / "01_x.ipynb",
                  "import torch\nfrom collections import Counter\nN = 4\nUNUSED = open",
                  "def helper(labels):\n    return Counter(labels)",
                  "def class_weights_by_hand(labels):\n    raise NotImplementedError",
                  "class_weights_by_hand = checks.check_class_weights(class_weights_by_hand)",
                  "%matplotlib inline\ndef class_weights_by_hand(labels):\n    c = helper(labels)\n"
                  "    return [len(labels) / (N * c[k]) if c[k] else 1.0 for k in range(N)]")
    nb = judge.read_notebook(path)
    code = judge.exercise_code(nb, "class_weights_by_hand")
    assert code.source.splitlines()[0] == "from collections import Counter"
    assert "N = 4" in code.source and "def helper" in code.source and "NotImplementedError" not in code.source
    assert "torch" not in code.source and "open" not in code.source  # not needed, not taken
    assert judge.scan_exercise(code, 2) == ""
    assert judge.notebook_of(path, nb) == "01"


def test_notebook_state_is_not_allowed_but_not_called_gamed(tmp_path):
    path = _small(tmp_path / "04_x.ipynb",
                  "from reclor_lab.train import setup\ndemo = setup(None)",
                  "def weighted_ce(logits, labels, weights):\n    return demo.weights",
                  "import sys\ndef one_train_step(model, batch, optimizer, weights):\n    return sys.maxsize")
    nb = judge.read_notebook(path)
    uses_state = judge.scan_exercise(judge.exercise_code(nb, "weighted_ce"), 9)
    assert uses_state.startswith("`weighted_ce` needs `from reclor_lab.train import setup`"), uses_state
    assert judge.scan_exercise(judge.exercise_code(nb, "one_train_step"), 10).startswith("gamed: ")


def test_the_runtime_guard_sees_a_rebound_name():
    before = grade._snapshot()
    real = checks._judge
    try:
        checks._judge = lambda *a: ("✅", "")
        assert grade._changed_since(before) == "reclor_lab.course.checks._judge"
    finally:
        checks._judge = real
    assert grade._changed_since(before) == ""


def test_containment_in_a_child(tmp_path, monkeypatch):
    """Offline, a HOME and folder of its own, none of the grader's environment, limits set."""
    monkeypatch.setenv("INSTRUCTOR_SECRET", "x")
    grade._SETTINGS.update(cpu_seconds=7, memory_bytes=2**30)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        import resource

        try:
            grade._contain(tmp_path)
            # a network namespace of its own has only a loopback; without one, sockets are refused
            alone = [name for _, name in socket.if_nameindex()] == ["lo"]
            net = "refused" if alone or socket.create_connection.__name__ == "refuse" else "open"
            facts = [net, str(os.environ.get("INSTRUCTOR_SECRET")), os.environ["HOME"], os.getcwd(),
                     str(resource.getrlimit(resource.RLIMIT_CPU)[0]), str(resource.getrlimit(resource.RLIMIT_FSIZE)[0])]
            os.write(w, "\n".join(facts).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        facts = f.read().splitlines()
    assert facts == ["refused", "None", str(tmp_path), str(tmp_path), "7", str(grade.FILE_BYTES)]


def test_every_exercise_has_its_judging_and_its_reference_passes_it():
    """Generic over checks.EXERCISES: each has a Judging whose reference passes the check and its
    hidden cases (so a new exercise that forgets its entry fails here)."""
    import random

    ctx = grade.JudgeContext()
    for number, (_, _, name) in sorted(checks.EXERCISES.items()):
        assert name in checks.JUDGING, f"exercise {number} `{name}` has no entry in checks.JUDGING"
        spec = checks.JUDGING[name]
        test = checks.build_test(spec.check, *spec.inputs(ctx))
        assert checks._judge(number, spec.reference, test)[0] == "✅", name
        rng = random.Random(SEED)
        for what, args in spec.hidden(rng, ctx) if spec.hidden else []:
            assert spec.same(spec.reference(*args), spec.reference(*args)), (name, what)


def test_hidden_cases_follow_the_seed():
    import random

    spec = checks.JUDGING["count_lora_params"]
    draw = lambda seed: spec.hidden(random.Random(seed), None)  # noqa: E731
    assert draw(1) == draw(1) and draw(1) != draw(2)


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
