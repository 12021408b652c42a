"""The question-type classifier on hand-written stems (written for these tests, not taken from
ReClor or the LSAT), at least three per type, and its agreement with an official field."""

from __future__ import annotations

import json

import pytest

from reclor_lab.cli import main
from reclor_lab.results.qtypes import QUESTION_TYPES, agreement, classify_question, record_type

STEMS: dict[str, list[str]] = {
    "Necessary Assumptions": [
        "Which one of the following is an assumption on which the planner's argument depends?",
        "The historian's reasoning requires assuming which one of the following?",
        "The conclusion above relies on which one of the following assumptions?",
        "The argument presupposes which one of the following?",
    ],
    "Sufficient Assumptions": [
        "The mayor's conclusion follows logically if which one of the following is assumed?",
        "Which one of the following, if assumed, allows the conclusion to be properly drawn?",
        "Which one of the following, if assumed, enables the critic's conclusion to be properly inferred?",
    ],
    "Strengthen": [
        "Which one of the following, if true, most strengthens the engineer's argument?",
        "Which one of the following, if true, provides the strongest support for the council's position?",
        "Which one of the following, if true, does most to justify the nutritionist's recommendation?",
    ],
    "Weaken": [
        "Which one of the following, if true, most seriously weakens the reasoning above?",
        "Which one of the following, if true, casts the most serious doubt on the economist's prediction?",
        "Which one of the following, if true, most calls into question the survey's conclusion?",
        "Which one of the following, if true, would most undermine the proposal's rationale?",
    ],
    "Evaluation": [
        "Which one of the following would be most useful to know in evaluating the librarian's argument?",
        "The answer to which one of the following questions would most help in evaluating the claim above?",
        "Which one of the following would it be most helpful to determine in order to assess the argument?",
    ],
    "Implication": [
        "If the statements above are true, which one of the following must also be true?",
        "Which one of the following can be properly inferred from the farmer's statements?",
        "If all of the claims above are true, each of the following could be true EXCEPT:",
        "Which one of the following logically follows from the information above?",
    ],
    "Conclusion/Main Point": [
        "Which one of the following most accurately expresses the main conclusion of the editorial?",
        "The main point of the curator's remarks is that",
        "Which one of the following most accurately states the overall conclusion of the passage?",
    ],
    "Most Strongly Supported": [
        "The information above most strongly supports which one of the following?",
        "Which one of the following is most strongly supported by the statements above?",
        "Which one of the following is best supported by the survey results described?",
    ],
    "Explain or Resolve": [
        "Which one of the following, if true, most helps to explain the unexpected decline?",
        "Which one of the following, if true, does most to resolve the apparent conflict described above?",
        "Which one of the following, if true, best reconciles the two findings?",
        "Which one of the following, if true, would most help to account for the rise in sales?",
    ],
    "Principle": [
        "Which one of the following principles, if valid, most helps to justify the judge's decision?",
        "The reasoning above most closely conforms to which one of the following principles?",
        "Which one of the following propositions is best illustrated by the situation described?",
    ],
    "Dispute": [
        "The two speakers disagree over whether",
        "Which one of the following is the point at issue between the architect and the engineer?",
        "The dialogue provides the most support for the claim that Ana and Bo are committed to disagreeing about",
    ],
    "Technique": [
        "The columnist's argument proceeds by",
        "Which one of the following describes the technique of reasoning used by the critic?",
        "The method of argument used above is to",
        "The second speaker responds to the first speaker by",
    ],
    "Role": [
        "The claim that prices rose plays which one of the following roles in the argument?",
        "The statement about the new library figures in the argument in which one of the following ways?",
        "Which one of the following most accurately describes the role played in the argument by the remark "
        "about taxes?",
    ],
    "Identify a Flaw": [
        "The reasoning in the advertisement is flawed because it",
        "The argument is most vulnerable to criticism on the grounds that it",
        "Which one of the following identifies an error of reasoning in the argument?",
        "The argument's reasoning is questionable because the argument fails to consider that",
    ],
    "Match Flaws": [
        "The flawed reasoning in which one of the following is most similar to that in the argument above?",
        "Which one of the following arguments exhibits a flawed pattern of reasoning most like that above?",
        "Which one of the following contains questionable reasoning most closely parallel to that in the passage?",
    ],
    "Match Structures": [
        "The reasoning in which one of the following arguments is most similar to that in the argument above?",
        "Which one of the following arguments is most closely parallel in its reasoning to the argument above?",
        "The pattern of reasoning in which one of the following is most analogous to that above?",
    ],
    "Others": [
        "Which one of the following most logically completes the passage?",
        "Which one of the following is an example of the kind of case described above?",
        "Each of the following is mentioned in the passage EXCEPT:",
    ],
}


def test_the_data_checks_know_every_type():
    from reclor_lab.runs.data_checks import NUM_QUESTION_TYPES

    assert len(QUESTION_TYPES) == NUM_QUESTION_TYPES


def test_every_type_has_at_least_three_stems():
    assert set(STEMS) == set(QUESTION_TYPES) and len(QUESTION_TYPES) == 17
    assert all(len(v) >= 3 for v in STEMS.values())


@pytest.mark.parametrize("name", QUESTION_TYPES)
def test_stems_are_classified(name):
    wrong = [(s, QUESTION_TYPES[classify_question(s)]) for s in STEMS[name]
             if QUESTION_TYPES[classify_question(s)] != name]
    assert not wrong, f"expected {name!r}, got {wrong}"


def test_official_field_wins_and_agreement_counts_per_type():
    recs = [
        {"id_string": "a", "question": STEMS["Weaken"][0], "question_type": 3},
        {"id_string": "b", "question": STEMS["Weaken"][1], "question_type": 2},  # disagrees
        {"id_string": "c", "question": STEMS["Role"][0], "question_type": 12},
    ]
    assert record_type(recs[1]) == 2  # the official field, not the rules' 3
    assert record_type({"id_string": "d", "question": STEMS["Role"][0]}) == 12
    a = agreement(recs)
    assert (a.agreeing, a.total) == (2, 3)
    assert a.per_type == {2: (0, 1), 3: (1, 1), 12: (1, 1)}
    assert agreement([{"id_string": "d", "question": "x"}]) is None


def test_data_types_command(tmp_path, capsys):
    recs = [{"context": "c", "question": STEMS["Weaken"][0], "answers": ["a", "b", "c", "d"],
             "id_string": "t0", "question_type": 3},
            {"context": "c", "question": STEMS["Dispute"][0], "answers": ["a", "b", "c", "d"],
             "id_string": "t1", "question_type": 4}]
    path = tmp_path / "test.json"
    path.write_text(json.dumps(recs))
    assert main(["data", "types", str(path)]) == 0
    out = capsys.readouterr().out
    assert "t0" in out and "Weaken" in out and "Dispute" in out
    assert "overall" in out and "50.0%" in out
    assert main(["data", "types", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = data["files"][0]["records"]
    assert rows[1] == {"id_string": "t1", "inferred": 10, "inferred_name": "Dispute", "official": 4,
                       "official_name": "Evaluation"}
    assert data["files"][0]["agreement"]["overall"] == 0.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([dict(recs[0], question_type=17)]))
    assert main(["data", "types", str(bad)]) == 1
    assert "question_type" in capsys.readouterr().err
