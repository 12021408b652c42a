"""The bundled ReClor-format data: deterministic, well-formed, and what the generator writes."""

import collections
import json

import pytest

from reclor_lab.tools import synth
from reclor_lab.config import BUNDLED_DATA_DIR, NUM_LABELS
from reclor_lab.data import format_example


def test_same_seed_same_records():
    assert synth.generate_split("train", 50, seed=3) == synth.generate_split("train", 50, seed=3)
    assert synth.generate_split("train", 50, seed=3) != synth.generate_split("train", 50, seed=4)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_schema(split):
    recs = synth.generate_split(split, 200, seed=1)
    assert len({r["id_string"] for r in recs}) == len(recs)
    for r in recs:
        assert isinstance(r["context"], str) and r["context"]
        assert isinstance(r["question"], str) and r["question"]
        assert len(r["answers"]) == NUM_LABELS and all(isinstance(a, str) and a for a in r["answers"])
        assert len(set(r["answers"])) == NUM_LABELS
        assert r["id_string"].startswith(split + "_")
        if split == "test":
            assert "label" not in r
            assert 0 <= r["question_type"] < len(synth.QUESTION_TYPES)
        else:
            assert "question_type" not in r
            assert r["label"] in range(NUM_LABELS)


def test_label_skew():
    counts = collections.Counter(r["label"] for r in synth.generate_split("train", 2000, seed=0))
    shares = [counts[i] / 2000 for i in range(NUM_LABELS)]
    assert max(shares) - min(shares) > 0.02  # uneven, so class weighting matters a bit
    assert min(shares) > 0.18


def test_splits_disjoint_and_pretraining_avoids_eval():
    key = lambda r: (r["context"], r["question"], tuple(r["answers"]))  # noqa: E731
    sizes = synth.DEFAULT_SIZES
    tr = {key(r) for r in synth.generate_split("train", sizes["train"], synth.DEFAULT_SEED)}
    va = {key(r) for r in synth.generate_split("val", sizes["val"], synth.DEFAULT_SEED)}
    te = {key(r) for r in synth.generate_split("test", sizes["test"], synth.DEFAULT_SEED)}
    assert not (tr & va) and not (tr & te) and not (va & te)
    corpus = set(synth.pretraining_corpus(300, with_answer=False))
    evals = {format_example({"context": c, "question": q, "answers": list(a)}) for c, q, a in va | te}
    assert not (corpus & evals)


def test_committed_data_equals_regeneration(tmp_path):
    paths = synth.write_bundled_data(tmp_path)
    for split, path in paths.items():
        committed = BUNDLED_DATA_DIR / f"{split}.json"
        assert committed.read_bytes() == path.read_bytes(), f"{committed} differs from a regeneration"
        assert len(json.loads(committed.read_text())) == synth.DEFAULT_SIZES[split]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_question_options_carry_no_cue_prefix(split):
    """A cue prefix in front of a question option is not English ("It is always true that has
    Priya lived …?"): question options stay bare, and the cued records of other schemes keep it."""
    prefixes = synth.MODEST + synth.SWEEPING
    recs = synth.generate_split(split, synth.DEFAULT_SIZES[split], synth.DEFAULT_SEED)
    answers = [a for r in recs for a in r["answers"]]
    questions = [a for a in answers if a.endswith("?")]
    assert questions, "the Evaluation scheme writes question options"
    assert not [a for a in questions if a.startswith(prefixes)]
    assert sum(a.startswith(prefixes) for a in answers) > len(answers) / 2  # the cue is still there


def test_pretraining_stream_keeps_its_cue_on_questions():
    """The committed tiny model was pre-trained on this stream as first written (reclor_lab.tools.tiny
    rebuilds it from these texts), so the pre-training texts still carry the prefix."""
    texts = synth.pretraining_corpus(300, with_answer=False)
    assert any(p + " has " in t or p + " was " in t or p + " is " in t
               for t in texts for p in synth.MODEST + synth.SWEEPING)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_the_easy_hard_split_read_from_the_text_is_the_generators_own(split):
    """cue_part reads the split from the options alone (no label: the test file has none); on
    every bundled file it equals what the generator recorded while writing each record."""
    committed = json.loads((BUNDLED_DATA_DIR / f"{split}.json").read_text())
    parts = [synth.cue_part(r) for r in committed]
    assert parts == synth.generated_parts(split, synth.DEFAULT_SIZES[split])
    easy = parts.count("EASY") / len(parts)
    assert 0.6 < easy < synth.CUE_SHARE + 0.05  # the cue share, less the question options left bare
    for r, part in zip(committed, parts):
        sweeping = [synth.opens_sweepingly(a) for a in r["answers"]]
        if part == "EASY":
            assert sum(sweeping) == 3
            if "label" in r:
                assert not sweeping[r["label"]] and synth.opens_modestly(r["answers"][r["label"]])
        else:
            assert not any(sweeping) and not any(synth.opens_modestly(a) for a in r["answers"])


def test_generated_parts_follow_the_seed():
    recs = synth.generate_split("val", 40, seed=5)
    assert synth.generated_parts("val", 40, seed=5) == [synth.cue_part(r) for r in recs]
