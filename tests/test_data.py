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


# --- fitting max_len: the passage is shortened, never the question, the options or the cue ---------

def _long_record(i: int = 0) -> dict:
    start = "The survey began in the northern valley where farmers keep goats."
    middle = " ".join(f"Year {y} the committee reviewed every proposal twice." for y in range(60))
    end = "Therefore the council must approve the new road before winter."
    return {"context": f"{start} {middle} {end}", "question": "Which one of the following most weakens the argument?",
            "answers": ["The road floods each spring.", "Goats avoid roads.", "Winter came early.",
                        "Farmers support the council."], "label": 2, "id_string": f"long_{i}"}


def test_a_long_passage_is_shortened_in_the_middle_and_everything_after_it_survives(tiny_tokenizer):
    from reclor_lab.config import TINY_TEMPLATE
    from reclor_lab.data import column, tokenize_records
    from reclor_lab.runs.data_checks import CUT_MARK
    from reclor_lab.runs.cache import encode_texts

    rec = _long_record()
    full = len(encode_texts([format_example(rec, TINY_TEMPLATE)], tiny_tokenizer)[0])
    max_len = 160
    assert full > max_len + 100  # the old cut at max_len dropped the options and the cue
    ds, stats = tokenize_records([rec, GOOD], tiny_tokenizer, max_len, TINY_TEMPLATE, cache=False)
    assert column(ds, "length")[0] <= max_len and column(ds, "full_length") == [full, column(ds, "length")[1]]
    assert stats.truncated == 1 and "1 of 2 passages shortened to fit max_len 160" in stats.line()
    ids = ds[0]["input_ids"]
    text = tiny_tokenizer.decode(ids, skip_special_tokens=True)
    assert text == tiny_tokenizer.decode(encode_texts([ds[0]["text"]], tiny_tokenizer)[0], skip_special_tokens=True)
    assert CUT_MARK.strip() in ds[0]["text"]
    tail = format_example(rec, TINY_TEMPLATE).split(" Question: ", 1)[1]
    assert ds[0]["text"].endswith(" Question: " + tail)  # question, all four options, " Answer:"
    for letter, answer in zip("ABCD", rec["answers"]):
        assert f"Option {letter}: {answer}" in ds[0]["text"]
    assert ds[0]["text"].rstrip().endswith("Answer:")
    context = ds[0]["text"].split(" Question: ")[0]
    assert context.startswith("Context: The survey began") and context.endswith("before winter.")
    assert ds[1]["text"] == format_example(GOOD, TINY_TEMPLATE)  # a short one is left alone


def test_a_record_whose_question_and_options_cannot_fit_is_one_clear_error(tiny_tokenizer, tmp_path):
    from reclor_lab.config import TINY_TEMPLATE
    from reclor_lab.data import tokenize_records

    with pytest.raises(DataError, match=r"train.json: record 1 \(id_string 'long_1'\): its question and "
                                        r"options alone take (\d+) tokens .*, more than max_len 30, and only a "
                                        r"passage is ever shortened; raise max_len to at least \1 for this run"):
        tokenize_records([GOOD, _long_record(1)], tiny_tokenizer, 30, TINY_TEMPLATE, cache=False,
                         source=tmp_path / "train.json")


def test_measure_records_reports_what_tokenize_records_reports(tiny_tokenizer):
    from reclor_lab.data import measure_records, tokenize_records

    records = [_long_record(i) for i in range(3)] + [GOOD]
    _, stats = tokenize_records(records, tiny_tokenizer, 200, cache=False)
    assert measure_records(records, tiny_tokenizer, 200, chunk=2) == stats
    assert stats.truncated == 3


def _realistic_file(path: Path, megabytes: float) -> Path:
    """A ReClor-shaped file: a passage of six sentences, a question, four options of 10-25 words."""
    import random

    rng = random.Random(0)
    words = ("the committee argues that every proposal must be reviewed which assumption strengthens "
             "weakens conclusion evidence researchers found city council economists").split()

    def sentence(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."

    records, size = [], 0
    while size < megabytes * 2**20:
        r = {"context": " ".join(sentence(rng.randint(8, 20)) for _ in range(6)), "question": sentence(12),
             "answers": [sentence(rng.randint(10, 25)) for _ in range(4)], "label": rng.randrange(4),
             "id_string": f"train_{len(records)}"}
        records.append(r)
        size += len(json.dumps(r)) + 2
    path.write_text(json.dumps(records))
    return path


MEASURE = """
import sys
from pathlib import Path
from reclor_lab.cli import main
from reclor_lab.model import load_tokenizer
from reclor_lab.runs.cache import encode_texts

def kib(field):  # /proc/self/status: this process's memory now (VmRSS) and its peak (VmHWM)
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1]) * 1024

encode_texts(["warm up"], load_tokenizer(sys.argv[2]))  # imports and the tokenizer are not the check
Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from here
base = kib("VmRSS:")
code = main(["data", "check", sys.argv[1], "--model", sys.argv[2]])
print("GROWTH", code, kib("VmHWM:") - base)
"""


@pytest.mark.slow
def test_data_check_of_a_large_file_needs_under_5x_its_size_and_writes_no_cache(tmp_path):
    """A 20 MB file: the check's peak memory beyond the loaded program stays under 5x the file's
    size. It was 47x, from keeping every token of the file in Python lists and a datasets table.

    Measured in a process of its own as the peak resident set (VmHWM, the Rust tokenizer's
    memory included), reset once the imports are done. Not ru_maxrss: Linux carries it over
    from the parent through exec, and a pytest process that loaded models is far bigger."""
    import os
    import subprocess
    import sys

    from reclor_lab.config import TINY_MODEL_DIR

    path = _realistic_file(tmp_path / "train.json", 20)
    cache = tmp_path / "cache"
    env = dict(os.environ, RECLOR_LAB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(TINY_MODEL_DIR)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    code, growth = r.stdout.split("GROWTH")[1].split()
    assert code == "0" and "records, labeled" in r.stdout
    assert int(growth) < 5 * path.stat().st_size, f"peak grew by {int(growth) / path.stat().st_size:.1f}x the file"
    assert not cache.exists() or not any(cache.rglob("*")), "data check wrote a cache entry"
