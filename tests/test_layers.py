"""The package's import graph, read from its source with ``ast``: every module has a place in the
layer order that ``reclor_lab/__init__.py`` states, no import (function-local ones included)
runs against it, and no imports go in a circle. The planner stays free of torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "reclor_lab"


def stated_layers() -> list[list[str]]:
    """The numbered layers of the package docstring, lowest first: the ````name```` items before
    the first colon of each numbered paragraph."""
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8")))
    items = re.split(r"^(\d+)\. ", doc, flags=re.M)[1:]
    layers = []
    for number, text in zip(items[::2], items[1::2]):
        assert int(number) == len(layers) + 1, f"layer {number} is out of order in the package docstring"
        head = re.split(r":\s", text, maxsplit=1)[0]
        layers.append(re.findall(r"``([\w.]+)``", head))
    return layers


def _is_module_package(init: Path) -> bool:
    """A sub-package whose ``__init__`` holds code (``course/checks/``: one module per notebook,
    every name re-exported) is a module of its own, named by its folder."""
    body = ast.parse(init.read_text(encoding="utf-8")).body
    return init.parent != PACKAGE and any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                                          for n in body)


def modules() -> set[str]:
    """Every module of the package by its dotted name below ``reclor_lab`` (``runs.rundir``); a
    sub-package's ``__init__`` that holds only its docstring is not a module of its own here."""
    found = set()
    for p in PACKAGE.rglob("*.py"):
        if "metric_modules" in p.parts:
            continue
        if p.name != "__init__.py":
            found.add(".".join(p.relative_to(PACKAGE).with_suffix("").parts))
        elif _is_module_package(p):
            found.add(".".join(p.parent.relative_to(PACKAGE).parts))
    return found


def module_path(name: str) -> Path:
    path = PACKAGE.joinpath(*name.split(".")).with_suffix(".py")
    return path if path.exists() else PACKAGE.joinpath(*name.split("."), "__init__.py")


def imports_of(path: Path, known: set[str]) -> dict[str, int]:
    """The kit's modules ``path`` imports, anywhere in it (function-local imports too), with the
    line of the first such import. A relative import is counted as the kit's (the package
    imports absolutely; a relative one must not slip past the layers)."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name.removeprefix("reclor_lab.") for a in node.names if a.name.startswith("reclor_lab.")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level or module == "reclor_lab" or module.startswith("reclor_lab."):
                base = module.removeprefix("reclor_lab").lstrip(".") if not node.level else module
                # ``from reclor_lab.runs import rundir``: the module is runs.rundir; from a module, its name
                names = [f"{base}.{a.name}".lstrip(".") if f"{base}.{a.name}".lstrip(".") in known else base
                         for a in node.names]
        for name in names:
            if name in known:
                found.setdefault(name, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    known = modules()
    return {m: {n: line for n, line in imports_of(module_path(m), known).items() if n != m}
            for m in sorted(known)}


def test_the_stated_layers_name_every_module_once():
    listed = [m for layer in stated_layers() for m in layer]
    assert len(listed) == len(set(listed)), f"named twice: {sorted({m for m in listed if listed.count(m) > 1})}"
    assert set(listed) == modules(), (f"not in the package docstring's layers: {sorted(modules() - set(listed))}; "
                                      f"named but not a module: {sorted(set(listed) - modules())}")


def test_no_import_runs_against_the_layers():
    layer = {m: i for i, names in enumerate(stated_layers()) for m in names}
    upward = [f"{module_path(m).relative_to(PACKAGE.parent)}:{line} imports {n} (layer {layer[n] + 1}) "
              f"from layer {layer[m] + 1}"
              for m, edges in import_graph().items() for n, line in edges.items() if layer[n] > layer[m]]
    assert not upward, "\n".join(upward)


def test_no_imports_go_in_a_circle():
    graph = import_graph()
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = "open"
        path.append(m)
        for n in graph[m]:
            if state.get(n) == "open":
                return path[path.index(n):] + [n]
            if n not in state and (circle := visit(n)):
                return circle
        state[m] = "done"
        path.pop()
        return None

    for m in graph:
        if m not in state and (circle := visit(m)):
            pytest.fail("an import circle: " + " → ".join(circle))


#: The core's (the modules directly in reclor_lab/, the command layer apart) only ways into the
#: sub-packages, each stated in the package docstring.
CORE_INTO_SUB_PACKAGES = {
    ("train", "runs.session"),       # fit's named calls: run directory, resume, signals, the epoch's records
    ("train", "runs.distributed"),   # which process this is: setup, the evaluation's gather
    ("train", "tools.plan"),         # setup settles batch_size="auto" when its caller has not
    ("data", "runs.cache"),          # tokenized splits kept on disk, encode_texts
    ("config", "runs.config_checks"),  # the validator (problems), reading, the name check, the printers
    ("data", "runs.data_checks"),    # read_reclor's checks, the passage cut to max_len, token statistics
    ("model", "runs.loading"),       # load_model's and load_tokenizer's checks, errors, load report
    ("metrics", "runs.loading"),     # load_metric: the shipped metric scripts, loaded by path
    ("lora", "runs.adapters"),       # inject_lora's peft glue, target check, CPU dropout; TrainableReport
    ("model", "results.letters"),    # load_model's head_init="letters": the zero-shot scorer's rows
}
COMMAND_LAYER = {"cli", "__main__"}


def test_the_core_reaches_into_the_sub_packages_only_where_stated():
    graph = import_graph()
    core = {m for m in graph if "." not in m and m not in COMMAND_LAYER}
    reaching = {(m, n) for m in core for n in graph[m] if "." in n}
    assert reaching <= CORE_INTO_SUB_PACKAGES, f"not stated: {sorted(reaching - CORE_INTO_SUB_PACKAGES)}"
    doc = " ".join(ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))).split())
    for m, n in sorted(CORE_INTO_SUB_PACKAGES):
        assert f"``{m}`` → ``{n}``" in doc, f"the package docstring does not state {m} → {n}"


def test_the_package_map_names_every_module():
    """notebooks/README.md's map ("How the package is laid out") names every core module by its
    file, and every module of a sub-package (or its sub-package one level down: ``grading/``) in
    that sub-package's row."""
    text = (PACKAGE.parent / "notebooks" / "README.md").read_text(encoding="utf-8")
    section = text.split("## How the package is laid out", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)/` \| (.*)$", section, flags=re.M))
    missing = [m for m in sorted(modules())
               if ("." not in m and f"`{m}.py`" not in section)
               or ("." in m and not re.search(rf"`{m.split('.')[1]}/?`", rows.get(m.split(".")[0], "")))]
    assert not missing, f"not in notebooks/README.md's package map: {missing}"


def test_the_import_reader_sees_every_form_of_import(tmp_path):
    """The graph's reader itself: relative, absolute, ``from reclor_lab import x`` and imports
    inside functions all count; other packages do not."""
    src = tmp_path / "m.py"
    src.write_text("from .config import X\nimport reclor_lab.data\nfrom reclor_lab import plan\n"
                   "from reclor_lab.runs import rundir\nimport reclor_lab.course.checks\n"
                   "from reclor_lab.tools.synth import make\nimport torch\n\n"
                   "def f():\n    from reclor_lab.train import fit\n")
    known = {"config", "data", "plan", "runs.rundir", "course.checks", "tools.synth", "train", "torch"}
    got = imports_of(src, known)
    assert got == {"config": 1, "data": 2, "plan": 3, "runs.rundir": 4, "course.checks": 5, "tools.synth": 6,
                   "train": 10}


def test_the_planner_imports_no_torch():
    """``reclor-lab plan`` and the config's memory checks load no torch (seconds on a laptop)."""
    code = "import sys, reclor_lab.shapes, reclor_lab.tools.plan; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
