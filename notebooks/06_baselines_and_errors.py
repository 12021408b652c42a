# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: reclor-lab (Python 3)
#     language: python
#     name: reclor-lab
# ---

# %% [markdown]
# # 06 · What did fine-tuning buy? Baselines and errors
#
# The reference reports "~25 % → ~60 %" on ReClor's validation set. The 25 % is the accuracy of
# a **randomly initialised classifier head**: the `score` layer that
# `AutoModelForSequenceClassification` adds starts random, and the language model's own idea of
# which letter comes after "Answer:" is thrown away. So "25 %" says nothing about what the model
# could do *before* fine-tuning. This notebook measures that, then looks at where the fine-tuned
# model still fails:
#
# 1. what guessing scores (chance, the majority position, the position prior), and what ten
#    lines of rules score with no model at all: the data's **EASY / HARD** split,
# 2. **zero-shot and k-shot LM scoring**: the same 4-bit model, read as a language model,
# 3. **the letter head**: a classifier head that starts as the zero-shot scorer,
# 4. everything in one table and one figure, each accuracy with its 95 % interval, on EASY and
#    HARD too,
# 5. what the fine-tuned model did and did not learn; error analysis: accuracy by question type,
#    confusion matrix, position bias, calibration, the most confident wrong answers,
# 6. what the unlabeled test predictions can tell (distributions only).
#
# **Files.** It reads notebook 04's run **`runs/notebook-<preset>`** (if it is missing, the next
# cells train it, about a minute for the tiny preset) and writes a short run of its own,
# `runs/notebook-<preset>-letters` (emptied each time). One exercise: `rule_baseline`.
#
# **Intervals.** On 256 validation examples one standard error of an accuracy near 60 % is
# $\sqrt{0.6 \cdot 0.4 / 256} \approx 3$ points (2.2 points on ReClor's 500): two results closer
# than their intervals' overlap are not shown to differ. Every accuracy below carries a **Wilson
# 95 % interval** (`reclor_lab.metrics.wilson_interval`).

# %%
PRESET = "tiny"  # or "llama2-7b": the reference solution (GPU, weights and data on disk)

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the Hugging Face hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from reclor_lab.config import get_preset
from reclor_lab.course.notebook import start_notebook

start_notebook("torch", "transformers", "peft", "matplotlib")  # cd to the repo root, print versions

cfg = get_preset(PRESET, output_dir=f"runs/notebook-{PRESET}")  # notebook 04's run
print()
print("run directory:", cfg.output_dir)

# %%
import shutil
from pathlib import Path

import numpy as np
from datasets.utils.logging import disable_progress_bar
from transformers.utils import logging as hf_logging

from reclor_lab.results.analysis import (
    format_test_summary, most_confident_wrong, predict_proba, summarize_test_predictions, val_analysis,
)
from collections import Counter

from reclor_lab.course import checks
from reclor_lab.results.analysis import easy_hard
from reclor_lab.results.baselines import (
    build_prompt, choose_shots, context_window, letter_token_ids, letter_head_weights, lm_baseline, part_accuracies,
    results_table, trivial_baselines, words,
)
from reclor_lab.config import OPTION_LETTERS
from reclor_lab.data import format_example, run_records, tokenize_records
from reclor_lab.metrics import accuracy_interval, format_accuracy
from reclor_lab.model import load_model, load_tokenizer, pick_device, resolve_compute_dtype
from reclor_lab.plots import (
    plot_accuracy_by_type, plot_confusion, plot_position_bias, plot_reliability, plot_results,
)
from reclor_lab.results.qtypes import agreement
from reclor_lab.runs.job import ensure_trained, load_run, predict_run, saved_history, saved_metrics
from reclor_lab.train import evaluate, fit, setup

disable_progress_bar()  # datasets' progress bars (token-cache writes)
hf_logging.disable_progress_bar()  # and the model loader's

# %%
# NBVAL_IGNORE_OUTPUT
# (the message depends on whether notebook 04 ran before)
run_dir = Path(cfg.output_dir)
print(ensure_trained(cfg))  # trains it now if notebook 04 has not run (a minute on a CPU)

# %% [markdown]
# ## 1. What guessing scores
#
# Three baselines that need no model: a **uniform guess** (25 % in expectation), **always the
# most frequent answer position** of the training set, and a guess **drawn from the training
# set's position frequencies**. For the two random guessers the interval is where 95 % of such
# guessers land on this many examples; the majority guess is a fixed prediction, so its interval
# is a Wilson interval. These depend only on the data, so the numbers below are the same on every
# machine.

# %%
train, val = run_records(cfg, "train"), run_records(cfg, "val")
trivial = trivial_baselines([r["label"] for r in train], [r["label"] for r in val])
print(results_table(trivial))

# %% [markdown]
# ### Beat the model without a model
#
# ReClor's authors found that models answer many of its questions from the options alone,
# without the passage; they split the test set into **EASY** (the questions such option-only
# models get right) and **HARD** (the rest), and the leaderboard scores the two apart. The kit's
# data carries a cue of that kind on purpose, and its validation and test files have the same
# split, read from the options (`reclor_lab.results.analysis.easy_hard`). How many of each:

# %%
parts = easy_hard(val)
print(f"val: {parts.count('EASY')} EASY, {parts.count('HARD')} HARD of {len(val)}")

# %% [markdown]
# Look at the data the way a test-taker looks at options: how do the right options open, and
# how do the wrong ones? The first two words of every option of the training split:

# %%
openings = {"right": Counter(), "wrong": Counter()}
for r in train:
    for i, option in enumerate(r["answers"]):
        openings["right" if i == r["label"] else "wrong"][" ".join(option.split()[:2])] += 1
for kind, counts in openings.items():
    print(f"{kind:<6}", ", ".join(f"{w!r} {n}" for w, n in counts.most_common(6)))

# %% [markdown]
# **Exercise 13.** Write `rule_baseline(record)`: the index (0–3) of the option a rule picks from
# the record's text alone (`context`, `question`, `answers`; no label). Two steps: reject the
# options that open sweepingly (make your own list from the counts above), then take the
# remaining option that shares the most words with the passage (`words(text)` gives the set of
# lower-case words of a text). The check runs it on 300 fresh records of the kit's generator,
# none of them in the bundled files, and asks for at least 85 % overall and 50 % on their HARD
# part.

# %%
def rule_baseline(record: dict) -> int:
    """Exercise 13: reject the options that open sweepingly, then the most word overlap with the passage."""
    # BEGIN SOLUTION: a tuple of sweeping openings and str.startswith; then max over the kept options
    sweeping = ("In every case,", "Without exception,", "It is always true that", "Invariably,", "in every respect",
                "invariably")
    kept = [i for i, a in enumerate(record["answers"]) if not a.startswith(sweeping)] or [0, 1, 2, 3]
    passage = words(record["context"])
    return max(kept, key=lambda i: len(words(record["answers"][i]) & passage))
    # END SOLUTION


# %%
rule_baseline = checks.check_rule_baseline(rule_baseline)

# %% [markdown]
# Your rule on the validation split, beside the package's two rules (`rule_baselines`: word
# overlap alone, and the reference solution of this exercise). These use no model, so the
# numbers are the same on every machine.
#
# **Predict before you run.** Will word overlap alone do better on EASY or on HARD?

# %%
from reclor_lab.results.baselines import rule_baselines

rules = rule_baselines(val)
mine = {"method": "your rule_baseline", **part_accuracies([rule_baseline(r) for r in val], val)}
print(results_table(rules + [mine]))

# %% [markdown]
# ## 2. Zero-shot: the model as it came
#
# Load the same 4-bit model **as a causal language model** (`load_model(cfg, tokenizer,
# task="causal-lm")`: same weights, same kernels, its LM head kept), give it the record in the
# run's layout ending with the answer cue " Answer:", and compare its next-token logits for the
# four letters. Which token *is* "A" after "Answer:"? That depends on the tokenizer (" A", "▁A",
# "A"), so the kit asks the tokenizer: it encodes "Answer:" and "Answer: A" and takes the one
# token the letter adds.

# %%
tokenizer = load_tokenizer(cfg.model_name_or_path)
letters = letter_token_ids(tokenizer)
print("letter tokens:", dict(zip(OPTION_LETTERS, tokenizer.convert_ids_to_tokens(letters))))
print("their ids:   ", dict(zip(OPTION_LETTERS, letters)))

# %%
# NBVAL_IGNORE_OUTPUT
# (LM scores and accuracies vary across CPUs)
lm = load_model(cfg, tokenizer, task="causal-lm")
zero = lm_baseline(cfg, model=lm, tokenizer=tokenizer)

# %% [markdown]
# **k-shot.** Put k labelled training records in front, each ending with its answer letter
# (the same k records for every question, drawn with `cfg.seed`). Truncation must never cut the
# question being asked: `build_prompt` drops whole shots first (the farthest from the question),
# and only then cuts the end of the record's own passage. The tiny model reads at most 512
# tokens: how long is one record's prompt, and how many of 3 shots fit in front of it? Counted
# on every validation record (the tokenizer alone decides, so these counts are the same on every
# machine):

# %%
window = context_window(lm, tokenizer)
shots3 = choose_shots(train, 3, cfg.seed)
alone = [len(build_prompt(r, tokenizer, cfg.template, max_tokens=window).ids) for r in val]
kept = Counter(build_prompt(r, tokenizer, cfg.template, shots3, max_tokens=window).shots_used for r in val)
print(f"context window {window} tokens; one val record's prompt: {np.mean(alone):.1f} tokens on average, "
      f"{min(alone)} to {max(alone)}")
print("at 3 shots, prompts that keep 0 / 1 / 2 / 3 of them:", " / ".join(str(kept[k]) for k in range(4)),
      f"(of {len(val)})")
p = build_prompt(val[0], tokenizer, cfg.template, shots3, max_tokens=window)
print(f"context window {window} tokens; record 0 with 3 shots in front: {len(p.ids)} tokens, "
      f"{p.shots_used} shots kept, {p.shots_dropped} dropped, passage cut: {p.context_cut}")
print("…" + tokenizer.decode(p.ids[-40:]))

# %%
# NBVAL_IGNORE_OUTPUT
# (LM scores and accuracies vary across CPUs)
k_shot = [lm_baseline(cfg, shots=k, model=lm, tokenizer=tokenizer) for k in (1, 3)]
del lm

# %% [markdown]
# The check that does not depend on the CPU: is the zero-shot scorer above chance, with its whole
# interval? The tiny model was pre-trained on text ending in " Answer: X", so it should be.

# %%
print("zero-shot interval entirely above 25 %:", zero["accuracy_ci95"][0] > 0.25)

# %% [markdown]
# ## 3. The letter head
#
# The classifier reads the hidden state $h$ of the last token and computes `score(h)`, four
# numbers. The causal LM at the same position computes `lm_head(h)`, one number per vocabulary
# entry; the four letters' numbers are $W_{\text{lm}}[\text{letter}] \cdot h$. So a `score` head
# whose four rows **are** the LM head's rows of the four letter tokens computes exactly the
# zero-shot scores: `head_init="letters"` in the run config does this (the template must end
# with " Answer:", where the model names the letter). `"random"`, the reference's, stays the
# default.

# %%
letters_cfg = cfg.replace(head_init="letters", epochs=1, output_dir=f"runs/notebook-{PRESET}-letters")
shutil.rmtree(letters_cfg.output_dir, ignore_errors=True)  # this notebook owns it: re-running starts over
run = setup(letters_cfg, verbose=False)
head = run.model.base_model.model.score.original_module.weight  # peft keeps the initial head here
print("score head == LM head rows of A B C D:",
      bool((head.float().cpu() == letter_head_weights(run.model, letters_cfg, tokenizer)).all()))

# %% [markdown]
# Train it for one epoch, with everything else as in notebook 04's run (same seed, data, lr):
# `fit` evaluates before training (its baseline) and after the epoch.
#
# **Predict before you run.** The letter head starts where the zero-shot scorer is. After one
# epoch, will it be clearly ahead of the random head's epoch 1, or about where it is?

# %%
# NBVAL_IGNORE_OUTPUT
# (losses, accuracies and speed vary across CPUs; progress bars)
letters_history = fit(run, letters_cfg.output_dir)

# %%
letters_base = letters_history.evals[0]
print("letter head before training == zero-shot scorer:",
      letters_base["accuracy"] == zero["accuracy"] and letters_base["confusion_matrix"] == zero["confusion_matrix"])

# %% [markdown]
# ## 4. One table, one figure
#
# Notebook 04's run is the reference recipe (random head, 3 epochs); the letter-head run differs
# only in its head's start and runs one epoch, so compare it with the random head's epoch 1.
# The EASY and HARD columns are filled where the predictions are at hand (the history of a run
# keeps accuracies, not predictions): the rules, LM scoring, the best epoch (`predict_run`
# reloads it) and the letter head after its epoch (evaluated again here).

# %%
# NBVAL_IGNORE_OUTPUT
# (accuracies vary across CPUs)
history = saved_history(run_dir)
metrics = saved_metrics(run_dir)
best_preds = np.load(predict_run(run_dir, split="val", verbose=False))[: len(val)]
letters_preds = evaluate(run, run.val_ds, progress=False)["predictions"]


def row(method: str, e: dict, predictions=None) -> dict:
    """A results-table row of one evaluation, with its EASY / HARD parts when its predictions are
    given; a run written by an older kit, without stored intervals, gets its interval recomputed
    from the confusion matrix."""
    out = {"method": method, "accuracy": e["accuracy"], "accuracy_ci95": accuracy_interval(e), "n": len(val)}
    if predictions is not None:
        out["parts"] = part_accuracies(predictions, val)["parts"]
    return out


def with_parts(result: dict) -> dict:
    return {**result, "parts": part_accuracies(result["predictions"], val)["parts"]}


rows = trivial + rules + [with_parts(zero)] + [with_parts(k) for k in k_shot] + [
    row("random head, before training", history["evals"][0]),
    row("random head, epoch 1", history["evals"][1]),
    row(f"random head, best (epoch {metrics['best_epoch']})", metrics, best_preds),
    row("letter head, before training", letters_history.evals[0], zero["predictions"]),
    row("letter head, epoch 1", letters_history.evals[1], letters_preds),
]
print(results_table(rows))

# %%
# NBVAL_IGNORE_OUTPUT
# (a figure of accuracies that vary across CPUs)
plot_results(rows, title=f"{cfg.preset} preset, val accuracy with 95 % intervals")

# %% [markdown]
# **Where does the tiny model's accuracy come from?** The honest "before" of a fine-tuning
# result is the best thing the untrained model can do, not a random head. The next cell reads
# this run's rows and states, by the 95 % intervals: where the random head starts; how far the
# untrained model, read as a language model (zero-shot), already gets; how much the best
# fine-tuned epoch adds on top of that, overall and on EASY and HARD; and whether the letter
# head's epoch differs from the random head's.

# %%
# NBVAL_IGNORE_OUTPUT
# (computed from accuracies that vary across CPUs)
from IPython.display import Markdown, display


def relation(a: dict, b: dict) -> str:
    """'above', 'below' or 'not distinguishable from', by the two rows' 95 % intervals."""
    (lo_a, hi_a), (lo_b, hi_b) = a["accuracy_ci95"], b["accuracy_ci95"]
    return "above" if lo_a > hi_b else "below" if hi_a < lo_b else "not distinguishable from"


def fmt(r: dict) -> str:
    return format_accuracy(r["accuracy"], r["accuracy_ci95"])


by_name = {r["method"]: r for r in rows}
rand0, rand1 = by_name["random head, before training"], by_name["random head, epoch 1"]
best = by_name[f"random head, best (epoch {metrics['best_epoch']})"]
zero_row, letters1 = by_name["zero-shot"], by_name["letter head, epoch 1"]
chance = {"accuracy_ci95": (0.25, 0.25)}
share = (zero_row["accuracy"] - 0.25) / (best["accuracy"] - 0.25) if best["accuracy"] > 0.25 else float("nan")
parts_line = "; ".join(
    f"**{part}**: zero-shot {fmt(zero_row['parts'][part])}, best epoch {fmt(best['parts'][part])}: fine-tuning is "
    f"{relation(best['parts'][part], zero_row['parts'][part])} zero-shot" for part in ("EASY", "HARD"))
display(Markdown("\n".join([
    f"- **The random head before training**: {fmt(rand0)}: {relation(rand0, chance)} chance (0.250).",
    f"- **Zero-shot** (the untrained model's own LM head): {fmt(zero_row)}; **the best fine-tuned epoch** "
    f"({metrics['best_epoch']}): {fmt(best)}: fine-tuning is {relation(best, zero_row)} zero-shot. "
    f"Of the best epoch's gain over chance ({best['accuracy'] - 0.25:+.3f}), zero-shot already has {share:.0%}.",
    f"- {parts_line}.",
    f"- **After one epoch**: letter head {fmt(letters1)}, random head {fmt(rand1)}: the letter head is "
    f"{relation(letters1, rand1)} the random head.",
    "- **So on this run**: " + (
        "the untrained model's own LM head is as good as the best fine-tuned epoch by the intervals: the tiny "
        "model's accuracy comes from its pre-training, and fine-tuning adds nothing the intervals can see."
        if relation(best, zero_row) == "not distinguishable from" else
        f"fine-tuning adds accuracy the intervals can see, but zero-shot already has {share:.0%} of the gain "
        "over chance: most of the tiny model's accuracy comes from its pre-training."
        if share >= 0.5 else
        f"zero-shot has {share:.0%} of the gain over chance: most of the tiny model's accuracy comes from "
        "fine-tuning."),
])))

# %% [markdown]
# **The lesson.** Read the lines above before this paragraph: their last line says where this
# run's accuracy comes from. Where zero-shot holds most of the gain, the accuracy comes from
# pre-training, and that is no accident: the tiny model was pre-trained (`reclor_lab.tools.tiny`)
# on synthetic text in this very layout, with the same cue in the options and ending in
# " Answer: X", so before any fine-tuning it already answers from the cue. A random head throws
# that away, and the random-head run has to buy it back through its new head: part of its
# "gain" over its own start is re-learning what the LM head already knew, which is why its
# epoch 0 is no honest "before". The EASY and HARD line says what fine-tuning added beyond the
# zero-shot scorer: a gain on EASY is the cue sharpened; where HARD does not move, fine-tuning
# taught the model nothing about the passages. For Llama-2-7B the same table (`--preset
# llama2-7b`, with a template ending in " Answer:") says how much of the reference's ~60 % the
# model had before training; nothing here measures it.
#
# **What it would take to beat the baselines published with ReClor.** The strongest on test was
# XLNet-large: 56.0 % on test, 75.7 % on its EASY part and 40.5 % on its HARD part (62.0 % on
# val); RoBERTa-large scored 55.6 / 75.5 / 40.0 on test and 62.6 % on val, the best val figure.
# On the 500 val examples the Wilson interval of 60 % is about 55.6–64.2 %, so the reference's
# "~60 %" is not distinguishable from either val figure; beating them convincingly means roughly
# 67 % or more on val. And val is not test: both lost 6–7 points from val to test. Where those
# points went cannot be read off, because ReClor's val set has no EASY / HARD split; what the
# test split shows is that both models are far better on EASY than on HARD, where surface cues
# in the options do not help. The leaderboard's HARD score is the number that says whether a
# model reasons.

# %% [markdown]
# ## 5. Where the fine-tuned model fails
#
# Reload notebook 04's best adapter and get the probability of each option for every validation
# example: `val_analysis` turns them into everything below (`reclor-lab train` writes the same
# into `metrics.json`).

# %%
# NBVAL_IGNORE_OUTPUT
# (probabilities vary across CPUs)
_, tokenizer, model = load_run(run_dir)
val_ds, _ = tokenize_records(val, tokenizer, cfg.max_len, cfg.template)
probs = predict_proba(model, val_ds, tokenizer, cfg.eval_batch_size, pick_device(), resolve_compute_dtype(cfg))
report = val_analysis(val, probs)
preds = probs.argmax(axis=1)
print(f"reloaded best epoch: accuracy {format_accuracy(float((preds == [r['label'] for r in val]).mean()), accuracy_interval(metrics))}"
      f" (saved: {metrics['accuracy']:.3f})")

# %% [markdown]
# **What did the tiny model learn?** Put it beside the two rules, part by part. On EASY, the
# rule that only rejects sweeping options is always right: a model that has learned the cue
# comes close to it. On HARD, the cue is absent and word overlap is the bar that a model
# reading the passage must clear: ten lines of counting words, no parameters. The comparison is
# computed, with intervals, so it holds for whatever this run learned:

# %%
# NBVAL_IGNORE_OUTPUT
# (the model's accuracies vary across CPUs)
model_parts = part_accuracies(preds, val)["parts"]
overlap_parts, rule_parts = rules[0]["parts"], rules[1]["parts"]


def compare(a: dict, b: dict) -> str:
    """'above', 'below' or 'not distinguishable from', by the two 95 % intervals."""
    if a["accuracy_ci95"][0] > b["accuracy_ci95"][1]:
        return "above"
    if a["accuracy_ci95"][1] < b["accuracy_ci95"][0]:
        return "below"
    return "not distinguishable from"


for part, bar, name in (("EASY", rule_parts, "the cue rule"), ("HARD", overlap_parts, "word overlap")):
    m = model_parts[part]
    print(f"{part} ({m['n']} records): fine-tuned model {format_accuracy(m['accuracy'], m['accuracy_ci95'])}, "
          f"{name} {format_accuracy(bar[part]['accuracy'], bar[part]['accuracy_ci95'])}: "
          f"the model is {compare(m, bar[part])} {name}")
overall = part_accuracies(preds, val)
print(f"fine-tuned model overall {format_accuracy(overall['accuracy'], overall['accuracy_ci95'])}, "
      f"the rule (cue, then overlap) {format_accuracy(rules[1]['accuracy'], rules[1]['accuracy_ci95'])}")

# %% [markdown]
# Read the two lines as a verdict on the fine-tuning, not on QLoRA: a model that matches the cue
# rule on EASY has learned the option artifact the data set plants; a HARD accuracy that does not
# clear word overlap means it has not learned to use the passage beyond what counting shared
# words does. Whatever the tiny model's figures, the rule without a model is the number to beat
# on this data, and on ReClor the HARD score is. (`reclor-lab predict` prints the same EASY / HARD
# parts for a test split; unlabeled, as letter counts.)

# %% [markdown]
# **Accuracy by reasoning type.** ReClor's 17 question types are only in the official test
# file's `question_type` field; train and val have none, so the kit infers them from the
# question stem with rules (`reclor_lab.results.qtypes`: "most seriously weakens" → Weaken, …). On the
# bundled test file, which carries the field, the rules agree with it here:

# %%
test = run_records(cfg, "test")
print(agreement(test).table())

# %% [markdown]
# Each bar carries its count, and the fewer records a type has, the wider its interval: the
# cell below prints how wide for the smallest type of this validation split. Most differences
# between types here are noise. On the official val set (500 examples, 17 types) the same holds:
# read the intervals before the bars.

# %%
from reclor_lab.metrics import wilson_interval
from reclor_lab.results.qtypes import record_type

type_counts = Counter(record_type(r) for r in val)
n_small = min(type_counts.values())
lo, hi = wilson_interval(n_small // 2, n_small)
print(f"val: {len(type_counts)} question types, {n_small} to {max(type_counts.values())} records each; on the "
      f"smallest, an accuracy near 50 % has a 95 % interval ±{(hi - lo) / 2 * 100:.0f} points wide")

# %%
# NBVAL_IGNORE_OUTPUT
# (a figure of accuracies that vary across CPUs)
plot_accuracy_by_type(report["accuracy_by_type"], overall=float((preds == [r["label"] for r in val]).mean()),
                      title=f"{cfg.preset} run, val accuracy by question type ({report['types_source']})")

# %% [markdown]
# **Confusion matrix and position bias.** Does the model prefer a position? Compare how often it
# predicts each letter with how often each letter is right.

# %%
# NBVAL_IGNORE_OUTPUT
# (a figure of the run's results)
plot_confusion(metrics["confusion_matrix"], title=f"Confusion matrix ({cfg.preset} run, val)")

# %%
# NBVAL_IGNORE_OUTPUT
# (a figure of the run's results)
plot_position_bias(report["position_bias"])

# %% [markdown]
# **Calibration.** When the model says 80 %, is it right 80 % of the time? The reliability
# diagram bins the predictions by confidence (the top probability) and plots each bin's
# accuracy; the expected calibration error (ECE) is the average gap, weighted by the bins'
# sizes. Bars below the diagonal: overconfident.

# %%
# NBVAL_IGNORE_OUTPUT
# (a figure of probabilities that vary across CPUs)
plot_reliability(report["calibration"]["bins"], report["calibration"]["ece"])

# %% [markdown]
# **The 10 most confident wrong answers**, each exactly as the model read it (the run's
# template), with the probabilities it gave. Look for what they share: a question type, a
# position, a surface cue in the options.

# %%
# NBVAL_IGNORE_OUTPUT
# (which answers are wrong depends on the trained weights)
for i in most_confident_wrong(probs, [r["label"] for r in val]):
    r = val[i]
    print(f"--- {r['id_string']}: predicted {OPTION_LETTERS[preds[i]]} ({probs[i].max():.0%}), "
          f"correct {OPTION_LETTERS[r['label']]}; "
          + " ".join(f"{c} {q:.2f}" for c, q in zip(OPTION_LETTERS, probs[i])))
    print(format_example(r, cfg.template))

# %% [markdown]
# ## 6. Test predictions: distributions only
#
# The test split has no labels, so no accuracy. What can be checked: the predicted letters per
# question type, and per part: on the official test file the EASY part is its first 440
# records (answerable from the options alone by a biased model) and the HARD part the last 560,
# which the leaderboard scores separately; on the kit's own test file the parts are read from
# the options, as for val. `reclor-lab predict RUN --split test` prints and saves this summary.

# %%
# NBVAL_IGNORE_OUTPUT
# (the predicted letters depend on the trained weights; progress bars)
test_preds = np.load(predict_run(run_dir, split="test", verbose=False))
print(format_test_summary(summarize_test_predictions(test, test_preds)))
