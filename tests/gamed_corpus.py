"""Submissions a student who games the grader would hand in, generated from the committed student
notebooks (never ReClor text): each is the student notebook, solved or not, with one trick.

:func:`write_class` writes a class folder (one sub-folder per student, named after the trick) and
returns what each must get. ``python tests/gamed_corpus.py FOLDER`` writes it for a manual look.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat

from reclor_lab.course import checks
from reclor_lab.config import REPO_ROOT
from reclor_lab.course.build import KERNELSPEC, put_back_solutions

NOTEBOOKS = REPO_ROOT / "notebooks"
NB = {"01": "01_data_and_tokenization", "03": "03_lora", "04": "04_training_loop"}


@dataclass(frozen=True)
class Case:
    """One submission: its student (folder) name, notebook, expected status per exercise, and a
    word the reason of each ❌ must contain."""

    student: str
    notebook: str
    expect: dict[int, str]
    reason: str = ""


def sources(notebook: str) -> tuple[list[str], list[str]]:
    """The student notebook's cell sources (stubs) and the same with the solutions put back."""
    student = (NOTEBOOKS / "student" / f"{NB[notebook]}.py").read_text(encoding="utf-8")
    solved = put_back_solutions(student, (NOTEBOOKS / f"{NB[notebook]}.py").read_text(encoding="utf-8"))
    return _cells(student), _cells(solved)


def _cells(py: str) -> list[str]:
    nb = jupytext.reads(py, fmt="py:percent")
    return [c.source if c.cell_type == "code" else "#md " + c.source.replace("\n", " ") for c in nb.cells]


def _def_cell(cells: list[str], name: str) -> int:
    return next(k for k, c in enumerate(cells) if re.search(rf"^def {name}\(", c, re.M))


def _check_cell(cells: list[str], name: str) -> int:
    return next(k for k, c in enumerate(cells) if re.search(rf"^{name} = checks\.check_\w+\({name}\b", c, re.M))


def _write(cells: list[str], path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(c[4:]) if c.startswith("#md ")
                                         else nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _replace_def(cells: list[str], name: str, new: str) -> list[str]:
    cells = list(cells)
    cells[_def_cell(cells, name)] = new
    return cells


def _insert_after(cells: list[str], k: int, *new: str) -> list[str]:
    return cells[:k + 1] + list(new) + cells[k + 1:]


def _count_cache() -> dict:
    return {repr((shapes, r)): checks.reference_count_lora_params(shapes, r) for _, shapes, r in checks._COUNT_CASES}


def _format_cache() -> dict:
    return {r["id_string"]: checks.reference_format_record(r) for r in checks.CHECK_RECORDS}


def write_class(folder: Path) -> list[Case]:
    """Write every case into ``folder`` (``folder/<student>/<notebook>.ipynb``); return the cases."""
    stub01, solved01 = sources("01")
    stub03, solved03 = sources("03")
    stub04, solved04 = sources("04")
    ALL01 = {1: "❌", 2: "❌", 3: "❌"}
    cases: list[tuple[Case, list[str]]] = []

    def add(case: Case, cells: list[str]) -> None:
        cases.append((case, cells))

    # --- honest work: the baseline every trick is compared with
    add(Case("honest_solved", "01", {1: "✅", 2: "✅", 3: "✅"}), solved01)
    add(Case("honest_untouched", "01", {1: "⏳", 2: "⏳", 3: "⏳"}), stub01)
    k = _check_cell(stub01, "format_record")
    wrong = ('def format_record(record):\n    a, b, c, d = record["answers"]\n'
             '    return f"Context: {record[\'context\']} Question: {record[\'question\']} Option: {a} Option: {b} '
             'Option: {c} Option: {d}"')
    fixed = solved01[_def_cell(solved01, "format_record")]
    add(Case("honest_fail_then_fix", "01", {1: "✅", 2: "⏳", 3: "⏳"}),
        _insert_after(_replace_def(stub01, "format_record", wrong), k,
                      fixed, "format_record = checks.check_format_record(format_record)"))
    add(Case("honest_wrong", "01", {1: "❌", 2: "⏳", 3: "⏳"}, "Option A:"),
        _replace_def(stub01, "format_record", wrong))

    # --- reading the answer off the package
    add(Case("calls_reference", "01", {1: "❌"}, "reference_format_record"),
        _replace_def(solved01, "format_record",
                     "def format_record(record):\n    return checks.reference_format_record(record)"))
    add(Case("imports_package_function", "01", {2: "❌"}, "class_weights"),
        _replace_def(solved01, "class_weights_by_hand",
                     "from reclor_lab.data import class_weights as cw\n\n"
                     "def class_weights_by_hand(labels):\n    return cw(labels).tolist()"))
    add(Case("imports_own_name", "01", {3: "❌"}, "imports `last_token_index`"),
        _replace_def(solved01, "last_token_index", "from reclor_lab.model import last_token_index"))
    add(Case("dunder_import", "01", {2: "❌"}, "__import__"),
        _replace_def(solved01, "class_weights_by_hand",
                     "def class_weights_by_hand(labels):\n"
                     "    return __import__('reclor_lab.data').data.class_weights(labels).tolist()"))
    add(Case("importlib_and_getattr", "01", {2: "❌"}, "importlib"),
        _replace_def(solved01, "class_weights_by_hand",
                     "import importlib\n\ndef class_weights_by_hand(labels):\n"
                     "    m = importlib.import_module('reclor_lab.' + 'data')\n"
                     "    return getattr(m, 'class_' + 'weights')(labels).tolist()"))
    add(Case("sys_modules", "01", {2: "❌"}, "sys"),
        _replace_def(solved01, "class_weights_by_hand",
                     "import sys\n\ndef class_weights_by_hand(labels):\n"
                     "    return sys.modules['reclor_lab.data'].class_weights(labels).tolist()"))
    add(Case("exec_string", "01", {1: "❌"}, "exec"),
        _replace_def(solved01, "format_record",
                     "SRC = 'from reclor_lab.data import format_example as f'\n\n"
                     "def format_record(record):\n    ns = {}\n    exec(SRC, ns)\n    return ns['f'](record)"))
    add(Case("torch_reaches_sys", "01", {2: "❌"}, ".sys"),
        _replace_def(solved01, "class_weights_by_hand",
                     "def class_weights_by_hand(labels):\n"
                     "    return torch.sys.modules['reclor_lab.data'].class_weights(labels).tolist()"))

    # --- the stand-in and the checks themselves
    add(Case("recheck_reference", "01", {1: "❌"}, ".reference"),
        _insert_after(stub01, k, "format_record = checks.check_format_record(format_record.reference)"))
    add(Case("patch_judge", "01", ALL01, "writes into reclor_lab.course.checks"),
        _insert_after(stub01, 0, "from reclor_lab.course import checks as c\n"
                                 "c._judge = lambda n, fn, test: ('✅', 'fine')"))
    add(Case("patch_summary", "01", ALL01, "writes into reclor_lab.course.checks"),
        stub01 + ["checks.summary = lambda *a: None"])
    add(Case("write_checked", "01", ALL01, "reclor_lab.course.checks"),
        _insert_after(stub01, k, "checks._CHECKED[1] = (lambda fn: None, format_record)"))
    add(Case("patch_when_called", "01", {1: "❌"}, "reclor_lab.course.checks"),
        _replace_def(stub01, "format_record",
                     "def format_record(record):\n    import reclor_lab.course.checks as c\n"
                     "    c.reference_format_record = lambda r: 'x'\n    return 'x'"))
    add(Case("setattr_on_checks", "01", ALL01, "setattr"),
        stub01 + ["setattr(checks, 'summary', print)"])
    deleted = [c for c in stub01 if not re.search(r"= checks\.check_|checks\.summary\(\)", c)]
    add(Case("deleted_checks_prints_verdicts", "01", ALL01, "verdict line"),
        deleted + ["print('✅ Exercise 1 (format a record): correct.')\n"
                   "print('✅ Exercise 2 (class weights): correct.')\n"
                   "print('✅ Exercise 3 (the position the head reads): correct.')"])

    add(Case("always_equal", "01", {1: "❌"}, "__eq__"),
        _replace_def(solved01, "format_record",
                     "class Anything(str):\n    def __eq__(self, other):\n        return True\n\n"
                     "    def __ne__(self, other):\n        return False\n\n"
                     "def format_record(record):\n    return Anything('x')"))

    # --- answers that fit only the check's cases
    add(Case("cached_format_answers", "01", {1: "❌"}, "drawn when grading"),
        _replace_def(solved01, "format_record",
                     f"ANSWERS = {_format_cache()!r}\n\n"
                     "def format_record(record):\n    return ANSWERS[record['id_string']]"))
    add(Case("cached_count_answers", "03", {6: "❌"}, "drawn when grading"),
        _replace_def(solved03, "count_lora_params",
                     f"ANSWERS = {_count_cache()!r}\n\n"
                     "def count_lora_params(shapes, r):\n    return ANSWERS[repr((list(shapes), r))]"))

    # --- the notebook's own end, and a later wrong definition
    add(Case("exits_before_summary", "01", {1: "❌"}, "Option A:"),
        _insert_after(solved01, _def_cell(solved01, "last_token_index") + 2,
                      wrong, "import os\nos._exit(0)"))
    add(Case("passes_then_redefines_wrong", "01", {1: "❌", 2: "✅", 3: "✅"}, "Option A:"),
        solved01 + [wrong])
    add(Case("mutates_the_batch", "04", {9: "✅", 10: "❌"}, "changed the caller's batch"),
        _replace_def(solved04, "one_train_step",
                     "def one_train_step(model, batch, optimizer, weights, max_grad_norm=0.3):\n"
                     "    labels = batch.pop('labels')\n"
                     "    loss = weighted_ce(model(**batch).logits, labels, weights)\n"
                     "    loss.backward()\n"
                     "    torch.nn.utils.clip_grad_norm_(\n"
                     "        [p for p in model.parameters() if p.requires_grad], max_grad_norm)\n"
                     "    optimizer.step()\n    optimizer.zero_grad()\n    return loss.item()"))
    for case, cells in cases:
        _write(cells, folder / case.student / f"{NB[case.notebook]}.ipynb")
    return [case for case, _ in cases]


if __name__ == "__main__":
    for case in write_class(Path(sys.argv[1])):
        print(case.student, case.expect)
