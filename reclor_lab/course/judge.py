"""Static reading of a submitted notebook: the code the grader runs for each exercise.

``reclor-lab course grade`` never runs a submission's notebook. It reads the code cells, parses
them (``ast``), and for each exercise builds a small module from the submission's **final**
top-level ``def`` of the exercise's function plus the top-level imports, ``def``\\ s, classes and
constants that ``def`` needs (followed name by name, transitively; another exercise's function
it calls is the checks' reference, as the notebook's stand-in would be). That module runs in the
student's sandbox (:mod:`reclor_lab.course.runner`), and is judged outside it on its answers.
Nothing a notebook printed or stored as output counts.

What it refuses here is only what is unambiguous: no ``def`` of the function, or the function's
name bound by an import (the answer imported, not written). Everything else is ordinary Python,
and the sandbox is what keeps a submission from the judgement.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import re
import symtable
from dataclasses import dataclass, field
from pathlib import Path

from reclor_lab.course.checks import EXERCISES

#: The notebook a file belongs to, from its name (``01_data_and_tokenization.ipynb``, ``ana__03_lora.ipynb``).
NOTEBOOK_IN_NAME = re.compile(r"(?:^|__|[^0-9])(\d\d)_")
#: A check cell of the notebook: ``name = checks.check_…(name, …)`` (its result is not the student's def).
_CHECK_CALL = re.compile(r"^check_\w+$")
#: IPython cell magics whose body is Python (the first line goes, the code stays); any other
#: cell magic (``%%bash``, ``%%writefile`` …) makes a cell that is not Python.
PYTHON_CELL_MAGICS = ("time", "timeit", "capture", "prun", "debug")


class NotANotebook(ValueError):
    """The file is not notebook JSON (or has no cells)."""


@dataclass
class Statement:
    """One top-level statement of a code cell (``cell``: 1-based among the code cells)."""

    cell: int
    order: int
    node: ast.stmt


@dataclass
class Notebook:
    """A submission as the grader reads it: its code cells, parsed."""

    cells: list[str]
    statements: list[Statement] = field(default_factory=list)
    unparsable: list[str] = field(default_factory=list)  # "cell N: SyntaxError …"
    files: dict[str, str] = field(default_factory=dict)  # modules written by `%%writefile NAME.py`

    @property
    def bindings(self) -> dict[str, list[Statement]]:
        """Each top-level name and the statements that bind it, in notebook order (check cells left out)."""
        found: dict[str, list[Statement]] = {}
        for st in self.statements:
            for name in bound_names(st.node):
                found.setdefault(name, []).append(st)
        return found


def read_notebook(path: Path) -> Notebook:
    """The code cells of a ``.ipynb`` (v4 JSON), parsed cell by cell; a cell that does not parse
    is recorded and left out. IPython lines (``%magic``, ``!shell``) are dropped."""
    try:
        data = json.loads(_read_no_link(Path(path)))
        cells = [c for c in data["cells"] if c.get("cell_type") == "code"]
        sources = ["".join(c["source"]) if isinstance(c["source"], list) else str(c["source"]) for c in cells]
    except NotANotebook:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotANotebook(LINK) from None
        raise NotANotebook(f"not a notebook ({type(e).__name__})") from None
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, RecursionError, MemoryError) as e:
        raise NotANotebook(f"not a notebook ({type(e).__name__})") from None
    nb = Notebook(cells=sources)
    order = 0
    for k, source in enumerate(sources, start=1):
        _written_module(source, nb.files)
        try:
            tree = ast.parse(_python_only(source))
        except (SyntaxError, ValueError) as e:
            nb.unparsable.append(f"code cell {k}: {type(e).__name__}: {getattr(e, 'msg', e)}")
            continue
        except (RecursionError, MemoryError) as e:  # nested deeper than Python's parser goes
            nb.unparsable.append(f"code cell {k}: {type(e).__name__}: nested too deep to parse")
            continue
        for node in tree.body:
            nb.statements.append(Statement(k, order, node))
            order += 1
    return nb


#: Why a link is not read: it can point at any file the grader may read (the kit's solved
#: notebooks, another student's work), and the grader reads as the instructor.
LINK = ("a link, not a file: links are not graded (one can point at anybody's files); put the "
        "notebook itself in the folder")


#: The largest notebook read (the kit's own, outputs and figures included, are under 1 MiB).
MAX_NOTEBOOK_BYTES = 32 * 2**20


def _read_no_link(path: Path) -> str:
    """The file's text, refusing a symbolic link (``ELOOP``) in its last component at the moment
    it is opened, so that a link swapped in after the class folder was listed is refused too, and
    a file over :data:`MAX_NOTEBOOK_BYTES` (the grader's memory is everybody's)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_NOTEBOOK_BYTES + 1)
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise NotANotebook(f"larger than {MAX_NOTEBOOK_BYTES // 2**20} MiB: clear the outputs and hand it in again")
    return data.decode("utf-8")


#: ``%%writefile [-a] NAME.py`` (or ``%%file``): a module the notebook writes and may import.
WRITEFILE = re.compile(r"^\s*%%(?:writefile|file)\s+(?P<append>-a\s+|--append\s+)?(?P<name>[A-Za-z_]\w*\.py)\s*$")
#: At most this many bytes of such modules per notebook are carried into the sandbox.
MAX_WRITTEN_BYTES = 256 * 2**10


def _written_module(source: str, files: dict[str, str]) -> None:
    """Record the module a ``%%writefile NAME.py`` cell writes (appended with ``-a``), so that the
    exercise's code can import it inside the sandbox as it did in the notebook. Only a plain module
    name in the working folder; past :data:`MAX_WRITTEN_BYTES` in all, nothing more is carried."""
    first, _, body = source.lstrip("\n").partition("\n")
    m = WRITEFILE.match(first)
    if not m:
        return
    text = (files.get(m["name"], "") if m["append"] else "") + body + ("\n" if not body.endswith("\n") else "")
    if sum(len(v) for k, v in files.items() if k != m["name"]) + len(text) <= MAX_WRITTEN_BYTES:
        files[m["name"]] = text


def _python_only(source: str) -> str:
    """The cell's Python: IPython's magics (``%time …``, ``!ls``, ``x = !ls``) become ``pass`` line by
    line, a Python cell magic's first line (``%%time``) goes and its body stays; a cell magic of
    another language leaves nothing."""
    lines = source.splitlines()
    first = next((k for k, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].lstrip().startswith("%%"):
        magic = lines[first].lstrip()[2:].split()[0] if lines[first].lstrip()[2:].split() else ""
        if magic not in PYTHON_CELL_MAGICS:
            return ""
        lines[first] = ""
    shell = re.compile(r"^\s*(?:[%!]|[\w.]+\s*=\s*[%!])")
    return "\n".join(re.match(r"\s*", line).group() + "pass" if shell.match(line) else line for line in lines)


def is_check_cell(node: ast.stmt) -> bool:
    """``name = checks.check_…(…)``: rebinding the name to a check's result, not a definition."""
    if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Call):
        return False
    func = node.value.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return bool(_CHECK_CALL.match(name))


def bound_names(node: ast.stmt) -> list[str]:
    """The names a top-level statement binds that the grader can rebuild (imports, defs, classes,
    assignments to plain names); a check cell binds nothing here."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Import):
        return [a.asname or a.name.split(".")[0] for a in node.names]
    if isinstance(node, ast.ImportFrom):
        return [a.asname or a.name for a in node.names if a.name != "*"]
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and not is_check_cell(node):
        return _assigned(node)
    if isinstance(node, (ast.If, ast.Try)):  # `if …: def f` or `try: … except …: def f`: the block is the code
        return [name for block in _blocks(node) for st in block for name in bound_names(st)]
    return []


def _blocks(node: ast.If | ast.Try) -> list[list[ast.stmt]]:
    """The statement lists of a top-level ``if`` or ``try`` (its branches, handlers, ``finally``)."""
    if isinstance(node, ast.If):
        return [node.body, node.orelse]
    return [node.body, node.orelse, *(h.body for h in node.handlers), node.finalbody]


def _assigned(node: ast.Assign | ast.AnnAssign) -> list[str]:
    """The plain names an assignment binds (``a = …``, ``a, b = …``; not ``a.x = …``)."""
    if isinstance(node, ast.AnnAssign) and node.value is None:
        return []
    names = []
    for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
        elts = t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]
        names += [e.id for e in elts if isinstance(e, ast.Name)]
    return names


def notebook_of(path: Path, nb: Notebook) -> str | None:
    """The course notebook (``"01"`` …) a submission is: from its file name, else from the exercise
    functions it defines; ``None`` when neither says."""
    m = NOTEBOOK_IN_NAME.search(Path(path).name)
    if m:
        return m.group(1)
    defined = nb.bindings
    found = sorted({notebook for notebook, _, name in EXERCISES.values() if name in defined})
    return found[0] if len(found) == 1 else None


def exercises_of(notebook: str) -> list[int]:
    return [n for n, (nb_, _, _) in sorted(EXERCISES.items()) if nb_ == notebook]


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# --- one exercise: the code it runs -----------------------------------------------------------------------

@dataclass
class ExerciseCode:
    """What the grader runs for one exercise: module source ending with the student's ``def``,
    the other exercises' names it uses (bound to their reference when those are not passed), and
    what is wrong with it (``problem``: ❌ with this reason, nothing is run)."""

    name: str
    source: str = ""
    cell: int = 0
    uses_exercises: list[str] = field(default_factory=list)
    problem: str = ""
    files: dict[str, str] = field(default_factory=dict)  # the notebook's `%%writefile` modules


def exercise_code(nb: Notebook, name: str, stand_ins: set[str] = frozenset()) -> ExerciseCode:
    """The module the grader runs for exercise ``name``: the final top-level ``def name`` and what
    it needs from the notebook's top level; the names in ``stand_ins`` (other exercises not passed)
    are left out (the grader binds them to the reference, as the notebook's stand-in would)."""
    bindings = nb.bindings
    code = ExerciseCode(name)
    if name not in bindings:
        code.problem = f"the notebook has no `def {name}(…)` (the exercise's function is missing)"
        return code
    final = bindings[name][-1]
    code.cell = final.cell
    if isinstance(final.node, (ast.Import, ast.ImportFrom)):
        code.problem = (f"gamed: code cell {final.cell} imports `{name}` "
                        f"(`{_short(ast.unparse(final.node))}`) instead of writing it")
        return code
    chosen = _follow(final, bindings, stand_ins - {name}, code.uses_exercises)
    for st in nb.statements:  # `from M import *` binds names no one can list: every such import comes along
        if isinstance(st.node, ast.ImportFrom) and any(a.name == "*" for a in st.node.names):
            chosen[(st.order, "*")] = st.node
    ordered = [node for _, node in sorted(chosen.items())]
    imports = [n for n in ordered if isinstance(n, (ast.Import, ast.ImportFrom))]
    rest = [n for n in ordered if not isinstance(n, (ast.Import, ast.ImportFrom))]
    code.source = "\n\n".join(ast.unparse(n) for n in imports + rest) + "\n"
    code.files = dict(nb.files)
    code.uses_exercises = sorted(set(code.uses_exercises))
    return code


def _follow(final: Statement, bindings: dict[str, list[Statement]], stand_ins: set[str],
            uses: list[str]) -> dict[tuple[int, str], ast.stmt]:
    """``final`` and every top-level statement it needs, name by name (an import cut down to the
    alias needed), by notebook order; names in ``stand_ins`` are not followed but noted in ``uses``."""
    chosen: dict[tuple[int, str], ast.stmt] = {}
    todo, seen = [final], set()
    while todo:
        st = todo.pop()
        if (st.order, "") in chosen:
            continue
        chosen[(st.order, "")] = st.node
        for ref in sorted(free_names(st.node) - seen):
            seen.add(ref)
            if ref in stand_ins:
                uses.append(ref)
            elif ref in bindings:
                dep = bindings[ref][-1]
                if isinstance(dep.node, (ast.Import, ast.ImportFrom)):
                    chosen[(dep.order, ref)] = _only_alias(dep.node, ref)
                else:
                    todo.append(dep)
    return chosen


def free_names(node: ast.stmt) -> set[str]:
    """The global names a top-level statement reads (for a ``def``: its decorators, defaults and
    annotations, and the names its body reads that it does not bind itself), from ``symtable``."""
    top = symtable.symtable(ast.unparse(node), "<exercise>", "exec")
    names = {s.get_name() for s in top.get_symbols() if s.is_referenced()}
    tables = list(top.get_children())
    while tables:
        t = tables.pop()
        names |= {s.get_name() for s in t.get_symbols() if s.is_referenced() and s.is_global()}
        tables += t.get_children()
    return names


def _only_alias(node: ast.Import | ast.ImportFrom, bound: str) -> ast.stmt:
    """The import statement cut down to the one alias that binds ``bound``."""
    alias = next(a for a in node.names if (a.asname or (a.name if isinstance(node, ast.ImportFrom)
                                                          else a.name.split(".")[0])) == bound)
    if isinstance(node, ast.ImportFrom):
        return ast.ImportFrom(module=node.module, names=[alias], level=node.level)
    return ast.Import(names=[alias])
