"""The notebooks: every jupytext pair in sync, stored outputs present, the right kernel.

nbval re-executes the .ipynb files themselves (``--nbval`` in pyproject's addopts); these tests
check what nbval cannot: that the percent-format .py a reviewer reads and the .ipynb a student
opens hold the same cells, that the .ipynb was committed executed (students see results before
running anything, and nbval needs something to compare), and the course-mode exercise markers.
"""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import nbformat
import pytest

from reclor_lab.course.checks import EXERCISES

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "reclor-lab"
#: The course order (the reference solution's), and how many exercises each notebook holds.
#: Exercises per notebook: the notebooks' markers must agree with the checks' exercise table.
EXPECTED = {name: sum(1 for notebook, _, _ in EXERCISES.values() if notebook == name[:2])
            for name in ("01_data_and_tokenization", "02_quantization", "03_lora", "04_training_loop",
                         "05_results", "06_baselines_and_errors")}
FIX = ("run `.venv/bin/jupytext --sync notebooks/{name}.py` (or save it in Jupyter with the "
       "jupytext extension), then re-execute the .ipynb")


def _names() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_every_notebook_is_a_pair():
    ipynb = {p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")}
    py = {p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py")}
    assert ipynb == py, (f"unpaired notebooks: .ipynb without .py {sorted(ipynb - py)}, "
                         f".py without .ipynb {sorted(py - ipynb)}")
    assert sorted(ipynb) == sorted(EXPECTED), f"notebooks {sorted(ipynb)}, expected {sorted(EXPECTED)}"


@pytest.mark.parametrize("name", _names())
def test_pair_in_sync(name):
    """The .py read by jupytext and the .ipynb hold the same cells (sources only)."""
    py = jupytext.read(NOTEBOOKS / f"{name}.py", fmt="py:percent")
    ipynb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    a, b = _cells(py), _cells(ipynb)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, (f"{name}: cell {i} differs between the .py and the .ipynb "
                        f"(.py: {x[1][:80]!r}; .ipynb: {y[1][:80]!r}); " + FIX.format(name=name))
    assert len(a) == len(b), f"{name}: {len(a)} cells in the .py, {len(b)} in the .ipynb; " + FIX.format(name=name)


@pytest.mark.parametrize("name", _names())
def test_ipynb_executed_with_outputs_and_kernel(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == KERNEL, f"{name}.ipynb: kernelspec {kernel!r}, expected {KERNEL!r}"
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{name}.ipynb: not executed top to bottom in one go (execution counts {counts}); re-run it with "
        "`jupyter nbconvert --to notebook --execute --inplace`")
    assert sum(len(c.outputs) for c in code) >= len(code) // 2, f"{name}.ipynb: stored outputs are missing"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}.ipynb: stored outputs hold an error: {errors[0].get('ename')}"


@pytest.mark.parametrize("name", _names())
def test_every_notebook_draws_a_figure(name):
    """Each notebook explains at least one concept with a figure its own code draws (issue 30)."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    drawn = [c for c in nb.cells if c.cell_type == "code"
             if any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert drawn, f"{name}.ipynb: no cell draws a figure"


def test_start_notebook_sets_and_prints_the_threads(monkeypatch, capsys, tmp_path):
    """One torch thread unless OMP_NUM_THREADS names another positive number; the count is printed."""
    import torch

    from reclor_lab.course import notebook

    threads = torch.get_num_threads()
    monkeypatch.setenv(notebook.WORKDIR_ENV, str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        for env, want in ((None, notebook.NOTEBOOK_THREADS), ("3", 3), ("0", notebook.NOTEBOOK_THREADS),
                          ("two", notebook.NOTEBOOK_THREADS)):
            if env is None:
                monkeypatch.delenv(notebook.THREADS_ENV, raising=False)
            else:
                monkeypatch.setenv(notebook.THREADS_ENV, env)
            notebook.start_notebook()
            assert torch.get_num_threads() == want, env
            assert capsys.readouterr().out.splitlines()[-1].split() == ["torch", "threads", str(want)]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", _names())
def test_first_code_cell_picks_the_tiny_preset(name):
    """Committed outputs come from the tiny CPU run, and every notebook starts with the preset."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.source.startswith('PRESET = "tiny"'), f"{name}: the first code cell must start with PRESET = \"tiny\""
    assert "HF_HUB_OFFLINE" in first.source, f"{name}: the first code cell must set HF_HUB_OFFLINE"


@pytest.mark.parametrize("name", _names())
def test_exercise_markers(name):
    """Course mode: each exercise's solution sits between the markers, followed by its check cell."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    found = 0
    for i, src in enumerate(code):
        begins, ends = src.count("# BEGIN SOLUTION"), src.count("# END SOLUTION")
        assert begins == ends, f"{name}: unbalanced solution markers in cell {src[:60]!r}"
        if begins:
            found += 1  # one exercise per cell (a class's exercise has a block per method)
            fn = re.search(r"^(?:def|class) (\w+)\b", src, re.M).group(1)  # exercise 14 is a class
            assert re.search(rf"^{fn} = checks\.check_\w+\({fn}\b", code[i + 1], re.M), (
                f"{name}: the cell after exercise `{fn}` must be `{fn} = checks.check_…({fn}, …)`")
    assert found == EXPECTED[name], f"{name}: {found} exercises, expected {EXPECTED[name]}"


def test_lora_explorer_follows_the_slider():
    """Notebook 03 drives its LoRA explorer through the slider (as a click would) and prints what the
    widget then shows: the tiny model's trainable count must change with r, and at the preset's r
    equal the count peft reported (the widget once read no layer shapes and always said 256)."""
    nb = nbformat.read(NOTEBOOKS / "03_lora.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    driven = next(c for c in code if "rank.value = value" in c.source)
    text = "".join(o.get("text", "") for o in driven.outputs if o.output_type == "stream")
    rows = re.findall(r"^r = +(\d+): \w+: ([\d,]+) trainable", text, re.M)
    counts = {int(r): int(n.replace(",", "")) for r, n in rows}
    assert len(counts) == 3 and len(set(counts.values())) == 3, text
    assert counts[4] < counts[16] < counts[64], counts
    report = next(c for c in code if "report = trainable_report(peft_model)" in c.source)
    reported = re.search(r"trainable params: ([\d,]+)", "".join(o.get("text", "") for o in report.outputs))
    assert reported and int(reported.group(1).replace(",", "")) == counts[16], (reported, counts)
