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
# # 04 · The training loop
#
# The 4-bit model with LoRA adapters (notebooks 02 and 03) meets the batches of notebook 01.
# This notebook:
#
# 1. writes the weighted loss,
# 2. writes one training step, the five lines every loop is made of, and runs it on a demo copy,
# 3. trains the run for real with the package's loop: evaluation after every epoch, a checkpoint
#    after every epoch,
# 4. looks at what a run directory holds,
# 5. shows the Hugging Face `Trainer` doing the same.
#
# **Files.** This notebook needs no other notebook: it reads the model and the data from disk.
# It **owns the run directory `runs/notebook-<preset>`** (`runs/notebook-tiny` by default): it
# deletes it and trains it again each time it runs, so re-running always works. Notebook 05
# reads that directory. Two exercises: `weighted_ce` and `one_train_step`.

# %%
PRESET = "tiny"  # or "llama2-7b": the reference solution (GPU, weights and data on disk)

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the Hugging Face hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from reclor_lab.config import get_preset
from reclor_lab.notebook import start_notebook

start_notebook("torch", "transformers", "peft", "bitsandbytes", "accelerate")  # cd to the repo root, print versions

cfg = get_preset(PRESET, output_dir=f"runs/notebook-{PRESET}")
print()
print(cfg.describe())

# %%
import json
import math
import shutil
from pathlib import Path

import torch
from datasets.utils.logging import disable_progress_bar
from torch.utils.data import DataLoader

from reclor_lab import checks
from reclor_lab.data import make_collator, model_inputs
from reclor_lab.rundir import RunDir
from reclor_lab.runs import finish_run, summary_table
from reclor_lab.train import fit, get_lr, setup
from reclor_lab.trainer import fit_with_trainer

disable_progress_bar()  # datasets' progress bars: tokenizing is not what this notebook shows

# %% [markdown]
# ## The loop in one screen
#
# `reclor_lab.train.fit` is this, plus timing and logging:
#
# ```python
# evaluate(model, val)                          # epoch 0: the baseline, before training
# for epoch in 1..epochs:
#     for batch in batches(train, epoch):       # shuffled, grouped by length, same order every run
#         loss = weighted_ce(model(batch).logits, batch.labels, class_weights)
#         loss.backward()
#         clip_grad_norm_(trainable, max_grad_norm); optimizer.step(); optimizer.zero_grad()
#     evaluate(model, val)                      # eval loss, accuracy, macro F1
#     run_dir.save_checkpoint(...)              # adapter + head + optimizer + RNG: resumable
# ```
#
# ## 1. The weighted loss
#
# Cross-entropy, each example weighted by the class weight of its label (notebook 01). The mean
# divides by the **sum of the weights** of the batch's labels (as `F.cross_entropy(weight=w)`
# does), not by the batch size, so the loss scale does not depend on which labels a batch holds.
#
# **Exercise 9.** Write `weighted_ce(logits, labels, weights)`: `logits` `(batch, 4)`, `labels`
# `(batch,)`, `weights` `(4,)` → the scalar loss $\sum_i w_{y_i}\,(-\log p_{i,y_i}) / \sum_i w_{y_i}$.
# Compute it from `log_softmax` (not with `F.cross_entropy`).

# %%
def weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Exercise 9: weighted mean cross-entropy, like F.cross_entropy(logits, labels, weight=weights)."""
    # TODO: log_softmax; -log p of each row's label; weight by weights[label]; / sum of those weights
    raise NotImplementedError("Exercise 9: write `weighted_ce`")


# %%
weighted_ce = checks.check_weighted_ce(weighted_ce)

# %% [markdown]
# A model that knows nothing gives every option the same logit: its loss is $\ln 4 \approx
# 1.386$ whatever the weights. That is the number the training loss starts near.

# %%
labels = torch.tensor([0, 1, 1, 3])
w = torch.tensor([2.0, 0.5, 1.0, 1.0])
print(f"uniform logits: {weighted_ce(torch.zeros(4, 4), labels, w).item():.4f} (ln 4 = {math.log(4):.4f})")
confident = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 3.0]])  # 3rd is wrong
print(f"one wrong answer, weight 0.5: {weighted_ce(confident, labels, w).item():.4f}; "
      f"the same, unweighted: {weighted_ce(confident, labels, torch.ones(4)).item():.4f}")

# %% [markdown]
# ## 2. One training step
#
# To try a training step we need a model, batches and class weights. `setup(cfg)` builds all of them exactly
# as notebooks 01–03 did by hand: tokenizer, tokenized splits, class weights, the 4-bit model
# with LoRA. For the demo we build a small **demo copy** (a few training records) so the real run
# below starts untouched.

# %%
demo = setup(cfg.replace(train_limit=4 * cfg.batch_size, eval_limit=cfg.eval_batch_size), verbose=False)
loader = DataLoader(model_inputs(demo.train_ds), batch_size=cfg.batch_size, collate_fn=make_collator(demo.tokenizer))
batch = {k: v.to(demo.device) for k, v in next(iter(loader)).items()}
print({k: tuple(v.shape) for k, v in batch.items()})

# %% [markdown]
# **Exercise 10.** Write `one_train_step(model, batch, optimizer, weights)`: the five lines of
# every training loop, on one batch (a dict of tensors with `input_ids`, `attention_mask` and
# `labels`):
#
# 1. forward: `model(input_ids=…, attention_mask=…).logits`,
# 2. the loss: your `weighted_ce`,
# 3. `loss.backward()`,
# 4. clip the gradient norm of the trainable parameters to `cfg.max_grad_norm` (0.3, QLoRA's
#    value: one bad batch cannot throw the adapters far), then `optimizer.step()`,
# 5. `optimizer.zero_grad()`: otherwise the next backward adds to these gradients.
#
# Return the loss as a Python float (`loss.item()`; keeping the tensor would keep the whole
# graph of the batch in memory). Do not change the caller's `batch`.

# %%
def one_train_step(model, batch: dict, optimizer, weights: torch.Tensor) -> float:
    """Exercise 10: forward, weighted loss, backward, clip to cfg.max_grad_norm, step, zero_grad."""
    # TODO: the five steps listed above; the labels are not a model input
    raise NotImplementedError("Exercise 10: write `one_train_step`")


# %%
one_train_step = checks.check_train_step(one_train_step, demo.model, batch, demo.weights)

# %% [markdown]
# A first sanity check of any loop: on one batch, repeated, the loss must fall (the model can
# memorise 8 answers). If it does not, something between forward and step is broken.

# %%
# NBVAL_IGNORE_OUTPUT
# (losses differ in the last digits across CPUs)
optimizer = torch.optim.AdamW([p for p in demo.model.parameters() if p.requires_grad], lr=cfg.learning_rate)
demo.model.train()
losses = [one_train_step(demo.model, batch, optimizer, demo.weights) for _ in range(8)]
print("loss on the same batch:", " ".join(f"{x:.3f}" for x in losses))
del demo, optimizer, batch, loader  # the real run gets its own model (on a GPU: frees its memory)

# %% [markdown]
# ## 3. The real run
#
# A fresh start: delete `runs/notebook-<preset>` (this notebook's own run directory) and set
# everything up again. `setup` seeds Python, NumPy and torch first (`cfg.seed`), so the same
# machine gives the same numbers every time, and prints what a student should see before
# training: device and dtype, trainable parameters, token lengths and class weights.

# %%
run_dir = Path(cfg.output_dir)
shutil.rmtree(run_dir, ignore_errors=True)  # this notebook owns it: re-running starts over
print(f"run directory: {run_dir} (emptied)")
run = setup(cfg)

# %% [markdown]
# **The learning rate** rises linearly over the first `warmup_ratio` of the optimizer steps (the
# freshly initialised head would otherwise get large, noisy updates), then stays constant like
# the reference (`lr_schedule="cosine"` decays it instead).

# %%
steps_per_epoch = math.ceil(math.ceil(len(run.train_ds) / cfg.batch_size) / cfg.grad_accum_steps)
total_steps = steps_per_epoch * cfg.epochs
warmup_steps = max(1, round(cfg.warmup_ratio * total_steps))
print(f"{steps_per_epoch} steps per epoch × {cfg.epochs} epochs = {total_steps} optimizer steps, "
      f"{warmup_steps} of warm-up")
for step in (0, 1, warmup_steps // 2, warmup_steps - 1, warmup_steps, total_steps - 1):
    print(f"  step {step:>4}: lr {get_lr(step, cfg, total_steps, warmup_steps):.2e}")

# %% [markdown]
# **Train.** `fit` runs the loop above: a baseline evaluation (epoch 0), then per epoch the
# training steps (progress bar with the loss), an evaluation on the validation split, and a
# checkpoint. Before training, accuracy sits near chance (25 %).

# %%
# NBVAL_IGNORE_OUTPUT
# (losses, accuracies and speed vary across CPUs; progress bars)
history = fit(run, run_dir)
metrics = finish_run(run_dir, history)  # writes metrics.json and the plots, as `reclor-lab train` does
print(summary_table(history.to_dict()))

# %% [markdown]
# ## 4. What a run directory holds
#
# Everything to reload, evaluate or resume the run, and nothing more: the base model is not
# copied (it is on disk already); each checkpoint holds only the adapter and the head (a few
# hundred KB on the tiny model, ~160 MB on Llama-2-7B), the optimizer and RNG state for an exact
# resume, and the history up to that point. `state.json` names the last and the best checkpoint
# and is written last, so a crash at any moment leaves a complete checkpoint behind.
# `RunDir` (`reclor_lab.rundir`) owns this layout; `.lock` keeps a second process out while a
# run trains.

# %%
rd = RunDir(run_dir)
for path in sorted(run_dir.iterdir()):
    print(f"{path.name}/" if path.is_dir() else path.name)
last = rd.last_dir()
print(f"\n{last.relative_to(run_dir)}:")
for path in sorted(last.iterdir()):
    print("  ", path.name)

# %%
# NBVAL_IGNORE_OUTPUT
# (which epoch is best depends on the accuracies)
print(json.dumps(rd.read_state(), indent=2))
print("kept checkpoints:", sorted(p.name for p in rd.checkpoints_dir.iterdir()))

# %% [markdown]
# An interrupted run (Ctrl-C, SIGTERM from a cluster's scheduler, a closed laptop) loses at
# most the optimizer step it was in when it could write a checkpoint, or what came after the
# last checkpoint when it was killed outright: set `save_every_steps` to checkpoint inside an
# epoch too. `fit(run, run_dir, resume=True)` (or `reclor-lab train --resume`) continues from
# the last checkpoint, skipping the batches already seen, with the same batch order and RNG
# state it would have had: on a CPU the result is bit for bit that of an uninterrupted run.
#
# ## 5. The same with the Hugging Face `Trainer`
#
# `fit_with_trainer` hands the same model, data order, weighted loss, optimizer and schedule to
# a `Trainer` subclass. The reference's author gave up on the Trainer because it showed nothing:
# its default `logging_steps=500` is more steps than a small run has. Here it logs a few times
# per epoch and shows its live table. A short run, in its own directory
# (`runs/notebook-<preset>-trainer`, also owned and emptied by this notebook): 96 training
# examples, 64 validation examples, one epoch.

# %%
# NBVAL_IGNORE_OUTPUT
# (the Trainer's table and losses vary across CPUs)
trainer_cfg = cfg.replace(train_limit=96, eval_limit=64, epochs=1, output_dir=f"{cfg.output_dir}-trainer")
shutil.rmtree(trainer_cfg.output_dir, ignore_errors=True)
trainer_history = fit_with_trainer(setup(trainer_cfg, verbose=False), trainer_cfg.output_dir)

# %% [markdown]
# ## What you have now
#
# A trained adapter in `runs/notebook-<preset>`, with its history and metrics. Notebook 05 reads
# it from disk: curves, confusion matrix, reloading the adapter, predictions on the test split.

# %% [markdown]
# ## Your exercises
#
# Each exercise of this notebook, judged again on your functions as they stand now (✅ done, ❌ not yet right, ⏳ not started).

# %%
checks.summary()
