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
# # 05 · Results
#
# What did training do? This notebook reads a finished run from disk and looks at it:
#
# 1. the loss and accuracy curves, beside chance and the best constant answer,
# 2. the metrics with their 95 % intervals, on the whole validation split and on its EASY and
#    HARD parts, and the confusion matrix, next to the reference's result,
# 3. accuracy computed right (over examples, not batches), and the evaluation pass written by
#    you, checked against the kit's,
# 4. the adapter reloaded from disk, reproducing the validation metrics; what merging it into
#    the 4-bit model would lose; whether the reference's result was what it seemed,
# 5. predictions on the unlabeled test split.
#
# **Files.** It reads the run directory **`runs/notebook-<preset>` written by notebook 04**
# (nothing else is shared between notebooks). Run notebook 04 first; if the directory is
# missing, the first cell below trains it (the same run, about a minute on a laptop CPU for the
# tiny preset). Two exercises: `accuracy_over_examples` and `evaluation_pass`.

# %%
PRESET = "tiny"  # or "llama2-7b": the reference solution (GPU, weights and data on disk)

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the Hugging Face hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from reclor_lab.config import get_preset
from reclor_lab.course.notebook import start_notebook

start_notebook("torch", "transformers", "peft", "evaluate", "matplotlib")  # cd to the repo root, print versions

cfg = get_preset(PRESET, output_dir=f"runs/notebook-{PRESET}")  # notebook 04's run
print()
print("run directory:", cfg.output_dir)

# %%
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
from datasets.utils.logging import disable_progress_bar
from transformers.utils import logging as hf_logging

import torch
from torch.utils.data import DataLoader

from reclor_lab.course import checks
from reclor_lab.results.baselines import part_accuracies, results_table, trivial_baselines
from reclor_lab.config import OPTION_LETTERS
from reclor_lab.data import class_weights, make_collator, model_inputs, run_records, tokenize_records
from reclor_lab.metrics import format_accuracy, wilson_interval
from reclor_lab.plots import plot_confusion, plot_eval, plot_loss
from reclor_lab.runs.job import (
    ensure_trained, evaluate_run, load_run, predict_run, saved_history, saved_metrics, summary_table,
)

disable_progress_bar()  # datasets' progress bars (token-cache writes)
hf_logging.disable_progress_bar()  # and the model loader's

# %% [markdown]
# Is notebook 04's run there? If not, `ensure_trained` trains it now with `train_run`: what
# notebook 04 does (same config, same seed), minus the explanations.

# %%
# NBVAL_IGNORE_OUTPUT
# (the message depends on whether notebook 04 ran before)
run_dir = Path(cfg.output_dir)
print(ensure_trained(cfg))  # trains it now if notebook 04 has not run (a minute on a CPU)

# %% [markdown]
# ## 1. The curves
#
# `history.json` holds one row per optimizer step (train loss, learning rate) and one per
# evaluation (epoch 0 is the baseline before training).

# %%
history = saved_history(run_dir)
print(f"{len(history['steps'])} optimizer steps, {len(history['evals'])} evaluations (epochs 0–{history['evals'][-1]['epoch']})")

# %% [markdown]
# **Loss.** Train and validation loss on one plot. The training loss starts near
# $\ln 4 \approx 1.39$ (the dashed line: a model that gives the four options equal probability)
# and falls; the light line is the loss of each step (noisy: 8 examples), the dark one its moving
# average, the red points the validation loss after each epoch (epoch 0 at step 0: before
# training).
#
# **If the validation loss turns up** while the training loss keeps falling, the model has
# started to fit its training examples at the expense of new ones (whether this run's does is
# printed below the plot). Accuracy can hold or
# even rise for a while: it counts only which option wins, while the loss also charges for
# confidence, and a model that grows more confident on the answers it gets wrong pays for it in
# loss first. It is the usual sign to stop (or to keep an earlier checkpoint: the kit keeps the
# epoch with the best validation accuracy as `best`).

# %%
# NBVAL_IGNORE_OUTPUT
# (a figure of training curves)
plot_loss(history)

# %%
# NBVAL_IGNORE_OUTPUT
# (losses vary across CPUs)
val_losses = {e["epoch"]: e["eval_loss"] for e in history["evals"]}
rises = [e for e in val_losses if e > 1 and val_losses[e] > val_losses[e - 1]]
print("val loss per epoch:", ", ".join(f"{e}: {v:.4f}" for e, v in val_losses.items()))
print("this run's val loss:", f"rose after epoch {rises[0] - 1}" if rises else "fell after every epoch")

# %% [markdown]
# **Accuracy**, each epoch with its 95 % interval, beside two lines a result must clear: chance
# (25 %) and the **best constant answer**: always the position most often right in the
# *training* split, scored on validation. A model that learned only "answer B" would score
# that much. The constant is chosen on the training labels, as any model is, because choosing
# it on the validation labels would peek at the answers it is scored on (notebook 06 uses the
# same rule, `trivial_baselines`):

# %%
train_labels = [r["label"] for r in run_records(cfg, "train")]
val_labels_all = [r["label"] for r in run_records(cfg, "val")]
majority = Counter(train_labels).most_common(1)[0][0]
majority_acc = next(r for r in trivial_baselines(train_labels, val_labels_all) if r["method"] == "majority")["accuracy"]
print(f"train answers A B C D: {' '.join(str(train_labels.count(c)) for c in range(4))}; "
      f"val: {' '.join(str(val_labels_all.count(c)) for c in range(4))}")
print(f"always {OPTION_LETTERS[majority]} (the training majority) on val: {majority_acc:.1%}; chance 25.0%")

# %%
# NBVAL_IGNORE_OUTPUT
# (a figure of training curves)
plot_eval(history)

# %% [markdown]
# ## 2. Metrics and the confusion matrix
#
# `metrics.json` holds the best epoch's validation metrics: accuracy, macro precision / recall /
# F1 over the four options, and the confusion matrix (rows: the true option, columns: the
# predicted one). Macro F1 catches what accuracy hides: a model that always answers "B" scores
# ~25 % accuracy but a low macro F1.
#
# **The reference result** (Llama-2-7B, the `llama2-7b` preset on the official ReClor data, as
# reported by the reference solution, not computed here): validation accuracy rises from about
# **25 %** before training to about **60 %** after 3 epochs, the last it ran.
#
# The numbers below are **this run's**, on the preset chosen above (by default the tiny model on
# the kit's own data: a far smaller model and an easier data set, so they are not comparable to
# the reference's). Every accuracy carries its Wilson 95 % interval: on 256 examples it is about
# ±6 points wide, so two epochs whose intervals overlap are not shown to differ.
#
# **EASY and HARD.** In most records of the kit's data the options give the answer away (the
# right one opens modestly, "Probably, …", the wrong ones sweepingly, "In every case, …"): the
# **EASY** part. In the rest only the passage tells the options apart: the **HARD** part
# (`reclor_lab.results.analysis.easy_hard`, read from the options' text; ReClor's test set has the same
# split, by which questions option-only models get right). An accuracy on the whole split mixes
# the two, so every table from here on shows both.
#
# **Predict before you run.** Will this run's HARD accuracy be closer to its EASY accuracy or
# to chance?

# %%
# NBVAL_IGNORE_OUTPUT
# (accuracies vary across CPUs)
metrics = saved_metrics(run_dir)
print(summary_table(history))
print()
print(f"{cfg.preset} run, best epoch {metrics['best_epoch']}: val accuracy "
      f"{format_accuracy(metrics['accuracy'], metrics.get('accuracy_ci95'))} "
      f"(before training {metrics['baseline_accuracy']:.3f}), macro F1 {metrics['f1_macro']:.3f}")
print(f"always {OPTION_LETTERS[majority]}: {majority_acc:.3f}; chance: 0.250")
print("reference (Llama-2-7B, reported): ~25 % → ~60 %")

# %% [markdown]
# The best epoch on each part, from its predictions on the validation split (`predict_run`
# reloads the best checkpoint), beside the always-the-majority answer on the same records:

# %%
# NBVAL_IGNORE_OUTPUT
# (accuracies vary across CPUs)
val = run_records(cfg, "val")
val_preds = np.load(predict_run(run_dir, split="val", verbose=False))[: len(val)].tolist()
rows = [{"method": f"{cfg.preset} run, best epoch", **part_accuracies(val_preds, val)},
        {"method": f"always {OPTION_LETTERS[majority]}", **part_accuracies([majority] * len(val), val)}]
print(results_table(rows))

# %%
# NBVAL_IGNORE_OUTPUT
# (a figure of the run's results)
plot_confusion(metrics["confusion_matrix"], title=f"Confusion matrix ({cfg.preset} run, val)")

# %% [markdown]
# ## 3. Accuracy over examples, not batches
#
# Evaluation runs in batches. The reference notebook summed the correct answers per batch and
# divided by the **number of batches**; averaging the per-batch accuracies is wrong too as soon
# as one batch is shorter (the last one usually is). Accuracy is correct answers over
# **examples**.
#
# **Exercise 11.** Write `accuracy_over_examples(batches)`: a list of `(predictions, labels)`
# pairs, one per batch (lists of ints) → the fraction of examples predicted correctly.

# %%
def accuracy_over_examples(batches: list[tuple[list[int], list[int]]]) -> float:
    """Exercise 11: correct predictions / number of examples, over all the batches."""
    # BEGIN SOLUTION: count the correct predictions and the examples over all batches, divide at the end
    correct = sum(int(p == y) for preds, labels in batches for p, y in zip(preds, labels))
    total = sum(len(labels) for _, labels in batches)
    return correct / total
    # END SOLUTION


# %%
accuracy_over_examples = checks.check_accuracy(accuracy_over_examples)

# %% [markdown]
# Where it matters: two batches, three of three right in the first, none of one in the last.
#
# **Predict before you run.** What do the three lines print?

# %%
checks.note(accuracy_over_examples)
toy = [([0, 1, 2], [0, 1, 2]), ([3], [0])]
print("over examples:            ", accuracy_over_examples(toy))
print("mean of batch accuracies: ", np.mean([np.mean(np.equal(p, y)) for p, y in toy]))
print("correct / number of batches:", sum(int(np.equal(p, y).sum()) for p, y in toy) / len(toy))

# %% [markdown]
# ### The evaluation pass
#
# Accuracy is one half of an evaluation; the other is how the logits are produced. An
# evaluation pass:
#
# * switches the model to **eval mode** (`model.eval()`): LoRA's dropout is off, so the same
#   input always gives the same answer; and back to the mode it was in at the end (a training
#   loop that evaluates after each epoch continues with dropout on);
# * runs **without gradients** (`torch.no_grad()`): no graph is kept for a backward pass that
#   never comes, which on a GPU is most of the memory;
# * keeps every batch's logits and labels, and only then computes the **loss and the accuracy
#   over all the examples at once**: the weighted loss $\sum_i w_{y_i} \mathrm{CE}_i / \sum_i
#   w_{y_i}$ over the whole split, as in training; a mean of per-batch losses weighs a short last
#   batch like a full one.
#
# **Exercise 12.** Write `evaluation_pass(model, batches, weights)`: `batches` is a list of dicts
# with `input_ids`, `attention_mask` and `labels` (of different sizes), `weights` the class
# weights `(4,)` → `(eval_loss, accuracy)`, two Python floats. The check runs it on the
# reloaded model (a hook sees the mode and the gradient setting of every forward pass) and
# compares both numbers with the kit's, on uneven batches.

# %%
_, tokenizer, model = load_run(run_dir)  # the best checkpoint, as section 4 reloads it

# %%
def evaluation_pass(model, batches: list[dict], weights: torch.Tensor) -> tuple[float, float]:
    """Exercise 12: (weighted eval loss, accuracy) over every example of the batches; eval mode, no gradients."""
    # BEGIN SOLUTION: eval(), then under no_grad keep each batch's logits and labels; loss and accuracy once, at the end
    was_training = model.training
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for b in batches:
            logits.append(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float().cpu())
            labels.append(b["labels"].cpu())
    model.train(was_training)
    logits, labels = torch.cat(logits), torch.cat(labels)
    w = weights.float()[labels]
    nll = -torch.log_softmax(logits, dim=-1).gather(1, labels.view(-1, 1)).squeeze(1)
    return ((w * nll).sum() / w.sum()).item(), (logits.argmax(-1) == labels).sum().item() / len(labels)
    # END SOLUTION


# %%
evaluation_pass = checks.check_evaluation_pass(evaluation_pass, model, tokenizer)

# %% [markdown]
# Your pass on the whole validation split, cut into the run's evaluation batches, with the run's
# class weights (from its training labels), against what the kit's `train.evaluate` saved for
# the best epoch during training:

# %%
val_ds, _ = tokenize_records(val, tokenizer, cfg.max_len, cfg.template)
device = next(model.parameters()).device
val_batches = [{k: v.to(device) for k, v in b.items()}
               for b in DataLoader(model_inputs(val_ds), batch_size=cfg.eval_batch_size,
                                   collate_fn=make_collator(tokenizer))]
loss, acc = evaluation_pass(model, val_batches, class_weights(train_labels))
print(f"{len(val_batches)} batches, the last of {len(val_batches[-1]['labels'])}")
print("your accuracy == saved accuracy:", acc == metrics["accuracy"])
print("your eval loss ≈ saved eval loss:", abs(loss - metrics["eval_loss"]) < 1e-4)

# %% [markdown]
# ## 4. Reloading the adapter
#
# The run directory holds the adapter and head only. `load_run` loads the base model exactly as
# in training (4-bit, prepared for k-bit training), then `PeftModel.from_pretrained` reads the
# best checkpoint into it. `evaluate_run` does that and evaluates on the validation split: the
# numbers must be the ones saved during training.

# %%
# NBVAL_IGNORE_OUTPUT
# (accuracies vary across CPUs; progress bars)
reloaded = evaluate_run(run_dir)

# %%
print("reloaded accuracy == saved accuracy:", reloaded["accuracy"] == metrics["accuracy"])
print("reloaded eval loss ≈ saved eval loss:", abs(reloaded["eval_loss"] - metrics["eval_loss"]) < 1e-4)
print("same confusion matrix:", reloaded["confusion_matrix"] == metrics["confusion_matrix"])

# %% [markdown]
# The same accuracy once more, through your `accuracy_over_examples`: the reloaded model's
# validation predictions (`predict_run` on the `val` split, section 2), cut into evaluation
# batches.

# %%
val_labels = [r["label"] for r in val]
bs = cfg.eval_batch_size
batches = [(val_preds[i:i + bs], val_labels[i:i + bs]) for i in range(0, len(val), bs)]
print(f"{len(batches)} batches of up to {bs}; accuracy_over_examples == saved accuracy:",
      abs(accuracy_over_examples(batches) - metrics["accuracy"]) < 1e-12)

# %% [markdown]
# **What would merging cost this run?** Notebook 03 showed that `merge_and_unload` on a 4-bit
# base quantizes $W_0 + \Delta W$ back to NF4. For every adapted layer of the reloaded run: the
# size of its trained $\Delta W$ against $W_0$, and the share of $\Delta W$ the re-quantized
# layer gets wrong (what peft's merge computes, done here on copies):

# %%
# NBVAL_IGNORE_OUTPUT
# (the trained adapters, and so these ratios, vary across CPUs)
import bitsandbytes.functional as bnbf

from reclor_lab.model import nf4_roundtrip

sizes, lost = [], []
for name, module in model.named_modules():
    if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
        weight = module.get_base_layer().weight
        W0 = bnbf.dequantize_4bit(weight.data, weight.quant_state).float().cpu()
        delta = module.get_delta_weight("default").float().cpu()
        merged = nf4_roundtrip(W0 + delta, double_quant=weight.quant_state.nested).dequantized.float()
        sizes.append((delta.norm() / W0.norm()).item())
        lost.append(((merged - W0 - delta).norm() / delta.norm()).item())
print(f"{len(lost)} adapted layers: ‖ΔW‖ / ‖W0‖ median {np.median(sizes):.3f}; "
      f"‖merged − W0 − ΔW‖ / ‖ΔW‖ median {np.median(lost):.2f} (from {min(lost):.2f} to {max(lost):.2f})")

# %% [markdown]
# A trained $\Delta W$ is a fraction of $W_0$ (the first figure), and NF4's grid is scaled to
# $W_0$'s blocks, so a sizeable share of the update is rounded away (the second figure). A model merged this way is
# not the model that was evaluated: keep the adapter separate, or merge into a 16-bit copy of
# the base model and evaluate the result again.
#
# **Was the reference's ~60 % real?** Its accuracy divided the correct answers by the number of
# batches. With $b$ examples per batch that prints about $b$ times the accuracy. The
# reference's hand-written loop, the one that produced its ~60 %, ran at **batch 1**: as many
# batches as examples, so there the bug changes nothing, and its printed accuracy is the real
# one. The same real predictions as above, cut into batches of 1, 2 and 8, both ways:
#
# **Predict before you run.** At batch 1, how far apart will the two columns be?

# %%
# NBVAL_IGNORE_OUTPUT
# (the predictions depend on the trained weights)
correct = sum(int(p == y) for p, y in zip(val_preds, val_labels))
for b in (1, 2, bs):
    n_batches = math.ceil(len(val_labels) / b)
    print(f"batch {b}: over examples {correct / len(val_labels):.3f}, "
          f"correct / number of batches {correct / n_batches:.3f}")

# %% [markdown]
# So at batch 1 the reference's "~60 %" survives its own bug. Two bugs hid behind batch 1, though:
# this one, which any reuse of the code at batch 2 (the batch size of its `Trainer` attempt)
# would expose by printing double (a real 30 % as "60 %"), and the class weights, which batch 1
# cancels (notebook 04): the ~60 % is the result of the *unweighted* loss, whatever the code
# says. Reusing the loop at a larger batch changes both at once, so its number is not a
# baseline for such a run until it is measured again, over examples. And 60 % on 500 validation
# examples has a Wilson interval of about 55.6–64.2 %:

# %%
lo, hi = wilson_interval(300, 500)
print(f"60 % of 500: 95 % interval [{lo:.3f}, {hi:.3f}]")

# %% [markdown]
# ## 5. Predictions on the test split
#
# The test split has no labels, so it cannot be scored here: the official ReClor leaderboard
# takes a `.npy` array with one answer index per test record, in file order. `predict_run` writes
# it, plus a readable JSON (`id_string` → letter), into the run directory.

# %%
# NBVAL_IGNORE_OUTPUT
# (the counts per option depend on the trained weights; progress bars)
npy = predict_run(run_dir, split="test")

# %%
preds = np.load(npy)
test = run_records(cfg, "test")
print(f"{npy.name}: {preds.shape[0]} predictions for {len(test)} test records, dtype {preds.dtype}, "
      f"all in 0-{len(OPTION_LETTERS) - 1}: {bool(((preds >= 0) & (preds < len(OPTION_LETTERS))).all())}")
readable = json.loads(npy.with_suffix(".json").read_text())
print(f"{npy.with_suffix('.json').name}: {len(readable)} entries (id_string → letter), one per test record:",
      list(readable) == [r["id_string"] for r in test])

# %%
# NBVAL_IGNORE_OUTPUT
# (the predicted letter depends on the trained weights)
first = test[0]["id_string"]
print(f"first entry: {first!r}: {readable[first]!r}")

# %% [markdown]
# ## Where to go from here
#
# * Switch `PRESET` to `"llama2-7b"` in notebooks 04 and 05 on a GPU machine to reproduce the
#   reference (~25 % → ~60 %).
# * Try the input without its cue: the tiny preset's template ends in " Answer:" (the tiny model
#   was pre-trained on text ending that way); `template=REFERENCE_TEMPLATE` (from
#   `reclor_lab.config`) drops it and makes the head read the last word of option D instead.
#   Or try another rank (`lora_r`), or fewer target layers, and compare the curves.
