"""Course mode: student notebooks generated from the reference ones.

The builder on small sample sources (stubs, hints, marker errors, determinism), the committed
student set against a fresh build, and the student notebooks executed: each self-check says
"not done yet" on its stub, and passes when the reference solution is put back.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from reclor_lab.config import REPO_ROOT, TINY_MODEL_DIR
from reclor_lab.course.build import (
    KERNELSPEC,
    CourseError,
    build_student_notebooks,
    check_up_to_date,
    put_back_solutions,
    student_source,
)

NOTEBOOKS = REPO_ROOT / "notebooks"
STUDENT = NOTEBOOKS / "student"
#: The exercise contract: at least this many exercises across the reference notebooks.
MIN_EXERCISES = 9
#: The student notebooks run on the smallest settings: the checks and the fallback path are the
#: same at any size, and the full tiny run (notebook 04) takes minutes on a loaded 2-core CPU.
#: Their own run directory, so the reference notebooks' run (nbval) is never touched.
SMALLEST = 'cfg = cfg.replace(train_limit=16, eval_limit=16, epochs=1, output_dir=f"runs/student-test-{PRESET}")'

SAMPLE = '''\
# %% [markdown]
# # A sample notebook
#
# A markdown cell may mention `# BEGIN SOLUTION` without opening a region:
# BEGIN SOLUTION

# %%
from reclor_lab.course import checks


# %%
def add(a: int, b: int) -> int:
    """Exercise 4: the sum."""
    # BEGIN SOLUTION: one operator
    return a + b
    # END SOLUTION


# %%
add = checks.check_count_lora_params(add)


# %%
class Box:
    def area(self) -> int:
        """The area, no exercise number in this docstring."""
        if True:
            # BEGIN SOLUTION
            side = 3
            return side * side
            # END SOLUTION
'''


def _sources(tmp_path: Path, **files: str) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text, encoding="utf-8")
    return src


# --- the builder ------------------------------------------------------------------------------------

def test_regions_become_stubs_with_hints_and_indentation():
    text, regions = student_source(SAMPLE, "sample.py")
    assert [(r.function, r.exercise, r.hint) for r in regions] == [
        ("add", 4, "one operator"),  # number from the docstring, hint from the BEGIN line
        ("area", 2, "write the body of `area` (its docstring says what it returns)"),  # counted
    ]
    assert "    # TODO: one operator\n    raise NotImplementedError(\"Exercise 4: write `add`\")\n" in text
    assert ("            # TODO: write the body of `area` (its docstring says what it returns)\n"
            "            raise NotImplementedError(\"Exercise 2: write `area`\")\n") in text
    assert "return a + b" not in text and "side * side" not in text
    assert "SOLUTION\n" in text  # the markdown mention stays: only code cells hold regions
    # everything outside the regions is kept, line for line
    kept = [line for line in SAMPLE.splitlines() if line not in text.splitlines()]
    assert all("SOLUTION" in k or "a + b" in k or "side" in k for k in kept), kept
    compile(text.replace("# %%", "#"), "student", "exec")  # still valid Python


@pytest.mark.parametrize("body, line, message", [
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n", 2, "never closed"),
    ("def f():\n    return 1\n    # END SOLUTION\n", 3, "without a `# BEGIN SOLUTION`"),
    ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n", 3,
     "inside the region opened at line 3"),  # file lines
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n\n# %%\nx = 1\n# END SOLUTION\n", 2, "not closed before"),
    ("# BEGIN SOLUTION\nx = 1\n# END SOLUTION\n", 1, "not inside a function"),
])
def test_unbalanced_markers_are_refused_naming_file_and_line(tmp_path, body, line, message):
    src = _sources(tmp_path, **{"01_ok.py": SAMPLE, "02_bad.py": "# %%\n" + body})
    out = tmp_path / "student"
    with pytest.raises(CourseError) as err:
        build_student_notebooks(src, out)
    text = str(err.value)
    assert text.startswith(f"{src / '02_bad.py'}:{line + 1}: "), text  # +1: the `# %%` line
    assert message in text and "\n" not in text
    assert not out.exists() or not any(out.iterdir())  # nothing written, not even 01


def test_build_writes_paired_notebooks_without_outputs(tmp_path):
    import jupytext
    import nbformat

    src = _sources(tmp_path, **{"01_sample.py": SAMPLE, "notes.py": "x = 1\n"})
    out = tmp_path / "student"
    written = build_student_notebooks(src, out)
    assert [p.name for p in written] == ["01_sample.py", "01_sample.ipynb"]  # only NN_*.py are notebooks
    nb = nbformat.read(out / "01_sample.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec == KERNELSPEC
    assert nb.metadata.jupytext.formats == "ipynb,py:percent"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    # the .py twin holds the same cells
    twin = jupytext.read(out / "01_sample.py")
    assert [c.source for c in twin.cells] == [c.source for c in nb.cells]


def test_build_is_deterministic_and_removes_stale_files(tmp_path):
    src = _sources(tmp_path, **{"01_sample.py": SAMPLE, "02_more.py": SAMPLE})
    a, b = tmp_path / "a", tmp_path / "b"
    build_student_notebooks(src, a)
    (a / "07_removed.ipynb").write_text("{}")  # a notebook since deleted from the reference
    (a / "my_notes.txt").write_text("kept")  # not a generated file
    time.sleep(0.01)
    build_student_notebooks(src, b)
    build_student_notebooks(src, a)
    names = sorted(p.name for p in b.iterdir())
    assert names == ["01_sample.ipynb", "01_sample.py", "02_more.ipynb", "02_more.py"]
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert not (a / "07_removed.ipynb").exists() and (a / "my_notes.txt").exists()


def test_check_up_to_date_names_what_a_build_would_change(tmp_path):
    src = _sources(tmp_path, **{"01_sample.py": SAMPLE})
    out = tmp_path / "student"
    assert check_up_to_date(src, out) == [out / "01_sample.ipynb", out / "01_sample.py"]
    build_student_notebooks(src, out)
    assert check_up_to_date(src, out) == []
    (src / "01_sample.py").write_text(SAMPLE.replace("the sum", "the sum of a and b"))
    assert check_up_to_date(src, out) == [out / "01_sample.ipynb", out / "01_sample.py"]
    build_student_notebooks(src, out)
    (out / "09_leftover.py").write_text("")
    assert check_up_to_date(src, out) == [out / "09_leftover.py"]


def test_putting_the_solutions_back_restores_the_reference(tmp_path):
    student, _ = student_source(SAMPLE)
    assert put_back_solutions(student, SAMPLE) == SAMPLE


# --- the committed student set -------------------------------------------------------------------------

def _references() -> list[Path]:
    refs = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    if not refs:
        pytest.skip("no reference notebooks in notebooks/ yet")
    return refs


def test_committed_student_set_is_up_to_date():
    _references()
    stale = check_up_to_date(NOTEBOOKS, STUDENT)
    assert not stale, ("the student notebooks are out of date with the reference ones: "
                       + ", ".join(str(p.relative_to(REPO_ROOT)) for p in stale)
                       + "; run `reclor-lab course build` and commit notebooks/student/")


def test_checks_know_every_exercise_and_its_notebook():
    """checks.EXERCISES (what summary() lists per notebook) matches the checks in the notebooks."""
    from reclor_lab.course import checks

    found = {}
    for ref in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")):
        for name in re.findall(r"^(\w+) = checks\.check_\w+\(\1\b", ref.read_text(encoding="utf-8"), re.M):
            found[name] = ref.name[:2]
    assert found == {name: notebook for notebook, _, name in checks.EXERCISES.values()}


def test_reference_notebooks_hold_enough_exercises_each_followed_by_its_check():
    total = 0
    for ref in _references():
        cells = _code_cells(ref.read_text(encoding="utf-8"))
        exercises = [k for k, c in enumerate(cells) if "# BEGIN SOLUTION" in c]
        for k in exercises:
            name = _function_name(cells[k])
            assert _check_cell(cells, k) is not None, (
                f"{ref.name}: exercise `{name}` has no later self-check cell `{name} = checks.check_…({name}, …)`")
        total += len(exercises)
    assert total >= MIN_EXERCISES



# --- no solution above or inside an exercise --------------------------------------------------------

def _giveaways(student_py: str) -> list[str]:
    """Each use, in a student notebook, of something that computes an exercise's answer
    (:func:`_short_giveaways`, any ``reference_…`` of the checks, or an import under the
    exercise's own name) in the cells from the top down to that exercise's check cell."""
    cells = _code_cells(student_py)
    found = []
    for k, source in enumerate(cells):
        if "raise NotImplementedError(\"Exercise" not in source:
            continue
        name, j = _function_name(source), _check_cell(cells, k)
        banned = [rf"\b{re.escape(w)}\b" for w in _short_giveaways(name)]
        banned += [r"\breference_\w+", rf"^\s*(from\s+\S+\s+)?import\b.*\b{name}\b"]
        for i in range(j + 1):
            code = "\n".join(line.split("#", 1)[0] for line in cells[i].splitlines())  # comments may name it
            for pattern in banned:
                if hit := re.search(pattern, code, re.M):
                    found.append(f"`{name}`: cell {i} uses {hit.group(0).strip()!r} before the exercise is checked")
    return found


def _short_giveaways(name: str) -> list[str]:
    """The names a student notebook may not use above exercise ``name``'s check, derived from the
    grader's qualified giveaways (``SPECS[name].giveaways``, the one list): the last part of each
    (``reclor_lab.data.class_weights`` → ``class_weights``), or the last two where the last is the
    exercise's own name (``model.last_token_index``: the student's function has that name) or also
    names something the notebooks use rightly (:data:`_NAMES_ELSEWHERE`)."""
    from reclor_lab.course.grading.exercises import SPECS

    short = []
    for qualified in SPECS[name].giveaways:
        parts = qualified.split(".")
        short.append(".".join(parts[-2:]) if parts[-1] in (name, *_NAMES_ELSEWHERE) else parts[-1])
    return sorted(set(short))


#: Last names of giveaways that also name something else: Hugging Face's `evaluate` package
#: (``train.evaluate`` is the giveaway), bitsandbytes' own ``Linear4bit`` and torch's ``Linear``
#: (peft's ``bnb.Linear4bit`` and ``lora.Linear`` are).
_NAMES_ELSEWHERE = ("evaluate", "Linear4bit", "Linear")


def test_the_short_giveaways_come_from_the_grader_s_list():
    assert "model.last_token_index" in _short_giveaways("last_token_index")
    assert {"class_weights", "reference_class_weights"} <= set(_short_giveaways("class_weights_by_hand"))
    assert {"lora.LoRALinear", "ReferenceLoRALinear", "get_peft_model"} <= set(_short_giveaways("LoRALinear"))
    assert {"load_model", "bnb_config", "inject_lora", "prepare_kbit", "find_lora_targets", "tiny_model",
            "reference_qlora_model"} <= set(_short_giveaways("qlora_model"))


@pytest.mark.parametrize("name", [p.stem for p in sorted(STUDENT.glob("[0-9][0-9]_*.py"))] or ["(none built)"])
def test_student_notebook_gives_no_exercise_away(name):
    """A student must not be able to read an exercise's answer off the package above or inside it:
    no import or use of the reference, or of the package function that computes the same thing,
    before the exercise's check cell."""
    path = STUDENT / f"{name}.py"
    if not path.exists():
        pytest.skip("no student notebooks built yet (run `reclor-lab course build`)")
    assert _giveaways(path.read_text(encoding="utf-8")) == []


def test_the_giveaway_scan_catches_an_import_above_the_exercise():
    student, _ = student_source(SAMPLE_WITH_GIVEAWAY, "sample.py")
    found = _giveaways(student)
    assert any("'format_example'" in f for f in found), found
    assert any("import" in f and "format_record" in f for f in found), found
    assert _giveaways(student.replace("from reclor_lab.data import format_example\n", "")
                      .replace("from reclor_lab.lib import format_record as fr\n", "")) == []


SAMPLE_WITH_GIVEAWAY = '''\
# %%
from reclor_lab.course import checks
from reclor_lab.data import format_example
from reclor_lab.lib import format_record as fr

# %%
def format_record(record: dict) -> str:
    """Exercise 1: the layout."""
    # BEGIN SOLUTION
    return "x"
    # END SOLUTION


# %%
format_record = checks.check_format_record(format_record)

# %%
print(format_example({}, "t"))  # after the check: allowed
'''

# --- executing the student notebooks --------------------------------------------------------------------

def _code_cells(py_text: str) -> list[str]:
    import jupytext

    return [c.source for c in jupytext.reads(py_text, fmt="py:percent").cells if c.cell_type == "code"]


def _function_name(source: str) -> str:
    return re.search(r"^(?:def|class) (\w+)", source, re.M).group(1)


def _check_cell(sources: list[str], k: int) -> int | None:
    """Index of the self-check of the exercise defined in ``sources[k]`` (setup cells may come between)."""
    name = _function_name(sources[k])
    for j in range(k + 1, len(sources)):
        if re.search(rf"^{name} = checks\.check_\w+\({name}\b", sources[j], re.M):
            return j
    return None


def _with_solved_checks(student_py: str, reference_py: str):
    """The student notebook, with a cell after each self-check that defines the reference solution
    (put back into the stub), runs the same check on it, then restores the check's fallback, so the
    rest of the notebook still runs on the fallback the stub check returned. A cell after the one
    that builds ``cfg`` shrinks the run to :data:`SMALLEST`.

    Returns the notebook and, per exercise, the index of its check cell and of the injected cell.
    """
    import jupytext
    import nbformat

    solved = jupytext.reads(put_back_solutions(student_py, reference_py), fmt="py:percent")
    nb = jupytext.reads(student_py, fmt="py:percent")
    assert [c.cell_type for c in solved.cells] == [c.cell_type for c in nb.cells]
    sources = [c.source if c.cell_type == "code" else "" for c in nb.cells]
    injected_after: dict[int, str] = {}
    for k, source in enumerate(sources):
        if "raise NotImplementedError(\"Exercise" in source:
            name, j = _function_name(source), _check_cell(sources, k)
            assert j is not None, f"exercise `{name}` has no self-check cell after it"
            injected_after[j] = "\n".join([
                f"_fallback = {name}",
                solved.cells[k].source,  # the exercise cell with its solution back in
                sources[j],  # the same self-check, on the solution
                f"{name} = _fallback  # the rest of the notebook runs on the stub's fallback",
            ])
    first_cfg = next(k for k, src in enumerate(sources) if "cfg = get_preset(" in src)
    cells, marks = [], []
    for k, cell in enumerate(nb.cells):
        cells.append(cell)
        if k == first_cfg:
            cells.append(nbformat.v4.new_code_cell(SMALLEST))
        if k in injected_after:
            marks.append((len(cells) - 1, len(cells)))
            cells.append(nbformat.v4.new_code_cell(injected_after[k]))
    nb.cells = cells
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    return nb, marks


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
                   and o.get("name") == "stdout")


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.stem for p in sorted(STUDENT.glob("[0-9][0-9]_*.py"))] or ["(none built)"])
def test_student_notebook_runs_on_stubs_and_checks_pass_with_solutions(name):
    """One execution per notebook proves both paths: the stub's check says "not done yet" and hands
    back the reference (the rest of the notebook runs on it), and the injected cell after it shows
    that the reference solution, put back into the stub, passes the same check."""
    from nbclient import NotebookClient

    student_py = STUDENT / f"{name}.py"
    if not student_py.exists():
        pytest.skip("no student notebooks built yet (run `reclor-lab course build`)")
    if not (TINY_MODEL_DIR / "config.json").exists():
        pytest.skip(f"{TINY_MODEL_DIR} is missing; run `reclor-lab tiny build`")
    nb, marks = _with_solved_checks(student_py.read_text(encoding="utf-8"),
                                    (NOTEBOOKS / f"{name}.py").read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    NotebookClient(nb, kernel_name=KERNELSPEC["name"], timeout=900,
                   resources={"metadata": {"path": str(STUDENT)}}).execute()
    print(f"{name}: executed in {time.perf_counter() - t0:.1f} s with {len(marks)} exercise(s)")
    for check_cell, solved_cell in marks:
        stub_line, solved_line = _text(nb.cells[check_cell]), _text(nb.cells[solved_cell])
        assert re.search(r"^⏳ Exercise \d+ \(.*\): not done yet.*using the reference implementation so "
                         r"the rest of the notebook runs\.$", stub_line, re.M), stub_line
        assert re.search(r"^✅ Exercise \d+ \(.*\): correct\.$", solved_line, re.M), solved_line
    if not marks:  # a notebook without exercises ends without a summary
        assert "checks.summary()" not in nb.cells[-1].source
        return
    summary = _text(nb.cells[-1]).splitlines()  # checks.summary(): every exercise still the stub's
    assert nb.cells[-1].source == "checks.summary()"
    assert len(summary) == len(marks) + 1, summary
    assert all(line.startswith("⏳ Exercise ") and "not done yet" in line for line in summary[:-1]), summary
    assert summary[-1] == f"0 of {len(marks)} exercises done."
