"""The class report: one HTML file to look at after grading, readable without a server or JavaScript.

``reclor-lab course grade CLASS --report class.html`` writes a single self-contained page (figures
embedded as base64 PNG, styles inline, no script):

* the class in figures: pass rate per exercise, the score histogram, judging time per notebook;
* the mistakes the class made: per exercise, the most frequent hint among its ❌ and how many;
* rows to look at: exercises flagged as gamed, notebooks that crashed the judge or hit a limit,
  with the reason; roster students with no submission and submissions not in the roster;
* similar pairs (:mod:`reclor_lab.course.similar`): both students' code side by side, and which
  exercises were not compared and why;
* every student's row, with their feedback (:mod:`reclor_lab.course.feedback`) in a ``<details>``.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline",):
    matplotlib.use("Agg", force=False)  # no display in a terminal or CI

import matplotlib.pyplot as plt  # noqa: E402

from reclor_lab.course.checks import EXERCISES  # noqa: E402
from reclor_lab.course.feedback import WORDS, exercise_lines, hint  # noqa: E402
from reclor_lab.course.grade import FAIL, LIMIT  # noqa: E402
from reclor_lab.course.outfiles import write_file  # noqa: E402
from reclor_lab.course.roster import ClassRow  # noqa: E402
from reclor_lab.course.similar import KIT, Similarity  # noqa: E402

#: The figures' colours (the browser test looks for them in a screenshot: a figure that did not
#: decode leaves none of its colour on the page).
PASS_COLOUR, SCORE_COLOUR, TIME_COLOUR = "#1f77b4", "#2ca02c", "#d62728"
#: Pairs shown with their code (the rest are listed by name).
SHOWN_PAIRS = 50
_CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top;font-size:.92em}
th{background:#f4f4f4}.fig{display:inline-block;margin:4px}img{width:380px;height:auto}
pre{background:#f8f8f8;padding:6px;margin:0;font-size:.82em;white-space:pre-wrap;max-width:560px}
.bad{color:#b00}.muted{color:#777}details{margin:2px 0}"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pass_rate_figure(graded: list[ClassRow], numbers: list[int]) -> str:
    """Bars: the share of the graded students who passed each exercise."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    rate = [100 * sum(row.result.verdicts[n].passed for row in graded) / max(len(graded), 1) for n in numbers]
    ax.bar([str(n) for n in numbers], rate, color=PASS_COLOUR)
    ax.set(xlabel="exercise", ylabel="% of students who passed", ylim=(0, 100),
           title=f"Pass rate per exercise ({len(graded)} submissions)")
    return _png(fig)


def _scores_figure(rows: list[ClassRow], points: dict[int, float]) -> str:
    """A histogram of the students' points."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    possible = sum(points.values())
    totals = [sum(row.earned(points).values()) for row in rows]
    ax.hist(totals, bins=min(int(possible) + 1, 30) if possible else 10, range=(-0.5, possible + 0.5),
            color=SCORE_COLOUR, edgecolor="white")
    ax.set(xlabel=f"points (of {possible:g})", ylabel="students", title=f"Scores ({len(rows)} students)")
    return _png(fig)


def _time_figure(graded: list[ClassRow]) -> str:
    """Bars: the mean judging time per notebook, and a mark at the slowest."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    notebooks = sorted({nb for nb, _, _ in EXERCISES.values()})
    seconds = [[nb.seconds for row in graded for nb in row.result.notebooks if nb.notebook == name]
               for name in notebooks]
    means = [sum(s) / len(s) if s else 0.0 for s in seconds]
    ax.bar(notebooks, means, color=TIME_COLOUR)
    tops = [max(s) if s else 0.0 for s in seconds]
    ax.scatter(notebooks, tops, color="black", marker="_", s=200, label="slowest")
    ax.set(xlabel="notebook", ylabel="judging time (s)", title="Time per notebook (mean; bar: slowest)")
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def figures(rows: list[ClassRow], points: dict[int, float]) -> dict[str, str]:
    """The three figures as base64 PNG: ``pass_rate``, ``scores``, ``time``."""
    graded = [row for row in rows if row.submitted]
    out = {}
    out["pass_rate"] = _pass_rate_figure(graded, sorted(EXERCISES))
    out["scores"] = _scores_figure(rows, points)
    out["time"] = _time_figure(graded)
    return out


def frequent_hints(rows: list[ClassRow]) -> list[tuple[int, int, int, str]]:
    """Per exercise with a ❌: ``(number, students with ❌, how many share the top hint, the hint)``."""
    out = []
    for n in sorted(EXERCISES):
        hints = Counter(hint(row.result.verdicts[n].reason) for row in rows
                        if row.submitted and row.result.verdicts[n].status == FAIL)
        if hints:
            text, count = hints.most_common(1)[0]
            out.append((n, sum(hints.values()), count, text))
    return out


def flagged(rows: list[ClassRow]) -> list[tuple[str, str, str]]:
    """``(student, what, reason)`` for each gamed exercise, each notebook that crashed the judge or
    hit a limit, each roster student with no submission and each submission not in the roster."""
    out = []
    for row in rows:
        who = row.name if row.name == row.submission else f"{row.name} ({row.submission})"
        if not row.submitted:
            out.append((who, "missing", row.status))
            continue
        if row.rostered and row.entry is None:
            out.append((who, "not in the roster", "add it to the roster so the LMS exports include it"))
        for nb in row.result.notebooks:
            if nb.problem.startswith(LIMIT):
                out.append((who, "limit", f"{Path(nb.path).name}: {nb.problem}"))
            elif nb.problem:
                out.append((who, "crashed" if nb.problem.startswith("error") else "problem",
                            f"{Path(nb.path).name}: {nb.problem}"))
        for n, v in row.result.verdicts.items():
            if v.status == FAIL and "gamed" in v.reason[:40]:
                out.append((who, f"gamed (exercise {n})", hint(v.reason)))
    return out


def _e(text) -> str:
    return html.escape(str(text))


def _table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def _similar_section(similar: Similarity | None) -> list[str]:
    """The similar-submissions section's HTML parts: what was compared, the pairs shown (their code
    side by side), the rest named, and what was not compared."""
    parts = []
    if similar is None:
        parts.append("<p class='muted'>Not computed.</p>")
    else:
        compared = ", ".join(f"{n} ({k} codes)" for n, k in similar.compared.items())
        parts.append(f"<p>Compared after normalising names, literals and layout: exercise(s) {_e(compared) or 'none'}. "
                     f"{len(similar.pairs)} pair(s) at or above the threshold. A pair is a reason to read both "
                     f"notebooks, not a verdict; {_e(KIT)} is the kit's solved notebook.</p>")
        for p in similar.pairs[:SHOWN_PAIRS]:
            parts.append(f"<h3>Exercise {p.number}: {_e(p.a)} and {_e(p.b)} (similarity {p.score:.2f})</h3>")
            parts.append(_table([p.a, p.b], [[f"<pre>{_e(p.code_a)}</pre>", f"<pre>{_e(p.code_b)}</pre>"]]))
        if len(similar.pairs) > SHOWN_PAIRS:
            rest = ", ".join(f"{p.number}: {p.a}/{p.b}" for p in similar.pairs[SHOWN_PAIRS:])
            parts.append(f"<p>Also: {_e(rest)}</p>")
        if similar.skipped:
            parts.append("<p>Not compared (honest solutions too short to tell apart):</p><ul>"
                         + "".join(f"<li>{n}. {_e(EXERCISES[n][1])}: {_e(why)}</li>"
                                   for n, why in sorted(similar.skipped.items())) + "</ul>")
    return parts


def _student_rows(rows: list[ClassRow], points: dict[int, float], totals: list[float],
                  possible: float) -> list[list[str]]:
    """The students table's rows: name, submission, id, points, status and the per-exercise feedback."""
    body = []
    for row, total in zip(rows, totals):
        lines = "".join(f"<li>{_e(WORDS.get(status, status))}: {n}. {_e(EXERCISES[n][1])}: {_e(pts)}"
                        + (f" <span class='muted'>{_e(text or WORDS.get(status, ''))}</span>" if status != '✅' else "")
                        + (f" <span class='bad'>hidden case that failed: {_e(hidden)}</span>" if hidden else "")
                        + "</li>" for n, status, pts, text, hidden in exercise_lines(row, points))
        ident = row.entry.id if row.entry else ""
        body.append([_e(row.name), _e(row.submission), _e(ident), f"{total:g}/{possible:g}", _e(row.status),
                     f"<details><summary>feedback</summary><ul>{lines}</ul></details>"])
    return body


def render(rows: list[ClassRow], points: dict[int, float], similar: Similarity | None = None,
           title: str = "reclor-lab: class report") -> str:
    """The report's HTML (see the module docstring)."""
    figs = figures(rows, points)
    possible = sum(points.values())
    totals = [sum(row.earned(points).values()) for row in rows]
    graded = sum(row.submitted for row in rows)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
             f"<p>{len(rows)} students, {graded} with a submission; mean {sum(totals) / max(len(rows), 1):.1f} "
             f"of {possible:g} points.</p>", "<h2>The class</h2>"]
    alts = {"pass_rate": "pass rate per exercise", "scores": "score histogram", "time": "judging time per notebook"}
    parts += [f"<div class='fig'><img id='fig-{k}' alt='{alts[k]}' src='data:image/png;base64,{v}'></div>"
              for k, v in figs.items()]
    hints = frequent_hints(rows)
    parts.append("<h2>The mistakes the class made</h2>")
    parts.append(_table(["exercise", "failed", "the most frequent hint", "students with it"],
                        [[_e(f"{n}. {EXERCISES[n][1]}"), str(total), _e(text), str(count)]
                         for n, total, count, text in hints]) if hints else "<p>No exercise failed.</p>")
    flags = flagged(rows)
    parts.append("<h2>Rows to look at</h2>")
    parts.append(_table(["student", "what", "reason"], [[_e(a), f"<span class='bad'>{_e(b)}</span>", _e(c)]
                                                         for a, b, c in flags]) if flags else "<p>None.</p>")
    parts.append("<h2>Similar submissions</h2>")
    parts += _similar_section(similar)
    parts.append("<h2>Students</h2>")
    body = _student_rows(rows, points, totals, possible)
    parts.append(_table(["name", "submission", "id", "points", "status", "per exercise"], body))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, rows: list[ClassRow], points: dict[int, float], similar: Similarity | None = None,
                 overwrite: bool = False) -> Path:
    """Write :func:`render`'s page to ``path`` (never over a file without ``overwrite``, never through a link)."""
    return write_file(path, render(rows, points, similar), overwrite=overwrite)
