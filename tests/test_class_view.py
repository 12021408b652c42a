"""The instructor's view of a graded class (issue 31): the roster, the LMS exports (each checked
against a layout taken from that tool's own code or documentation, cited next to it), copied work,
feedback per student, and the HTML class report opened in a real headless Chromium.

Most tests build the grader's results directly (``StudentResult`` of ``Verdict``); one grades a
real class of three through the CLI."""

from __future__ import annotations

import csv
import io
import random
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from reclor_lab.config import REPO_ROOT

from reclor_lab.cli import main
from reclor_lab.course import checks, export, feedback, outfiles, report, roster, similar
from reclor_lab.course.build import KERNELSPEC
from reclor_lab.course.checks import EXERCISES
from reclor_lab.course.grade import NotebookResult, StudentResult, Verdict, parse_points
from reclor_lab.tools import honest

POINTS = parse_points(None)
ROSTER = "submission,id,name,email\nana,S1,Ana Lima,ana@example.edu\nben,S2,\"Okafor, Ben\",ben@example.edu\n" \
         "cleo,S3,Cleo Wu,cleo@example.edu\n"


def _student(name: str, passed: set[int] = frozenset(), code: dict[int, str] | None = None,
             problem: dict[str, str] | None = None, reasons: dict[int, tuple[str, str, str]] | None = None):
    """A graded student: every exercise ✅ if in ``passed`` else ❌ with a hint; ``reasons`` overrides
    (status, reason, hidden) per exercise; ``problem`` a notebook's problem."""
    notebooks: dict[str, NotebookResult] = {}
    for n, (nb, title, fn) in EXERCISES.items():
        result = notebooks.setdefault(nb, NotebookResult(path=f"/class/{name}/{nb}_x.ipynb", notebook=nb,
                                                         seconds=1.0 + int(nb), problem=(problem or {}).get(nb, "")))
        status, reason, hidden = (reasons or {}).get(n, ("✅", "", "") if n in passed else
                                                     ("❌", f"❌ Exercise {n} ({title}): look at the {fn} case.", ""))
        result.verdicts[n] = Verdict(n, status, reason, code=(code or {}).get(n, ""), hidden=hidden)
    return StudentResult(name, list(notebooks.values()))


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


# --- roster -------------------------------------------------------------------------------------------------

def test_roster_joins_missing_students_and_keeps_unlisted_submissions(tmp_path):
    path = tmp_path / "roster.csv"
    path.write_text("\ufeff" + ROSTER, encoding="utf-8")  # Excel's byte-order mark is fine
    entries = roster.read_roster(path)
    assert [(e.submission, e.id, e.name, e.line) for e in entries] == [
        ("ana", "S1", "Ana Lima", 2), ("ben", "S2", "Okafor, Ben", 3), ("cleo", "S3", "Cleo Wu", 4)]
    rows = roster.join([_student("ana", {1, 2}), _student("zed", {1})], entries)
    assert [(r.submission, r.submitted, r.entry is not None) for r in rows] == [
        ("ana", True, True), ("ben", False, True), ("cleo", False, True), ("zed", True, False)]
    ben = rows[1]
    assert sum(ben.earned(POINTS).values()) == 0 and ben.status == roster.NO_SUBMISSION
    assert all(v.status == "missing" for v in ben.result.verdicts.values())
    assert rows[3].status.endswith(roster.NOT_IN_ROSTER) and rows[0].status == "graded"


@pytest.mark.parametrize("text, words", [
    ("submission,id,name,email\nana,S1,Ana\n", "line 2: 3 cell(s), the header has 4"),
    ("submission,name\nana,Ana\n", "line 1: the header needs `submission` and `id` or `email`"),
    ("submission,id,mail\nana,S1,a@b.c\n", "line 1: unknown column(s) 'mail'"),
    ("submission,id,email\nana,S1,ana.example.org\n", "line 2: email 'ana.example.org' is not an address"),
    ("submission,id,email\n,S1,a@b.cd\n", "line 2: `submission` is empty"),
    ("submission,id,email\nana,,\n", "line 2: 'ana' has neither an id nor an email"),
    ("submission,id,email\nana,S1,a@b.cd\n\nben,S1,b@b.cd\n", "line 4: id 'S1' is already on line 2"),
    ("submission,id,email\nana,S1,a@b.cd\nana,S2,c@b.cd\n", "line 3: submission 'ana' is already on line 2"),
    ("submission,id\n", "no students, only the header"),
])
def test_a_bad_roster_is_one_line_naming_the_line_and_the_problem(tmp_path, text, words):
    path = tmp_path / "roster.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(roster.RosterError) as e:
        roster.read_roster(path)
    assert words in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_roster_that_is_not_utf8_or_not_there(tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("submission,id\nJosé,S1\n".encode("latin-1"))
    with pytest.raises(roster.RosterError, match="not UTF-8"):
        roster.read_roster(bad)
    with pytest.raises(roster.RosterError, match="no such file"):
        roster.read_roster(tmp_path / "nope.csv")


# --- exports ------------------------------------------------------------------------------------------------

def _rows(tmp_path):
    (tmp_path / "roster.csv").write_text(ROSTER, encoding="utf-8")
    results = [_student("ana", set(EXERCISES)),
               _student("ben", {1, 4, 5}, problem={"03": "limit: CPU time (60 s) exceeded"}), _student("zed", {2})]
    return roster.join(results, roster.read_roster(tmp_path / "roster.csv"))


def test_otter_export_has_otters_exact_columns_and_first_row(tmp_path):
    # Layout from otter-grader 7.0.0's own code (otter/grade/utils.py, https://github.com/ucbds-infra/otter-grader):
    # merge_scores_to_df orders the columns [file, *sorted(question columns), total_points_earned,
    # percent_correct, grading_status]; get_points_possible_df makes the first row
    # file="points-per-question", each question's points, total_points_earned=possible,
    # percent_correct=1, grading_status="--"; a graded row has grading_status "Completed" (else the
    # error) and percent_correct = GradingResults.percent = round(total / possible, 4).
    rows = _rows(tmp_path)
    path = tmp_path / "grades_otter.csv"
    assert export.write_export("otter", rows, POINTS, path) == []
    table = _csv(path)
    questions = sorted(f"q{n}" for n in EXERCISES)
    assert table[0] == ["file", *questions, "total_points_earned", "percent_correct", "grading_status"]
    assert questions[:3] == ["q1", "q10", "q11"]  # otter sorts question names as text
    n = len(EXERCISES)
    assert table[1] == ["points-per-question", *["1"] * n, str(n), "1", "--"]
    ana, ben, cleo, zed = (dict(zip(table[0], r)) for r in table[2:])
    assert (ana["file"], ana["total_points_earned"], ana["percent_correct"], ana["grading_status"]) == \
        ("ana", str(n), "1.0", "Completed")
    assert (ben["q4"], ben["q2"], ben["total_points_earned"], ben["percent_correct"]) == \
        ("1", "0", "3", str(round(3 / n, 4)))
    assert ben["grading_status"].startswith("graded: ") and "limit: CPU time" in ben["grading_status"]
    assert cleo["grading_status"] == roster.NO_SUBMISSION and cleo["total_points_earned"] == "0"
    assert zed["file"] == "zed"  # not in the roster: listed, not dropped


def test_canvas_export_identity_points_possible_and_columns(tmp_path):
    # Canvas gradebook CSV, as Canvas's own export writes it and its importer reads it (Instructure,
    # "How do I import grades in the Gradebook?", https://community.canvaslms.com/t5/Instructor-Guide/
    # How-do-I-import-grades-in-the-Gradebook/ta-p/807; and The Ohio State University's guide,
    # https://teaching.resources.osu.edu/toolsets/carmencanvas/guides/calculating-final-grades/import-csv-file-carmen-grades,
    # read here: the student columns Student / ID / SIS User ID / SIS Login ID / Section, then
    # one column per assignment; a new assignment column creates the assignment). The second row
    # holds "Points Possible" in the first column. The Instructure page could not be opened here.
    rows = _rows(tmp_path)
    path = tmp_path / "grades_canvas.csv"
    assert export.write_export("canvas", rows, POINTS, path) == ["zed"]
    table = _csv(path)
    notebooks = sorted({nb for nb, _, _ in EXERCISES.values()})
    assert table[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section",
                        *[f"reclor-lab {nb}" for nb in notebooks]]
    per_notebook = [str(sum(1 for nb_, _, _ in EXERCISES.values() if nb_ == nb)) for nb in notebooks]
    assert table[1] == ["Points Possible", "", "", "", "", *per_notebook]
    assert table[2][:5] == ["Ana Lima", "", "S1", "ana@example.edu", ""] and table[2][5:] == per_notebook
    assert table[3][:3] == ["Okafor, Ben", "", "S2"] and table[3][5:] == ["1", "2", "0", "0", "0", "0"]
    assert table[4][0] == "Cleo Wu" and set(table[4][5:]) == {"0"}
    assert len(table) == 5 and all(len(r) == len(table[0]) for r in table)  # zed left out (no id), named above
    course, _ = export.canvas_rows(rows, POINTS, "course")
    n = str(len(EXERCISES))
    assert course[0][5:] == ["reclor-lab"] and course[1] == ["Points Possible", "", "", "", "", n]
    assert course[2][5:] == [n]


def test_moodle_export_one_identity_column_and_one_grade(tmp_path):
    # Moodle's CSV grade import (grade/import/csv, https://github.com/moodle/moodle):
    # tests/load_data_test.php imports files whose identity column is headed "Email address" (or
    # "ID number") and maps it with 'useremail' (or 'useridnumber', tests/fixtures/
    # phpunit_gradeimport_csv_load_data.php); a row wider than the header is refused
    # ('csvweirdcolumns'), a grade that is not a number is refused ('badgrade').
    rows = _rows(tmp_path)
    path = tmp_path / "grades_moodle.csv"
    assert export.write_export("moodle", rows, POINTS, path) == ["zed"]
    table = _csv(path)
    assert table == [["Email address", "reclor-lab"], ["ana@example.edu", str(len(EXERCISES))],
                     ["ben@example.edu", "3"], ["cleo@example.edu", "0"]]
    no_email = roster.join([_student("ana", {1})], [roster.RosterEntry("ana", "S1", line=2)])
    assert export.moodle_rows(no_email, POINTS)[0] == [["ID number", "reclor-lab"], ["S1", "1"]]
    with pytest.raises(export.ExportError, match="needs --roster"):
        export.moodle_rows(roster.join([_student("ana")], None), POINTS)


def test_kit_gradebook_gains_the_roster(tmp_path):
    from reclor_lab.course import grade

    rows = _rows(tmp_path)
    path = tmp_path / "grades.csv"
    grade.write_gradebook([r.result for r in rows], path, POINTS)
    export.add_identity(path, rows)
    table = _csv(path)
    assert table[0][:4] == ["student", "id", "name", "email"] and table[1][:4] == ["POINTS", "", "", ""]
    by = {r[0]: dict(zip(table[0], r)) for r in table[2:]}
    assert by["cleo"]["id"] == "S3" and by["cleo"]["total"] == "0" and by["cleo"]["status"] == roster.NO_SUBMISSION
    assert by["zed"]["id"] == "" and by["zed"]["status"].endswith(roster.NOT_IN_ROSTER)


# --- writing files ------------------------------------------------------------------------------------------

def test_writes_never_follow_links_nor_overwrite_silently(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("mine", encoding="utf-8")
    link = tmp_path / "out.html"
    link.symlink_to(target)
    for overwrite in (False, True):
        with pytest.raises(outfiles.OutputError, match="symbolic link"):
            outfiles.write_file(link, "x", overwrite=overwrite)
    assert target.read_text(encoding="utf-8") == "mine"
    with pytest.raises(outfiles.OutputError, match="exists; choose another name or pass --overwrite"):
        outfiles.write_file(target, "x")
    assert target.read_text(encoding="utf-8") == "mine"
    outfiles.write_file(target, "new", overwrite=True)
    assert target.read_text(encoding="utf-8") == "new"
    folder_link = tmp_path / "feedback"
    folder_link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(outfiles.OutputError, match="symbolic link"):
        feedback.write_feedback(_rows(tmp_path), POINTS, folder_link)
    assert not any((tmp_path / "elsewhere").iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- feedback -----------------------------------------------------------------------------------------------

def test_feedback_has_verdict_hint_and_hidden_case_but_no_reference_or_expected_values(tmp_path):
    hidden = "hidden block 3 (drawn when grading)"
    reason = (f"❌ Exercise 4 (NF4 on one block): passes the check's own cases but not {hidden}: an answer "
              "that fits only the check's cases does not count")
    rows = roster.join([_student("ana", set(EXERCISES) - {2, 4}, reasons={4: ("❌", reason, hidden)})],
                       [roster.RosterEntry("ana", "S1", "Ana Lima", "ana@example.edu", 2),
                        roster.RosterEntry("ben", "S2", "Ben O", "ben@example.edu", 3)])
    paths = feedback.write_feedback(rows, POINTS, tmp_path / "fb")
    assert [p.name for p in paths] == ["ana.md", "ben.md"]
    text = paths[0].read_text(encoding="utf-8")
    assert text.startswith("# Feedback: Ana Lima\n") and f"**{len(EXERCISES) - 2} of {len(EXERCISES)} points**" in text
    assert "| ❌ | 2. class weights | 0/1 | look at the class_weights_by_hand case. |" in text
    assert f"The hidden case that failed: {hidden}." in text and "| ✅ | 1. format a record | 1/1 |  |" in text
    import inspect

    for name in ("reference_nf4_block", "reference_class_weights"):  # no line of a reference's code
        body = inspect.getsource(getattr(checks, name)).splitlines()[1:]
        assert not any(line.strip() and line.strip() in text for line in body if len(line.strip()) > 12)
    assert "No notebook of yours was found" in paths[1].read_text(encoding="utf-8")
    with pytest.raises(outfiles.OutputError, match="exists"):
        feedback.write_feedback(rows, POINTS, tmp_path / "fb")


# --- similar submissions ------------------------------------------------------------------------------------

def test_the_threshold_and_the_exercises_left_out_are_what_the_calibration_gives():
    chance = similar.calibrate()
    assert {n for n, c in chance.items() if c > similar.MAX_CHANCE} == set(similar.TOO_SHORT)
    assert set(EXERCISES) - set(similar.TOO_SHORT), "no exercise left to compare"


@pytest.mark.slow
def test_honest_solutions_pass_the_exercises_own_checks(tmp_path):
    """The calibration's honest students are correct: two students whose every exercise is an
    honest variant (appended to the kit's solved notebooks as a last cell, so the variant is the
    final ``def`` the grader judges) score full marks from the real grader, sandbox, checks and
    hidden cases included."""
    import json

    from reclor_lab.course import grade

    for student, seed in (("alice", 5), ("bob", 6)):
        rng = random.Random(seed)
        folder = tmp_path / "class" / student
        folder.mkdir(parents=True)
        for nb in sorted(REPO_ROOT.glob("notebooks/0[1-6]_*.ipynb")):
            doc = json.loads(nb.read_text(encoding="utf-8"))
            for number, (notebook, _, name) in sorted(EXERCISES.items()):
                if nb.name.startswith(notebook + "_"):
                    src = honest.solution(name, rng)
                    doc["cells"].append({"cell_type": "code", "execution_count": None, "id": f"honest-{number}",
                                         "metadata": {}, "outputs": [], "source": src.splitlines(keepends=True)})
            (folder / nb.name).write_text(json.dumps(doc), encoding="utf-8")
    results = grade.grade([tmp_path / "class"], jobs=1, seed=11, progress=lambda *a, **k: None)
    for r in results:
        wrong = {n: (v.status, v.reason) for n, v in r.verdicts.items() if not v.passed}
        assert not wrong, (r.student, wrong)


def test_a_class_of_30_flags_exactly_the_planted_copies():
    rng = random.Random(2024)
    codes: dict[str, dict[int, str]] = {}
    for i in range(27):  # each student's draw of each exercise on its own: a new exercise changes no other draw
        codes[f"s{i:02d}"] = {n: honest.solution(name, random.Random(f"2024:{i}:{name}"))
                              for n, (_, _, name) in EXERCISES.items()}
    planted = set()
    for k, original in enumerate(("s03", "s11", "s20")):
        copy = f"copy{k}"
        codes[copy] = {n: honest.disguise(src, rng) for n, src in codes[original].items()}
        planted.add((copy, original) if copy < original else (original, copy))
    assert len(codes) == 30
    assert codes["copy0"][4] != codes["s03"][4] and "# my own work" in "".join(codes["copy0"].values())
    results = [_student(s, set(EXERCISES), code=c) for s, c in codes.items()]
    found = similar.similar_pairs(results, with_kit=False)
    assert {(p.a, p.b) for p in found.pairs} == planted
    assert {p.number for p in found.pairs} == set(EXERCISES) - set(similar.TOO_SHORT)
    assert all(p.score == 1.0 for p in found.pairs) and found.skipped == similar.TOO_SHORT
    assert all(found.compared[n] == 30 for n in found.compared)


def test_code_is_read_from_the_notebook_when_the_verdict_has_none_and_kit_copies_are_named(tmp_path):
    kit = similar.kit_codes()
    assert set(kit) == set(EXERCISES)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(honest.disguise(kit[4], random.Random(1)))])
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    path = tmp_path / "dana" / "02_quantization.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    dana = StudentResult("dana", [NotebookResult(str(path), "02", {4: Verdict(4, "✅"), 5: Verdict(5, "⏳")})])
    assert set(similar.exercise_codes(dana)) == {4}  # a stub is not compared
    found = similar.similar_pairs([dana])
    assert [(p.number, p.a, p.b, p.score) for p in found.pairs] == [(4, similar.KIT, "dana", 1.0)]


# --- the class report in a real browser ---------------------------------------------------------------------

def _class_for_report(tmp_path):
    rows = _rows(tmp_path)
    gamed = ("❌", "gamed: code cell 3 writes into reclor_lab.course.checks (`checks._judge = …`)", "")
    rows.append(roster.ClassRow(_student("eve", {1}, reasons={2: gamed}), None, True, rostered=True))
    codes = {"ana": {4: honest.solution("nf4_block", random.Random(3))}}
    codes["ben"] = {4: honest.disguise(codes["ana"][4], random.Random(4))}
    return rows, similar.find_pairs(codes)


def test_report_html_is_self_contained_and_shows_what_it_promises(tmp_path):
    rows, pairs = _class_for_report(tmp_path)
    page = report.render(rows, POINTS, pairs)
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert page.count("src='data:image/png;base64,") == 3
    for words in ("look at the class_weights_by_hand case.", "gamed (exercise 2)", "writes into reclor_lab",
                  "limit: CPU time (60 s) exceeded", roster.NO_SUBMISSION, "not in the roster",
                  "Exercise 4: ana and ben (similarity 1.00)", "one line (honest pairs alike: 25 %)"):
        assert words in page, words
    assert page.count("<pre>") == 2 and "my own work" in page  # both snippets, side by side


def _colour_pixels(png: Path) -> dict[str, int]:
    """How many pixels of each figure colour the screenshot holds (±12 per channel: anti-aliasing)."""
    import numpy as np
    from PIL import Image

    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    counts = {}
    for c in (report.PASS_COLOUR, report.SCORE_COLOUR, report.TIME_COLOUR):
        rgb = np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)])
        counts[c] = int((np.abs(image - rgb) <= 12).all(axis=-1).sum())
    return counts


def _screenshot(chromium: str, page: Path, out: Path, profile: Path) -> None:
    # a hang guard only (nothing here depends on speed): Chromium normally takes a second or two
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={profile}", "--window-size=1280,900", f"--screenshot={out}",
                    page.resolve().as_uri()], check=True, capture_output=True, timeout=180)


def test_report_opens_in_headless_chromium_with_its_figures(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install -y chromium; .ci/run installs it)")
    rows, pairs = _class_for_report(tmp_path)
    page = report.write_report(tmp_path / "class.html", rows, POINTS, pairs)
    _screenshot(chromium, page, tmp_path / "shot.png", tmp_path / "profile")
    seen = _colour_pixels(tmp_path / "shot.png")
    assert all(n > 2000 for n in seen.values()), seen  # each figure's bars are on the screen
    # the same page with the images' data broken: none of the figures' colours is left
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text(encoding="utf-8").replace("base64,iVBOR", "base64,AAAA"), encoding="utf-8")
    _screenshot(chromium, broken, tmp_path / "broken.png", tmp_path / "profile")
    assert all(n < 50 for n in _colour_pixels(tmp_path / "broken.png").values())


# --- the command --------------------------------------------------------------------------------------------

def _notebook(path: Path, *cells: str) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


ACCURACY = ("def accuracy_over_examples(batches):\n"
            "    right = sum(p == y for ps, ys in batches for p, y in zip(ps, ys))\n"
            "    return right / sum(len(ys) for _, ys in batches)")


@pytest.mark.slow
def test_course_grade_with_roster_exports_report_and_feedback(tmp_path, capsys):
    folder = tmp_path / "class"
    _notebook(folder / "ana" / "05_results.ipynb", ACCURACY)
    _notebook(folder / "zed" / "05_results.ipynb", "def accuracy_over_examples(batches):\n    return 0.25")
    (tmp_path / "roster.csv").write_text(ROSTER, encoding="utf-8")
    out = tmp_path / "grades"
    args = ["course", "grade", str(folder), "--seed", "1", "--csv", str(out / "grades.csv"), "--roster",
            str(tmp_path / "roster.csv"), "--export", "otter", "--export", "canvas", "--export", "moodle",
            "--report", str(out / "class.html"), "--feedback", str(out / "feedback")]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "2 with no submission (ben, cleo); 1 submission(s) not in the roster (zed)" in said
    assert "left out, not in the roster: zed" in said
    kit = {r[0]: r for r in _csv(out / "grades.csv")}
    assert kit["ana"][1:4] == ["S1", "Ana Lima", "ana@example.edu"] and "ben" in kit and "zed" in kit
    assert _csv(out / "grades_moodle.csv")[1:] == [["ana@example.edu", "1"], ["ben@example.edu", "0"],
                                                    ["cleo@example.edu", "0"]]
    otter = {r[0]: r for r in _csv(out / "grades_otter.csv")}
    assert otter["ana"][-1] == "Completed" and otter["zed"][-1] == "Completed"
    assert sorted(p.name for p in (out / "feedback").iterdir()) == ["ana.md", "ben.md", "cleo.md", "zed.md"]
    assert "| ❌ | 11. accuracy over examples | 0/1 |" in (out / "feedback" / "zed.md").read_text(encoding="utf-8")
    assert "Ana Lima" in (out / "class.html").read_text(encoding="utf-8")
    assert main(args) == 1  # a second run without --overwrite replaces nothing
    assert "exists" in capsys.readouterr().err


def test_course_grade_refuses_bad_class_view_options_before_grading(tmp_path, capsys):
    folder = tmp_path / "class"
    _notebook(folder / "ana" / "05_results.ipynb", ACCURACY)
    (tmp_path / "roster.csv").write_text("submission,id\nana,S1,extra\n", encoding="utf-8")
    base = ["course", "grade", str(folder), "--csv", str(tmp_path / "g.csv")]
    for extra, words in ((["--roster", str(tmp_path / "roster.csv")], "line 2: 3 cell(s), the header has 2"),
                         (["--export", "canvas"], "--export canvas needs --roster"),
                         (["--export", "otter", "--csv", str(tmp_path / "x" / "g.csv"), "--report",
                           str(tmp_path / "class.html")], None)):
        if words is None:
            (tmp_path / "class.html").write_text("mine", encoding="utf-8")
            words = "class.html exists"
        assert main(base + extra) != 0
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "g.csv").exists() and (tmp_path / "class.html").read_text(encoding="utf-8") == "mine"


def test_export_help_names_the_formats():
    buf = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(buf), pytest.raises(SystemExit):
        main(["course", "grade", "--help"])
    text = " ".join(buf.getvalue().split())
    assert "{kit,otter,canvas,moodle}" in text and "--roster" in text and "--canvas-columns {notebook,course}" in text
