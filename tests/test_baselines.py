"""Baselines: letter tokens found through the tokenizer, k-shot prompts that never lose the
question, trivial baselines; end to end, zero-shot scoring of the tiny model and the letter head."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reclor_lab.results.baselines import (
    ANSWER_CUE,
    BaselineError,
    binomial_range,
    build_prompt,
    choose_shots,
    letter_token_ids,
    prompt_text,
    trivial_baselines,
)
from reclor_lab.config import TINY_TEMPLATE, ConfigError, get_preset
from reclor_lab.runs.rundir import write_json

LETTERS = "ABCD"


def _fast_tokenizer(model, pre_tokenizer, decoder=None):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizer
    if decoder is not None:
        backend.decoder = decoder
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")


def test_letter_tokens_of_the_tiny_tokenizer(tiny_tokenizer):
    ids = letter_token_ids(tiny_tokenizer)
    assert tiny_tokenizer.convert_ids_to_tokens(ids) == ["▁A", "▁B", "▁C", "▁D"]
    # what the classifier and the scorer read: the prompt, then the letter as one more token
    for letter, i in zip(LETTERS, ids):
        full = tiny_tokenizer("Option D: x Answer: " + letter)["input_ids"]
        assert full[-1] == i and full[:-1] == tiny_tokenizer("Option D: x Answer:")["input_ids"]


def test_letter_tokens_of_a_sentencepiece_style_tokenizer():
    """A Metaspace ("▁") word-level tokenizer whose ids for the letters are deliberately not in
    alphabetical order: the ids come from the vocabulary, not from a table."""
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "</s>": 1, "▁Answer:": 2, "▁D": 3, "▁C": 4, "▁B": 5, "▁A": 6, "A": 7, "B": 8,
             "C": 9, "D": 10}
    tok = _fast_tokenizer(models.WordLevel(vocab, unk_token="<unk>"),
                          pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
                          decoders.Metaspace(replacement="▁", prepend_scheme="always"))
    assert letter_token_ids(tok) == [6, 5, 4, 3]  # "▁A".."▁D", not the bare "A".."D"


def test_letter_tokens_of_byte_level_and_whitespace_tokenizers():
    from tokenizers import models, pre_tokenizers

    byte_vocab = {"<unk>": 0, "</s>": 1, "ĠAnswer": 2, ":": 3, "ĠA": 11, "ĠB": 12, "ĠC": 13, "ĠD": 14,
                  "A": 20, "B": 21, "C": 22, "D": 23, "Ġ": 4}
    gpt2_style = _fast_tokenizer(models.WordLevel(byte_vocab, unk_token="<unk>"),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False))
    assert letter_token_ids(gpt2_style) == [11, 12, 13, 14]

    words = {"<unk>": 0, "</s>": 1, "Answer": 2, ":": 3, "A": 30, "B": 31, "C": 32, "D": 33}
    plain = _fast_tokenizer(models.WordLevel(words, unk_token="<unk>"), pre_tokenizers.Whitespace())
    assert letter_token_ids(plain) == [30, 31, 32, 33]

    no_letters = _fast_tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "Answer": 2, ":": 3}, unk_token="<unk>"),
                                 pre_tokenizers.Whitespace())
    with pytest.raises(BaselineError, match="share a token id"):
        letter_token_ids(no_letters)  # every letter is <unk>


def _record(i: int, words: int = 30) -> dict:
    return {"id_string": f"r{i}", "label": i % 4,
            "context": " ".join(f"Statement {i} part {k} holds." for k in range(words)),
            "question": f"Which one of the following most strengthens argument {i}?",
            "answers": [f"Option text {i}{c}." for c in LETTERS]}


def test_shots_are_deterministic_and_checked():
    train = [_record(i) for i in range(20)]
    assert choose_shots(train, 3, seed=1) == choose_shots(train, 3, seed=1)
    assert choose_shots(train, 3, seed=1) != choose_shots(train, 3, seed=2)
    assert choose_shots(train, 0, seed=1) == []
    with pytest.raises(BaselineError, match="only 20"):
        choose_shots(train, 21, seed=1)


def test_k_shot_truncation_never_cuts_the_question(tiny_tokenizer):
    tok = tiny_tokenizer
    target, shots = _record(99, words=40), [_record(i, words=10) for i in range(3)]
    tail = prompt_text(dict(target, context="X"), TINY_TEMPLATE).split("Question:")[1]

    roomy = build_prompt(target, tok, TINY_TEMPLATE, shots, max_tokens=10_000)
    assert (roomy.shots_used, roomy.shots_dropped, roomy.context_cut) == (3, 0, False)
    text = tok.decode(roomy.ids, skip_special_tokens=True)
    assert text.count(ANSWER_CUE) == 4 and text.endswith(tail)
    assert text.index(shots[0]["question"]) < text.index(shots[2]["question"]) < text.index(target["question"])

    alone = len(build_prompt(target, tok, TINY_TEMPLATE, [], max_tokens=10_000).ids)
    tight = build_prompt(target, tok, TINY_TEMPLATE, shots, max_tokens=alone + 5)
    assert tight.shots_used == 0 and tight.shots_dropped == 3 and not tight.context_cut
    assert len(tight.ids) <= alone + 5

    cut = build_prompt(target, tok, TINY_TEMPLATE, shots, max_tokens=alone - 60)
    assert cut.context_cut and cut.shots_used == 0 and len(cut.ids) <= alone - 60
    text = tok.decode(cut.ids, skip_special_tokens=True)
    assert text.endswith(tail) and "…" in text and "part 0 holds" in text and "part 39 holds" not in text

    with pytest.raises(BaselineError, match="r99"):
        build_prompt(target, tok, TINY_TEMPLATE, [], max_tokens=20)


def test_binomial_range_and_trivial_baselines():
    assert binomial_range(10, 0.5) == (0.2, 0.8)  # Bin(10, 1/2): P(X<=1)=.011, P(X<=2)=.055, P(X<=7)=.945, P(X<=8)=.989
    lo, hi = binomial_range(500, 0.25)
    assert lo < 0.25 < hi and hi - lo == pytest.approx(0.076, abs=0.006)  # ±1.96·sqrt(.25·.75/500)
    rows = {r["method"]: r for r in trivial_baselines([1, 1, 1, 0, 2, 3], [1, 0, 0, 1, 2, 2, 2, 3])}
    assert rows["chance"]["accuracy"] == 0.25
    assert rows["majority"]["accuracy"] == 2 / 8 and "always B" in rows["majority"]["note"]
    # position prior: p_train = (1/6, 3/6, 1/6, 1/6), p_eval = (2, 2, 3, 1) / 8
    assert rows["position prior"]["accuracy"] == pytest.approx((2 + 6 + 3 + 1) / 48)
    for r in rows.values():
        assert r["accuracy_ci95"][0] <= r["accuracy"] <= r["accuracy_ci95"][1]


def test_letter_head_needs_the_answer_cue():
    with pytest.raises(ConfigError, match="head_init"):
        get_preset("llama2-7b", head_init="letters")
    with pytest.raises(ConfigError, match="head_init"):
        get_preset("tiny", head_init="zeros")
    assert get_preset("tiny", head_init="letters").head_init == "letters"


@pytest.mark.slow
def test_zero_shot_beats_chance_and_the_letter_head_starts_there(tmp_path):
    """The tiny model was pre-trained on text ending in " Answer: X": scored as a causal LM it
    is above chance on the bundled val set, and a classifier whose head starts from the letter
    rows predicts exactly what the zero-shot scorer does, before any training."""
    from reclor_lab.results.baselines import lm_baseline
    from reclor_lab.cli import main
    from reclor_lab.train import evaluate, setup

    cfg = get_preset("tiny", head_init="letters", output_dir=str(tmp_path / "run"))
    zero = lm_baseline(cfg, verbose=False)
    assert zero["n"] == 256 and zero["accuracy_ci95"][0] > 0.25, zero["accuracy_ci95"]
    assert sum(zero["predicted_distribution"].values()) == 256
    assert np.allclose(np.sum(zero["probabilities"], axis=1), 1, atol=1e-5)

    run = setup(cfg, verbose=False)
    baseline = evaluate(run, run.val_ds)
    assert baseline["accuracy"] == zero["accuracy"]
    assert baseline["predictions"] == zero["predictions"]

    # the CLI writes the result beside a run's metrics
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_json(run_dir / "config.json", cfg.replace(eval_limit=32).to_dict())
    assert main(["evaluate", str(run_dir), "--zero-shot"]) == 0
    saved = json.loads((run_dir / "baseline-zero-shot.json").read_text())
    assert saved["n"] == 32 and saved["predictions"] == zero["predictions"][:32]


# --- rules without a model ------------------------------------------------------------------------------

def test_overlap_and_rule_answers():
    from reclor_lab.results.baselines import overlap_answer, rule_answer

    rec = {"context": "Every owl in Varn hunts mice at night.",
           "answers": ["In every case, owls in Varn hunt mice at night.", "Probably, owls hunt.",
                       "Cats sleep all day.", "Invariably, dogs bark."]}
    assert overlap_answer(rec) == 0          # the sweeping option shares the most words
    assert rule_answer(rec) == 1             # rejected first, then the most overlap of the rest
    assert overlap_answer(rec, [2, 3]) == 2  # ties go to the first option
    every = dict(rec, answers=["In every case, a.", "Invariably, an owl hunts mice at night.", "In every case, b.",
                               "Without exception, c."])
    assert rule_answer(every) == 1           # all sweeping: none rejected


def test_rule_baselines_on_the_bundled_val_split():
    """The figures the README quotes, from the committed data alone (no model): the rule is
    right on every EASY record, and on HARD (nothing to reject) it is word overlap."""
    from reclor_lab.results.baselines import results_table, rule_baselines
    from reclor_lab.config import BUNDLED_DATA_DIR

    val = json.loads((BUNDLED_DATA_DIR / "val.json").read_text())
    overlap, rule = rule_baselines(val)
    assert rule["parts"]["EASY"]["accuracy"] == 1.0
    assert rule["parts"]["HARD"] == overlap["parts"]["HARD"]
    assert round(rule["accuracy"], 3) == 0.926 and round(overlap["accuracy"], 3) == 0.664
    assert (rule["parts"]["EASY"]["n"], rule["parts"]["HARD"]["n"]) == (191, 65)
    table = results_table([rule, {"method": "no parts", "accuracy": 0.5, "accuracy_ci95": [0.4, 0.6], "n": 256}])
    assert "EASY" in table.splitlines()[0] and table.splitlines()[2].endswith("  1.000  0.708")


def test_part_accuracies_without_a_split():
    from reclor_lab.results.baselines import BaselineError, part_accuracies

    plain = [{"context": "x", "answers": ["a", "b", "c", "d"], "label": i % 4} for i in range(8)]
    out = part_accuracies([0] * 8, plain)
    assert out["accuracy"] == 0.25 and out["n"] == 8 and out["parts"] == {}
    with pytest.raises(BaselineError, match="predictions"):
        part_accuracies([0], plain)
