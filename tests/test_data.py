"""The data pipeline on tiny fixtures of our own (tests/fixtures/mini): no ReClor text here."""

import json
from pathlib import Path

import pytest

from reclor_lab.config import REFERENCE_TEMPLATE
from reclor_lab.data import (
    DataError, class_weights, epoch_batches, format_example, label_distribution, length_grouped_batches,
    load_split, padding_fraction, shuffled_batches,
)

MINI = Path(__file__).parent / "fixtures" / "mini"
GOOD = {"context": "Every owl hunts.", "question": "Which must be true?",
        "answers": ["a", "b", "c", "d"], "label": 1, "id_string": "r0"}


def write(tmp_path, payload, name="train.json", raw=False):
    path = tmp_path / name
    if raw:
        path.write_bytes(payload)
    else:
        path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def test_fixture_splits_load_labeled_and_unlabeled():
    assert len(load_split(MINI, "train")) == 4
    test = load_split(MINI, "test")
    assert all("label" not in r and isinstance(r["question_type"], int) for r in test)


def test_format_reproduces_the_reference_layout_exactly():
    rec = load_split(MINI, "train")[0]
    assert format_example(rec) == (
        "Context: Every lighthouse keeper in Varn rises before dawn. Mara rises after dawn. "
        "Question: If the statements above are true, which one of the following must also be true? "
        "Option A: Mara is not a lighthouse keeper in Varn. Option B: Mara is a lighthouse keeper in Varn. "
        "Option C: Some keepers in Varn rise after dawn. Option D: No one in Varn rises before dawn."
    )
    assert format_example(rec, REFERENCE_TEMPLATE + " Answer:").endswith("before dawn. Answer:")


@pytest.mark.parametrize("payload, message", [
    ({"not": "a list"}, "expected a JSON list of records, got a JSON dict"),
    ([], "the file holds no records"),
    (["text"], "record 0: expected a JSON object, got str"),
    ([{k: v for k, v in GOOD.items() if k != "question"}], "record 0 (id_string 'r0'): missing key 'question'"),
    ([GOOD | {"context": 7}], "'context' must be a string, got int"),
    ([GOOD | {"context": "  "}], "(id_string 'r0'): 'context' is empty"),
    ([GOOD | {"answers": "abcd"}], "'answers' must be a list of 4 strings, got str"),
    ([GOOD | {"answers": ["a", "b", "c"]}], "'answers' must have exactly 4 options, got 3"),
    ([GOOD | {"answers": ["a", "b", 3, "d"]}], "option C must be a string, got int"),
    ([GOOD | {"answers": ["a", "", "c", "d"]}], "option B is empty"),
    ([GOOD | {"label": 4}], "'label' must be 0-3, got 4"),
    ([GOOD | {"label": "2"}], "'label' must be an integer 0-3, got '2'"),
    ([GOOD | {"label": True}], "'label' must be an integer 0-3, got True"),
    ([GOOD, GOOD | {"label": 2}], "record 1 (id_string 'r0'): duplicate id_string (first used by record 0)"),
    ([GOOD, {k: v for k, v in GOOD.items() if k != "label"} | {"id_string": "r1"}],
     "record 1 (id_string 'r1'): missing 'label' (this split must be labeled)"),
])
def test_bad_records_get_one_clear_error_naming_file_and_record(tmp_path, payload, message):
    path = write(tmp_path, payload)
    before = path.read_bytes()
    with pytest.raises(DataError) as e:
        load_split(tmp_path, "train")
    assert str(e.value).startswith(str(path) + ": ")
    assert message in str(e.value)
    assert path.read_bytes() == before  # the input is never modified


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="val.json: file not found"):
        load_split(tmp_path, "val")
    write(tmp_path, b"\xff\xfe[]", raw=True)
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0"):
        load_split(tmp_path, "train")
    # A missing colon: Python 3.11–3.13 report it alike (3.13 reworded the trailing-comma error).
    write(tmp_path, b'[{"context" "x"}]', raw=True)
    with pytest.raises(DataError, match=r"not valid JSON \(line 1, column 13"):
        load_split(tmp_path, "train")


def test_test_split_may_be_unlabeled_but_not_mixed(tmp_path):
    unlabeled = {k: v for k, v in GOOD.items() if k != "label"}
    write(tmp_path, [unlabeled], "test.json")
    assert load_split(tmp_path, "test")[0]["id_string"] == "r0"
    write(tmp_path, [unlabeled, GOOD | {"id_string": "r1"}], "test.json")
    with pytest.raises(DataError, match="has a 'label' but earlier records have none"):
        load_split(tmp_path, "test")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_split(tmp_path, "dev")


def test_class_weights_formula():
    w = class_weights([0, 0, 0, 0, 1, 1, 2, 3])
    assert w.tolist() == [0.5, 1.0, 2.0, 2.0]                 # N / (4 * n_c)
    assert class_weights([0, 1, 2, 3]).tolist() == [1.0] * 4  # balanced → all ones
    labels = [0, 0, 0, 0, 1, 1, 2, 3]
    # every position contributes the same total weight
    totals = [w[c].item() * labels.count(c) for c in range(4)]
    assert max(totals) == pytest.approx(min(totals))
    assert label_distribution(load_split(MINI, "train")) == {"A": 1, "B": 1, "C": 1, "D": 1}


def test_length_grouping_cuts_padding_and_keeps_every_example_once():
    import random
    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(1000)]
    grouped = length_grouped_batches(lengths, 8, seed=1)
    plain = shuffled_batches(len(lengths), 8, seed=1)
    for batches in (grouped, plain):
        assert sorted(i for b in batches for i in b) == list(range(1000))
    assert padding_fraction(lengths, grouped) < 0.05 < padding_fraction(lengths, plain)
    # a pure function of (seed, epoch): the order a resumed run replays
    assert epoch_batches(lengths, 8, 42, 2, True) == epoch_batches(lengths, 8, 42, 2, True)
    assert epoch_batches(lengths, 8, 42, 2, True) != epoch_batches(lengths, 8, 42, 3, True)
