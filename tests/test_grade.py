"""`reclor-lab course grade` on generated submissions: the solved reference, the untouched student
notebook, a wrong answer, one that raises at import, one that loops forever, one that is not JSON."""

from __future__ import annotations

import csv
from pathlib import Path

import jupytext
import nbformat
import pytest

from reclor_lab import grade
from reclor_lab.cli import main
from reclor_lab.config import REPO_ROOT
from reclor_lab.course import KERNELSPEC, put_back_solutions

NOTEBOOKS = REPO_ROOT / "notebooks"
NB01 = "01_data_and_tokenization"
#: A wrong `format_record`: the labels without their letters ("Option:"), a typical slip.
WRONG_FORMAT = '''    a, b, c, d = record["answers"]
    return (f"Context: {record['context']} Question: {record['question']} "
            f"Option: {a} Option: {b} Option: {c} Option: {d}")'''


def _write(nb, path: Path) -> Path:
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nbformat.write(nb, path)
    return path


def _small(path: Path, *cells: str) -> Path:
    return _write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), path)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Every kind of submission in one folder, graded once (one kernel each)."""
    folder = tmp_path_factory.mktemp("submissions")
    student_py = (NOTEBOOKS / "student" / f"{NB01}.py").read_text(encoding="utf-8")
    solved = put_back_solutions(student_py, (NOTEBOOKS / f"{NB01}.py").read_text(encoding="utf-8"))
    _write(jupytext.reads(solved, fmt="py:percent"), folder / "a_solved.ipynb")
    _write(jupytext.reads(student_py, fmt="py:percent"), folder / "b_untouched.ipynb")
    stub = '    raise NotImplementedError("Exercise 1: write `format_record`")'
    assert stub in student_py
    _write(jupytext.reads(student_py.replace(stub, WRONG_FORMAT), fmt="py:percent"), folder / "c_wrong.ipynb")
    _small(folder / "d_import_error.ipynb", "import reclor_lab_no_such_module",
           "from reclor_lab import checks",
           "def accuracy_over_examples(batches):\n    raise NotImplementedError",
           "accuracy_over_examples = checks.check_accuracy(accuracy_over_examples)")
    _small(folder / "e_loops.ipynb", "from reclor_lab import checks",
           "def accuracy_over_examples(batches):\n    raise NotImplementedError",
           "accuracy_over_examples = checks.check_accuracy(accuracy_over_examples)",
           "import time\nwhile True:\n    time.sleep(0.1)")
    (folder / "f_not_json.ipynb").write_text("this is not a notebook", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    runs_before = sorted(p.name for p in (REPO_ROOT / "runs").iterdir()) if (REPO_ROOT / "runs").exists() else []
    subs = grade.grade([folder], timeout=20, progress=None)
    return folder, before, runs_before, {s.path.name: s for s in subs}


@pytest.mark.slow
def test_each_kind_of_submission_gets_its_row(graded):
    _, _, _, subs = graded
    assert list(subs) == ["a_solved.ipynb", "b_untouched.ipynb", "c_wrong.ipynb", "d_import_error.ipynb",
                          "e_loops.ipynb", "f_not_json.ipynb"]
    assert subs["a_solved.ipynb"].results == {1: "✅", 2: "✅", 3: "✅"} and not subs["a_solved.ipynb"].problem
    assert subs["b_untouched.ipynb"].results == {1: "⏳", 2: "⏳", 3: "⏳"} and not subs["b_untouched.ipynb"].problem
    assert subs["c_wrong.ipynb"].results == {1: "❌", 2: "⏳", 3: "⏳"}
    d = subs["d_import_error.ipynb"]
    assert d.results == {11: "⏳", 12: "⏳"}  # the cells after the failed import still ran; 12 is notebook 05's too
    assert d.problem.startswith("error: code cell 1: ModuleNotFoundError"), d.problem
    e = subs["e_loops.ipynb"]
    assert e.results == {11: "⏳", 12: "timeout"} and e.problem == "timeout: a cell ran longer than 20 s"
    f = subs["f_not_json.ipynb"]
    assert f.results == {} and f.problem.startswith("not a notebook")


@pytest.mark.slow
def test_grading_changes_nothing_it_was_given(graded):
    folder, before, runs_before, _ = graded
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    runs_after = sorted(p.name for p in (REPO_ROOT / "runs").iterdir()) if (REPO_ROOT / "runs").exists() else []
    assert runs_after == runs_before  # the notebooks' runs/ went to a temporary directory


@pytest.mark.slow
def test_table_and_csv(graded, tmp_path):
    _, _, _, subs = graded
    rows = list(subs.values())
    text = grade.table(rows)
    assert text.splitlines()[0].split() == ["submission", "ex", "1", "ex", "2", "ex", "3", "ex", "11", "ex", "12",
                                             "notes"]
    assert "timeout: a cell ran longer than 20 s" in text and "not a notebook" in text
    out = tmp_path / "grades.csv"
    grade.write_csv(rows, out)
    table = list(csv.reader(out.open(encoding="utf-8")))
    assert table[0] == ["submission", "exercise 1", "exercise 2", "exercise 3", "exercise 11", "exercise 12", "problem"]
    assert table[1][1:6] == ["✅", "✅", "✅", "", ""] and table[5][6] == "timeout: a cell ran longer than 20 s"


def test_bad_paths_get_one_clear_line(tmp_path, capsys):
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
