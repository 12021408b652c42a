"""Static reading of a submitted notebook: what the grader judges, and what it refuses to judge.

``reclor-lab course grade`` never runs a submission's notebook. It reads the code cells, parses
them (``ast``), and for each exercise builds a small module from the submission's **final**
top-level ``def`` of the exercise's function plus the top-level imports, ``def``\\ s, classes and
constants that ``def`` needs (followed name by name, transitively). That module is what
:mod:`reclor_lab.course.grade` executes and judges, in a process where the checks were imported before
any student code ran. Nothing a notebook printed or stored as output counts.

Before that, two scans (:func:`tampering` over the whole notebook, :func:`scan_exercise` over the
code an exercise runs) turn a gamed exercise into ❌ with the reason. What they catch, and what
the design makes harmless without catching, is listed in ``notebooks/README.md`` (Grading).
"""

from __future__ import annotations

import ast
import json
import re
import symtable
from dataclasses import dataclass, field
from pathlib import Path

from reclor_lab.course.checks import EXERCISES, GIVEAWAYS

#: Modules whose names exercise code may import (their submodules too). Anything else inside the
#: code an exercise runs (``sys``, ``os``, ``importlib``, ``inspect``, ``gc``, ``ctypes``,
#: ``threading``, ``reclor_lab.data`` …) marks it as gamed: no exercise needs them.
ALLOWED_IMPORTS = ("__future__", "math", "cmath", "statistics", "fractions", "decimal", "numbers", "collections",
                   "itertools", "functools", "typing", "dataclasses", "enum", "heapq", "bisect", "re", "string",
                   "copy", "numpy", "torch", "bitsandbytes", "reclor_lab.config", "reclor_lab.model",
                   "reclor_lab.course.checks")
#: Built-in names that reach around the code's own logic (run strings as code, reach modules or
#: frames, rewrite attributes by computed name, read files).
BANNED_BUILTINS = ("exec", "eval", "compile", "__import__", "globals", "locals", "vars", "setattr", "delattr",
                   "open", "breakpoint", "input", "memoryview", "__builtins__", "__loader__", "__spec__")
#: Attribute names that lead out of the exercise to the interpreter, the process or a module table.
BANNED_ATTRIBUTES = ("sys", "os", "modules", "builtins", "importlib", "subprocess", "environ", "system", "popen",
                     "ctypes", "ctypeslib", "hub", "f_globals", "f_locals", "f_back", "gi_frame", "cr_frame",
                     "tb_frame", "reference", "student")
#: Dunder attributes exercise code may use (``super().__init__()`` in a helper class).
ALLOWED_DUNDERS = ("__init__",)
#: Special methods a helper class in exercise code may define; any other (``__eq__``, ``__float__``,
#: ``__torch_function__`` …) could make a wrong answer compare equal, so it counts as gaming.
ALLOWED_METHODS = ("__init__", "__call__", "__repr__")
_DUNDER = re.compile(r"^__\w+__$")
#: Names the checks module offers an exercise: its public constants and the model shape.
_PUBLIC_CHECKS = re.compile(r"^(?:[A-Z][A-Z0-9_]*|ModelShape)$")
#: A check cell of the notebook: ``name = checks.check_…(name, …)`` (its result is not the student's def).
_CHECK_CALL = re.compile(r"^check_\w+$")
#: The notebook a file belongs to, from its name (``01_data_and_tokenization.ipynb``, ``ana__03_lora.ipynb``).
NOTEBOOK_IN_NAME = re.compile(r"(?:^|__|[^0-9])(\d\d)_")
CHECKS_MODULE = "reclor_lab.course.checks"
#: ``from reclor_lab import …`` exercise code may use: the allowed modules of the package.
_PACKAGE_MODULES = ("config", "model")
#: ``from reclor_lab.course import checks``: the one module of the course package exercise code may name.
COURSE_PACKAGE = "reclor_lab.course"


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
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        cells = [c for c in data["cells"] if c.get("cell_type") == "code"]
        sources = ["".join(c["source"]) if isinstance(c["source"], list) else str(c["source"]) for c in cells]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise NotANotebook(f"not a notebook ({type(e).__name__})") from None
    nb = Notebook(cells=sources)
    order = 0
    for k, source in enumerate(sources, start=1):
        try:
            tree = ast.parse(_python_only(source))
        except (SyntaxError, ValueError) as e:
            nb.unparsable.append(f"code cell {k}: {type(e).__name__}: {getattr(e, 'msg', e)}")
            continue
        for node in tree.body:
            nb.statements.append(Statement(k, order, node))
            order += 1
    return nb


def _python_only(source: str) -> str:
    if source.lstrip().startswith("%%"):
        return ""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


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
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if isinstance(node, ast.AnnAssign) and node.value is None:
            return []
        names = []
        for t in targets:
            elts = t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]
            names += [e.id for e in elts if isinstance(e, ast.Name)]
        return names
    return []


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


# --- the whole notebook: tampering with the checks, answers read off the package ------------------------

def _checks_aliases(nb: Notebook) -> tuple[set[str], bool]:
    """Names bound to the module ``reclor_lab.course.checks``, and whether ``reclor_lab`` itself is imported
    (``reclor_lab.course.checks.X`` then reaches it)."""
    aliases, package = set(), False
    for node in ast.walk(ast.Module(body=[s.node for s in nb.statements], type_ignores=[])):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == CHECKS_MODULE and a.asname:
                    aliases.add(a.asname)
                elif a.name.split(".")[0] == "reclor_lab" and not a.asname:
                    package = True
        elif isinstance(node, ast.ImportFrom) and node.module == COURSE_PACKAGE:
            aliases |= {a.asname or a.name for a in node.names if a.name == "checks"}
    return aliases, package


def _root(node: ast.AST) -> tuple[str | None, list[str]]:
    """The name an attribute/subscript chain starts from, and its attribute names from the root."""
    attrs = []
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        if isinstance(node, ast.Attribute):
            attrs.append(node.attr)
        node = node.func if isinstance(node, ast.Call) else node.value
    return (node.id if isinstance(node, ast.Name) else None), attrs[::-1]


def _reaches_checks(node: ast.AST, aliases: set[str], package: bool) -> bool:
    root, attrs = _root(node)
    return root in aliases or (package and root == "reclor_lab" and attrs[:2] == ["course", "checks"])


def _exercise_of_giveaway(word: str, numbers: list[int]) -> list[int]:
    named = [n for n in numbers if word in {g.split(".")[-1] for g in GIVEAWAYS.get(EXERCISES[n][2], ())}]
    return named or numbers


def tampering(nb: Notebook, numbers: list[int]) -> dict[int, str]:
    """Exercise number → why it counts as gamed, for the exercises ``numbers`` of this notebook:

    * any write into ``reclor_lab.course.checks`` (an attribute assigned or deleted, an item of its
      private state changed, ``setattr``/``vars``/``getattr`` on it, any private name of it): all
      of the notebook's exercises;
    * a ``reference_…`` function of the checks, or ``.reference`` of a stand-in: that exercise;
    * a string that looks like a verdict (``✅ Exercise N``): exercise N (else all);
    * the string ``"reclor_lab.course.checks"`` outside an import (``sys.modules[…]``, ``__import__``).
    """
    aliases, package = _checks_aliases(nb)
    found: dict[int, str] = {}

    def mark(which: list[int], cell: int, why: str) -> None:
        for n in which:
            found.setdefault(n, f"gamed: code cell {cell} {why}")

    for st in nb.statements:
        for node in ast.walk(st.node):
            where = st.cell
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                for t in targets:
                    if isinstance(t, (ast.Attribute, ast.Subscript)) and _reaches_checks(t, aliases, package):
                        mark(numbers, where, f"writes into reclor_lab.course.checks (`{_short(ast.unparse(t))} = …`)")
            elif isinstance(node, ast.Attribute):
                if _reaches_checks(node, aliases, package) and node.attr.startswith("_"):
                    mark(numbers, where, f"reaches the checks' private state (`{_short(ast.unparse(node))}`)")
                elif node.attr == "reference":
                    base, _ = _root(node.value)
                    named = [n for n in numbers if EXERCISES[n][2] == base]
                    mark(named or numbers, where,
                         f"takes the reference answer off a stand-in (`{_short(ast.unparse(node))}`)")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
                if (node.func.id in ("setattr", "delattr", "getattr", "vars")
                        and _reaches_checks(node.args[0], aliases, package)):
                    mark(numbers, where, f"calls {node.func.id}() on reclor_lab.course.checks")
            elif isinstance(node, ast.ImportFrom) and node.module == CHECKS_MODULE:
                for a in node.names:
                    if a.name.startswith("_") or a.name == "*":
                        mark(numbers, where, f"imports the checks' private `{a.name}`")
            if isinstance(node, (ast.Name, ast.Attribute, ast.alias)):
                word = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                        else node.name.split(".")[-1])
                if word.startswith("reference_"):
                    mark(_exercise_of_giveaway(word, numbers), where, f"uses the checks' `{word}`")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if "✅" in text:
                    named = [int(n) for n in re.findall(r"Exercise (\d+)", text) if int(n) in numbers]
                    mark(named or numbers, where, "prints a verdict line of its own (a string with ✅)")
                if CHECKS_MODULE in text or text.startswith("reference_"):
                    mark(_exercise_of_giveaway(text, numbers), where, f"names {text[:40]!r} in a string")
    return found


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
    if not isinstance(final.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        code.problem = (f"code cell {final.cell} binds `{name}` to something else than its `def`; the exercise "
                        f"is graded on a `def {name}(…)`, its last one in the notebook")
        return code
    chosen: dict[tuple[int, str], ast.stmt] = {}
    todo, seen = [final], set()
    while todo:
        st = todo.pop()
        if (st.order, "") in chosen:
            continue
        chosen[(st.order, "")] = st.node
        for ref in sorted(free_names(st.node) - seen):
            seen.add(ref)
            if ref in stand_ins and ref != name:
                code.uses_exercises.append(ref)
            elif ref in bindings:
                dep = bindings[ref][-1]
                if isinstance(dep.node, (ast.Import, ast.ImportFrom)):
                    chosen[(dep.order, ref)] = _only_alias(dep.node, ref)
                else:
                    todo.append(dep)
    ordered = [node for _, node in sorted(chosen.items())]
    imports = [n for n in ordered if isinstance(n, (ast.Import, ast.ImportFrom))]
    rest = [n for n in ordered if not isinstance(n, (ast.Import, ast.ImportFrom))]
    code.source = "\n\n".join(ast.unparse(n) for n in imports + rest) + "\n"
    code.uses_exercises = sorted(set(code.uses_exercises))
    return code


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


def scan_exercise(code: ExerciseCode, number: int) -> str:
    """Why the code an exercise runs counts as gamed, or ``""``: an import outside
    :data:`ALLOWED_IMPORTS`, a name of :data:`BANNED_BUILTINS`, an attribute of
    :data:`BANNED_ATTRIBUTES` or a private one, the package function that computes the answer
    (:data:`reclor_lab.course.checks.GIVEAWAYS`), a ``reference_…``, anything of ``reclor_lab.course.checks``
    but its public constants, a write into a module, or an import under the exercise's own name."""
    tree = ast.parse(code.source)
    name = code.name
    giveaways = {g.split(".")[-1] for g in GIVEAWAYS.get(name, ())}
    modules: set[str] = set()  # names bound to modules by the code's imports
    checks_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if not _allowed_module(a.name):
                    return _not_allowed(name, f"import {a.name}", a.name)
                modules.add(a.asname or a.name.split(".")[0])
                if a.name == CHECKS_MODULE and a.asname:
                    checks_names.add(a.asname)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level or not (_allowed_module(module) or module == "reclor_lab" and all(
                    a.name in _PACKAGE_MODULES for a in node.names)
                    or module == COURSE_PACKAGE and all(a.name == "checks" for a in node.names)):
                what = f"from {module or '.'} import {', '.join(a.name for a in node.names)}"
                if any(a.name in giveaways or a.name == name for a in node.names):
                    return f"gamed: `{name}` uses `{what}`, which computes the answer"
                return _not_allowed(name, what, module)
            for a in node.names:
                bound = a.asname or a.name
                if a.name == "*" or a.name.startswith("_") or a.name.startswith("reference_") or a.name in giveaways:
                    return f"gamed: `{name}` imports `{a.name}` from {module}, which computes the answer"
                if bound == name or a.name == name:
                    return f"gamed: `{name}` is imported (`from {module} import {a.name}`), not written"
                if module == CHECKS_MODULE and not _PUBLIC_CHECKS.match(a.name):
                    return f"gamed: `{name}` imports `{a.name}` from reclor_lab.course.checks"
                if module == COURSE_PACKAGE and a.name == "checks":
                    checks_names.add(bound)
                modules.add(bound)
        elif isinstance(node, ast.Name):
            if node.id in BANNED_BUILTINS:
                return f"gamed: `{name}` uses `{node.id}`, which exercise code may not use"
            if node.id.startswith("reference_") or node.id in ("Fallback", "_REFERENCES"):
                return f"gamed: `{name}` uses `{node.id}`, which computes the answer"
        elif isinstance(node, ast.Attribute):
            attr = node.attr
            if attr.startswith("_") and attr not in ALLOWED_DUNDERS:
                return f"gamed: `{name}` reaches the private attribute `{attr}`"
            if attr in BANNED_ATTRIBUTES:
                return f"gamed: `{name}` uses `.{attr}`, which exercise code may not use"
            if attr in giveaways or attr.startswith("reference_"):
                return f"gamed: `{name}` uses `{_short(ast.unparse(node))}`, which computes the answer"
            root, attrs = _root(node)
            if (root in checks_names or (root == "reclor_lab" and attrs[:2] == ["course", "checks"])):
                last = attrs[-1] if attrs else ""
                if not _PUBLIC_CHECKS.match(last) or not isinstance(node.ctx, ast.Load):
                    return f"gamed: `{name}` uses `{_short(ast.unparse(node))}` of reclor_lab.course.checks"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _DUNDER.match(node.name) \
                and node.name not in ALLOWED_METHODS:
            return (f"gamed: `{name}` defines `{node.name}`: an object that decides how it compares or converts "
                    "could pass for any answer")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            attr = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(attr, ast.Constant) and isinstance(attr.value, str)):
                return f"gamed: `{name}` uses getattr() with a computed attribute name"
            if attr.value.startswith("_") or attr.value in BANNED_ATTRIBUTES or attr.value in giveaways:
                return f"gamed: `{name}` uses getattr(…, {attr.value!r})"
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                root, _ = _root(t) if isinstance(t, (ast.Attribute, ast.Subscript)) else (None, [])
                if isinstance(t, ast.Attribute) and root in modules:
                    return f"gamed: `{name}` writes into the module `{root}` (`{_short(ast.unparse(t))} = …`)"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _DUNDER.match(node.value):
                return f"gamed: `{name}` names {node.value!r} in a string"
            if node.value in giveaways or node.value.startswith("reference_") or node.value == "reference":
                return f"gamed: `{name}` names {node.value!r} in a string"
    return ""


#: Modules that reach the interpreter, the process or other code: importing one in exercise code
#: counts as gaming. Any other module outside :data:`ALLOWED_IMPORTS` (``reclor_lab.train`` to
#: build notebook state, say) is only "not allowed": the exercise is ❌ without the word gamed.
ESCAPE_MODULES = ("sys", "os", "importlib", "builtins", "ctypes", "gc", "inspect", "subprocess", "threading",
                  "multiprocessing", "pickle", "marshal", "socket", "types", "code", "codeop", "runpy", "pathlib",
                  "shutil", "io", "signal", "atexit", "weakref", "operator", "posix", "pty", "resource", "_thread",
                  "concurrent", "asyncio", "pdb", "traceback", "linecache", "tempfile", "glob", "json", "dill",
                  "cloudpickle", "nbformat", "IPython", "jupytext")


def _not_allowed(name: str, what: str, module: str) -> str:
    if (module.split(".")[0] in ESCAPE_MODULES or module == "reclor_lab.data"
            or module.startswith("reclor_lab.course.checks")):
        return f"gamed: `{name}` uses `{what}`, which exercise code may not use"
    return (f"`{name}` needs `{what}` (notebook state or a package module), which the grader does not run "
            "in exercise code: a graded function may use its arguments, its own helpers and constants, and "
            "math/torch/numpy-like modules (judge.ALLOWED_IMPORTS)")


def _allowed_module(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in ALLOWED_IMPORTS)
