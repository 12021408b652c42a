"""Grading a class: `reclor-lab course grade` on generated submissions (a mix of correct, wrong and
gamed), students × 6 notebooks, wall time against the goal of 100 students in 5 minutes.

Each student gets all six notebooks: a third hand in the solved reference notebooks (outputs
stored, as a student's would be), a third the untouched or wrong student notebooks, a third the
solved notebooks with a trick (a check patched, the reference called, answers cached from the
check's cases). The class is graded once with ``--jobs`` sandboxes at once (one sandbox per
student: Python, torch and the tiny model start in each); the figure is the whole run's wall
time, the grader's preparation and every sandbox's start included.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, Report, finish, parser

GOAL_STUDENTS, GOAL_MINUTES = 100, 5.0
NOTEBOOKS = REPO_ROOT / "notebooks"
#: A wrong `format_record` (labels without letters) and the tricks a gamed submission appends.
WRONG_01 = ('def format_record(record):\n    a, b, c, d = record["answers"]\n'
            '    return f"Context: {record[\'context\']} Question: {record[\'question\']} Option: {a}"')
TRICKS = {
    "01": "def format_record(record):\n    return checks.reference_format_record(record)",
    "02": "checks._judge = lambda n, fn, test: ('✅', 'fine')",
    "03": "ANSWERS = {}\n\ndef count_lora_params(shapes, r):\n    return ANSWERS.get(repr((shapes, r)), 0)",
    "04": "checks.summary = lambda *a: print('✅ Exercise 9 (weighted cross-entropy): correct.')",
    "05": "from reclor_lab.metrics import accuracy_over_examples",
    "06": "print('✅ Exercise 11 (accuracy over examples): correct.')",
}


def write_class(folder: Path, students: int) -> dict[str, int]:
    import nbformat

    counts = {"correct": 0, "wrong": 0, "gamed": 0}
    references = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    for i in range(students):
        kind = ("correct", "wrong", "gamed")[i % 3]
        counts[kind] += 1
        student = folder / f"student{i:03d}"
        student.mkdir(parents=True)
        for ref in references:
            number = ref.name[:2]
            if kind == "correct":
                shutil.copyfile(ref, student / ref.name)
                continue
            nb = nbformat.read(NOTEBOOKS / "student" / ref.name if kind == "wrong" else ref, as_version=4)
            extra = WRONG_01 if kind == "wrong" and number == "01" else TRICKS[number] if kind == "gamed" else None
            if extra:
                nb.cells.append(nbformat.v4.new_code_cell(extra))
            nbformat.write(nb, student / ref.name)
    return counts


def time_class_view(results, points, folder: Path) -> dict[str, float]:
    """Seconds the instructor's view adds after grading (issue 31): similar pairs (code read again
    from the notebooks where the grader left ``Verdict.code`` empty), the HTML report with its
    figures, the Markdown feedback; and how many pairs were found."""
    from reclor_lab.course import feedback, report, roster, similar

    rows = roster.join(results, None)
    t0 = time.perf_counter()
    pairs = similar.similar_pairs(results)
    t1 = time.perf_counter()
    report.write_report(folder / "class.html", rows, points, pairs)
    t2 = time.perf_counter()
    feedback.write_feedback(rows, points, folder / "feedback")
    t3 = time.perf_counter()
    return {"similar": t1 - t0, "report": t2 - t1, "feedback": t3 - t2, "pairs": len(pairs.pairs)}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--students", type=int, default=GOAL_STUDENTS, help=f"class size (default {GOAL_STUDENTS})")
    p.add_argument("--jobs", type=int, default=2, help="sandboxes at once (default 2: the 2-core CI machine)")
    p.add_argument("--class-view", action="store_true",
                   help="also time what the report, the similarity and the feedback add (issue 31; goal <= 20 %%)")
    args = p.parse_args()
    students = 6 if args.quick else args.students

    from reclor_lab.course import grade

    with tempfile.TemporaryDirectory(prefix="reclor-lab-bench-class-") as tmp:
        folder = Path(tmp) / "class"
        counts = write_class(folder, students)
        t0 = time.perf_counter()
        results = grade.grade([folder], jobs=args.jobs, seed=1, progress=None)
        wall = time.perf_counter() - t0
        view = time_class_view(results, grade.parse_points(None), Path(tmp)) if args.class_view else None
    notebooks = [nb for r in results for nb in r.notebooks]
    report = Report("grading a class: reclor-lab course grade")
    report.settings = {"students": students, **counts, "notebooks": len(notebooks), "jobs": args.jobs}
    report.add("wall time, whole class (preparation and sandbox start included)", wall / 60, "min")
    report.add("exercise time per notebook in its sandbox, mean", sum(nb.seconds for nb in notebooks) / len(notebooks),
               "s", "fork, run, send back; sandbox start not included")
    report.add("judging time per notebook, max", max(nb.seconds for nb in notebooks), "s")
    per_100 = wall / students * GOAL_STUDENTS / 60
    report.add(f"projected for {GOAL_STUDENTS} students", per_100, "min", "linear in the class size")
    passed = {kind: 0 for kind in counts}
    for i, r in enumerate(results):
        passed[("correct", "wrong", "gamed")[i % 3]] += sum(v.passed for v in r.verdicts.values())
    exercises = len(results[0].verdicts)
    for kind, n in counts.items():
        report.add(f"exercises passed, {kind} students", passed[kind], "", f"of {n * exercises}")
    problems = sum(bool(r.problems) for r in results)
    report.add("students with a problem row (limit, crash)", problems, "")
    report.goal(f"{GOAL_STUDENTS} students × 6 notebooks in <= {GOAL_MINUTES:.0f} min with --jobs {args.jobs}",
                per_100 <= GOAL_MINUTES, f"{per_100:.1f} min")
    report.goal("every correct student has every exercise, every wrong or gamed one none of the tricked ones",
                passed["correct"] == counts["correct"] * exercises and passed["gamed"] < counts["gamed"] * exercises,
                f"correct {passed['correct']}/{counts['correct'] * exercises}")
    if view is not None:
        added = view["similar"] + view["report"] + view["feedback"]
        report.add("class view: similar pairs", view["similar"], "s", f"{view['pairs']} pair(s) found")
        report.add("class view: HTML report", view["report"], "s", "3 figures, every student's row")
        report.add("class view: Markdown feedback", view["feedback"], "s", f"{students} files")
        report.goal("the class view adds <= 20 % of the grading time", added <= 0.2 * wall,
                    f"{added:.1f} s of {wall:.0f} s ({100 * added / wall:.1f} %)")
    finish(report, args.json)


if __name__ == "__main__":
    main()
