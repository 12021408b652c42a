# ---
# jupyter:
#   jupytext:
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
# 1. what guessing scores (chance, the majority position, the position prior),
# 2. **zero-shot and k-shot LM scoring**: the same 4-bit model, read as a language model,
# 3. **the letter head**: a classifier head that starts as the zero-shot scorer,
# 4. everything in one table and one figure, each accuracy with its 95 % interval,
# 5. error analysis: accuracy by question type, confusion matrix, position bias, calibration,
#    the most confident wrong answers,
# 6. what the unlabeled test predictions can tell (distributions only).
#
# **Files.** It reads notebook 04's run **`runs/notebook-<preset>`** (if it is missing, the next
# cells train it, about a minute for the tiny preset) and writes a short run of its own,
# `runs/notebook-<preset>-letters` (emptied each time). No exercises.
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
from reclor_lab.notebook import start_notebook

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

from reclor_lab.analysis import (
    format_test_summary, most_confident_wrong, predict_proba, summarize_test_predictions, val_analysis,
)
from reclor_lab.baselines import (
    build_prompt, choose_shots, context_window, letter_token_ids, letter_head_weights, lm_baseline, results_table,
    trivial_baselines,
)
from reclor_lab.config import OPTION_LETTERS
from reclor_lab.data import format_example, run_records, tokenize_records
from reclor_lab.metrics import accuracy_interval, format_accuracy
from reclor_lab.modeling import load_model, load_tokenizer, pick_device, resolve_compute_dtype
from reclor_lab.plots import (
    plot_accuracy_by_type, plot_confusion, plot_position_bias, plot_reliability, plot_results,
)
from reclor_lab.qtypes import agreement
from reclor_lab.runs import ensure_trained, load_run, predict_run, saved_history, saved_metrics
from reclor_lab.train import fit, setup

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
# tokens and a record is ~170, so at 3 shots most prompts keep only one or two of them; the
# printout says how many kept all.

# %%
window = context_window(lm, tokenizer)
p = build_prompt(val[0], tokenizer, cfg.template, choose_shots(train, 3, cfg.seed), max_tokens=window)
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

# %%
# NBVAL_IGNORE_OUTPUT
# (accuracies vary across CPUs)
history = saved_history(run_dir)
metrics = saved_metrics(run_dir)


def row(method: str, e: dict) -> dict:
    """A results-table row of one evaluation; a run written by an older kit, without stored
    intervals, gets its interval recomputed from the confusion matrix."""
    return {"method": method, "accuracy": e["accuracy"], "accuracy_ci95": accuracy_interval(e), "n": len(val)}


rows = trivial + [zero] + k_shot + [
    row("random head, before training", history["evals"][0]),
    row("random head, epoch 1", history["evals"][1]),
    row(f"random head, best (epoch {metrics['best_epoch']})", metrics),
    row("letter head, before training", letters_history.evals[0]),
    row("letter head, epoch 1", letters_history.evals[1]),
]
print(results_table(rows))

# %%
# NBVAL_IGNORE_OUTPUT
# (a figure of accuracies that vary across CPUs)
plot_results(rows, title=f"{cfg.preset} preset, val accuracy with 95 % intervals")

# %% [markdown]
# **What this means for the reference's ~60 %.** The honest "before" of a fine-tuning result is
# the best thing the untrained model can do, not a random head. Here the random head starts
# *below* chance (it happens to favour wrong options), while the same model read as a language
# model is well above chance before any training: part of what the random-head run "gains" in
# epoch 1 is only re-learning what the LM head already knew. Measured on the tiny preset
# (`python bench/head_init.py`, the README's results table), the letter head starts at the
# zero-shot accuracy and after one epoch is about where the random head is (the intervals
# overlap): on this data, fine-tuning, not the head's start, does the work. For Llama-2-7B the
# same table (`--preset llama2-7b`, with a template ending in " Answer:") says how much of the
# reference's ~60 % the model had before training; nothing here measures it.
#
# **What it would take to beat RoBERTa-large**, the strongest baseline published with ReClor:
# 62.6 % on val, 55.6 % on test (75.5 % on the EASY part, 40.0 % on the HARD part). On the 500
# val examples the Wilson interval of 60 % is about 55.6–64.2 %, so the reference's "~60 %" is
# not distinguishable from 62.6 %; beating it convincingly means roughly 67 % or more on val.
# And val is not test: RoBERTa lost 7 points from val to test, almost all on HARD questions,
# the ones that cannot be answered from surface cues in the options. The leaderboard's HARD
# score is the number that says whether a model reasons.

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
# **Accuracy by reasoning type.** ReClor's 17 question types are only in the official test
# file's `question_type` field; train and val have none, so the kit infers them from the
# question stem with rules (`reclor_lab.qtypes`: "most seriously weakens" → Weaken, …). On the
# bundled test file, which carries the field, the rules agree with it here:

# %%
test = run_records(cfg, "test")
print(agreement(test).table())

# %% [markdown]
# Each bar carries its count: a type with 19 examples has an interval about ±20 points wide, so
# most differences between types here are noise. On the official val set (500 examples, 17
# types) the same holds: read the intervals before the bars.

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
# question type, and on the official test file the EASY part (its first 440 records, answerable
# from the options alone by a biased model) against the HARD part (the last 560), which the
# leaderboard scores separately. `reclor-lab predict RUN --split test` prints and saves this
# summary; the bundled test file has 256 records, so EASY / HARD are not defined for it.

# %%
# NBVAL_IGNORE_OUTPUT
# (the predicted letters depend on the trained weights; progress bars)
test_preds = np.load(predict_run(run_dir, split="test", verbose=False))
print(format_test_summary(summarize_test_predictions(test, test_preds)))
