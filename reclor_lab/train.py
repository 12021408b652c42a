"""The manual training loop: setup → fit → evaluate, with checkpoints that resume exactly.

:func:`fit` is the loop on one screen, in nanoGPT's sense: a baseline evaluation, then per
micro-batch the forward pass, the weighted loss and backward, per optimizer step the schedule's
learning rate, clipping and the step, and per epoch an evaluation and a checkpoint. A resume
from any checkpoint skips the batches already seen, in the same order, with the same RNG state:
on a CPU it ends bit for bit where an uninterrupted run ends. What makes the loop a *run* (the
run directory, its lock and checkpoints, resume, signals, several processes) is machinery in
:mod:`reclor_lab.runs`, reached from ``fit`` through a few named calls on one object
(:class:`reclor_lab.runs.session.RunSession`). :func:`train_step` and :func:`optimizer_step` are
the same step as functions of their own (exercise 10 and the tests call them).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from reclor_lab.config import NUM_LABELS, RunConfig
from reclor_lab.data import (
    class_weights, column, make_collator, model_inputs, run_records, split_path, tokenize_records,
)
from reclor_lab.loss import weighted_cross_entropy
from reclor_lab.metrics import compute_classification_metrics
from reclor_lab.model import autocast_for, loss_scaler
# Which process this is among a run's processes (one, in a notebook): run machinery, see setup.
from reclor_lab.runs.distributed import Process, process, shard
# What makes fit's loop a run (its directory, resume, signals, records): machinery behind a few named calls.
from reclor_lab.runs.session import RunSession


# --- small pure helpers --------------------------------------------------------------------------

def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch once, at the start of a run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_lr(step: int, cfg: RunConfig, total_steps: int, warmup_steps: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up, then constant or cosine."""
    if step < warmup_steps:
        return cfg.learning_rate * (step + 1) / warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def schedule_steps(cfg: RunConfig, n_train: int, processes: int = 1) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total steps, warm-up steps) for ``n_train`` training examples,
    ``cfg.batch_size`` of them per process and micro-batch."""
    steps_per_epoch = math.ceil(math.ceil(n_train / (cfg.batch_size * processes)) / cfg.grad_accum_steps)
    total_steps = steps_per_epoch * cfg.epochs
    return steps_per_epoch, total_steps, max(1, round(cfg.warmup_ratio * total_steps))


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """The parameters training changes (LoRA's A and B, the head), in the model's order."""
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable (LoRA + head) parameters: fused on a GPU (the Trainer's default, one
    launch per step for all ~450 LoRA tensors of a 7B model); the CPU keeps the foreach kernel, so
    CPU runs stay bit for bit what they were."""
    return torch.optim.AdamW(trainable_parameters(model), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                             fused=device.type == "cuda" or None)


@dataclass
class History:
    """What happened, as plain data (floats, no tensors): one row per optimizer step, one per
    evaluation, one per epoch."""

    steps: list[dict] = field(default_factory=list)   # {"step", "epoch", "loss", "lr"}
    evals: list[dict] = field(default_factory=list)   # {"epoch", "eval_loss", "accuracy", ...}
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "seconds", "tokens_per_second", ...}
    config_changes: list[dict] = field(default_factory=list)  # {"step", "field", "old", "new"}: see RunStart

    def to_dict(self) -> dict:
        return {"steps": self.steps, "evals": self.evals, "epochs": self.epochs} | (
            {"config_changes": self.config_changes} if self.config_changes else {})

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(steps=list(d["steps"]), evals=list(d["evals"]), epochs=list(d.get("epochs", [])),
                   config_changes=list(d.get("config_changes", [])))


# --- setup --------------------------------------------------------------------------------------

@dataclass
class Run:
    """Everything a run needs, built by :func:`setup` (a reloaded run has no data)."""

    cfg: RunConfig
    tokenizer: Any
    model: Any            # the PeftModel
    device: torch.device
    dtype: torch.dtype
    train_ds: Any = None
    val_ds: Any = None
    weights: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)  # token statistics per split
    proc: Process = field(default_factory=Process)  # this process among the run's processes
    val_logits: dict = field(default_factory=dict)  # epoch → the val logits of its evaluation


def prepare_data(cfg: RunConfig, tokenizer) -> tuple[Any, Any, dict, torch.Tensor | None]:
    """Tokenized train and val datasets, their token statistics, and the class weights."""
    train, val = run_records(cfg, "train"), run_records(cfg, "val")
    train_ds, train_stats = tokenize_records(train, tokenizer, cfg.max_len, cfg.template,
                                             source=split_path(cfg.data_dir, "train"))
    val_ds, val_stats = tokenize_records(val, tokenizer, cfg.max_len, cfg.template,
                                         source=split_path(cfg.data_dir, "val"))
    weights = class_weights(column(train_ds, "labels")) if cfg.class_weighting else None
    return train_ds, val_ds, {"train": train_stats, "val": val_stats}, weights


def setup(cfg: RunConfig, verbose: bool = True) -> Run:
    """Seed, load the tokenizer and the 4-bit model, inject LoRA, tokenize the data.
    ``batch_size="auto"`` is settled first (:func:`reclor_lab.tools.plan.resolve_batch`): the run's
    config holds the batch it trains with."""
    from reclor_lab.lora import inject_lora, trainable_report
    from reclor_lab.model import load_model, load_tokenizer, pick_device, resolve_compute_dtype

    proc = process()  # one process, or one of several started by a launcher
    verbose = verbose and proc.is_main
    proc.quiet_unless_main()  # the main process reports loading; the others stay quiet
    if cfg.batch_size == "auto":  # the memory planner settles it (once: a job settles it before setup)
        from reclor_lab.tools.plan import resolve_batch

        cfg = resolve_batch(cfg, verbose=verbose)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model_name_or_path)
    with proc.main_first():  # the main process fills the token cache, the others read it
        train_ds, val_ds, stats, weights = prepare_data(cfg, tokenizer)
    model = inject_lora(load_model(cfg, tokenizer), cfg)  # on this process's device
    device, dtype = pick_device(), resolve_compute_dtype(cfg)
    if verbose:
        print(f"device {device.type}, compute dtype {str(dtype).removeprefix('torch.')}, "
              f"quantization {cfg.quantization}, seed {cfg.seed}")
        if proc.distributed:
            print(f"{proc.world_size} processes, {cfg.batch_size} examples each: effective batch "
                  f"{cfg.batch_size * proc.world_size * cfg.grad_accum_steps} per optimizer step")
        print(trainable_report(model).line())
        for split, s in stats.items():
            print(f"{split}: {s.n} examples; {s.line()}")
        if weights is not None:
            print("class weights (A B C D): " + " ".join(f"{w:.3f}" for w in weights.tolist()))
    return Run(cfg, tokenizer, model, device, dtype, train_ds, val_ds, weights, stats, proc)


# --- evaluation ---------------------------------------------------------------------------------

@torch.no_grad()
def predict_logits(model, ds, tokenizer, batch_size: int, device: torch.device, dtype: torch.dtype,
                   desc: str = "predict", progress: bool = False) -> torch.Tensor:
    """The classifier's logits for every example of a tokenized split, ``(n, 4)`` fp32 on the
    CPU, in the split's order: the kit's one inference loop (evaluation, the analysis'
    probabilities and predictions all run it). Eval mode (no dropout), switched back after;
    labels, where the split has them, are not read. ``progress`` shows a progress bar.
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(model_inputs(ds), batch_size=batch_size, collate_fn=make_collator(tokenizer))
    logits = [torch.zeros(0, NUM_LABELS)]
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if progress else True):
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        with autocast_for(device, dtype):
            logits.append(model(**batch).logits.float().cpu())
    model.train(was_training)
    return torch.cat(logits)


def run_logits(run: Run, ds, desc: str = "eval", progress: bool = True) -> torch.Tensor:
    """:func:`predict_logits` of ``run.model`` over ``ds``; with several processes each predicts a
    contiguous part of ``ds`` and the logits are gathered in order: every example counts exactly
    once (no sampler padding duplicates one), and every process gets them all."""
    proc = run.proc
    part = shard(range(len(ds)), proc.rank, proc.world_size)
    mine = predict_logits(run.model, ds.select(part) if proc.distributed else ds, run.tokenizer,
                          run.cfg.eval_batch_size, run.device, run.dtype, desc, progress and proc.is_main)
    return torch.cat(proc.gather(mine))


def scores(logits: torch.Tensor, ds, weights: torch.Tensor | None) -> dict:
    """Predictions of ``logits`` and, when ``ds`` is labeled, the eval loss and metrics
    (see :func:`evaluate`)."""
    preds = logits.argmax(-1).numpy()
    out: dict[str, Any] = {"predictions": preds.tolist(), "n": len(logits)}
    if "labels" in ds.column_names:
        labels = torch.tensor(column(ds, "labels"))
        out["eval_loss"] = weighted_cross_entropy(logits, labels, weights).item()
        out.update(compute_classification_metrics(preds, labels.numpy()))
    return out


def evaluate(run: Run, ds, desc: str = "eval", progress: bool = True) -> dict:
    """Eval loss and metrics of ``run.model`` over every example of ``ds`` (predictions only
    when unlabeled), with the run's class weights in the loss.

    In eval() (no dropout), switched back after. Both numbers are over examples, never averages
    of per-batch values: accuracy is correct predictions / examples, and the eval loss is the
    training loss's definition applied to the whole split at once, ``sum_i w[y_i] * nll_i /
    sum_i w[y_i]`` (without class weights: the mean per-example cross-entropy), whatever the
    batch size, the order or the number of processes (:func:`run_logits`). ``progress=False``
    shows no progress bar.
    """
    return scores(run_logits(run, ds, desc, progress), ds, run.weights)


# --- one step ------------------------------------------------------------------------------------

#: A disabled loss scaler: every call passes straight through (bf16 and fp32 steps).
NO_SCALING = torch.amp.GradScaler("cpu", enabled=False)


def train_step(model, batch: dict, weights: torch.Tensor | None, dtype: torch.dtype,
               accum_steps: int = 1, scale: float = 1.0,
               scaler: torch.amp.GradScaler = NO_SCALING) -> torch.Tensor:
    """Forward, weighted loss, backward for one micro-batch; returns the (detached) loss.
    The caller's ``batch`` is left as it was. ``scale`` multiplies the loss that is
    backpropagated (a process's share of a batch split over several, see :func:`shard_scale`);
    an enabled ``scaler`` (fp16, :func:`reclor_lab.model.loss_scaler`) multiplies it too."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with autocast_for(batch["labels"].device, dtype):
        logits = model(**inputs).logits
    loss = weighted_cross_entropy(logits, batch["labels"], weights)
    scaler.scale(loss * scale / accum_steps).backward()  # gradients add up over the micro-batches of one step
    return loss.detach()


def optimizer_step(model, optimizer, lr: float, max_grad_norm: float,
                   scaler: torch.amp.GradScaler = NO_SCALING) -> bool:
    """Set the lr, clip the gradient norm, step, and clear the gradients. True when the step was
    skipped: an enabled ``scaler`` (fp16) unscales the gradients before clipping, and skips a
    step whose gradients hold inf or NaN (lowering its scale, which is how the skip is seen:
    one host sync per step, fp16 only)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    scaler.unscale_(optimizer)  # the true gradients, before they are clipped
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable_parameters(model), max_grad_norm)
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return scaler.get_scale() < before


# --- where the loop is ---------------------------------------------------------------------------

@dataclass
class LoopState:
    """Where the loop is: what a checkpoint saves and a resume restores, with the RNG states
    (:mod:`reclor_lab.runs.session` writes, reads and records it)."""

    optimizer: torch.optim.Optimizer
    history: History
    total_steps: int
    warmup_steps: int
    epoch: int = 1              # the epoch in progress (or the next to start)
    batch: int = 0              # micro-batches of that epoch already done
    step: int = 0               # optimizer steps done over the whole run
    epoch_tokens: int = 0       # tokens and training seconds of the epoch so far
    epoch_seconds: float = 0.0
    scaler: torch.amp.GradScaler = NO_SCALING  # fp16's loss scale (reclor_lab.model.loss_scaler)
    losses: list = field(default_factory=list)   # the micro-batch losses of the step in progress
    pending: list = field(default_factory=list)  # (history row, loss tensor): one host sync later


# --- the loop ---------------------------------------------------------------------------------------

def fit(run: Run, run_dir: str | Path | Any, resume: bool = False, stop_after_epoch: int | None = None,
        stop_after_step: int | None = None, verbose: bool = True) -> History:
    """Train ``run.model`` for ``cfg.epochs`` epochs, evaluating and checkpointing after each.

    Checkpoints also come every ``save_every_steps`` optimizer steps, and when SIGTERM or SIGINT
    arrives (a cluster preempting the job, Ctrl-C): the loop finishes its optimizer step, writes a
    checkpoint and raises :class:`TrainingInterrupted` with the command that resumes.
    ``stop_after_epoch`` / ``stop_after_step`` stop the same way (teaching and testing resume).
    ``run_dir``: a folder, or a run already opened (:meth:`RunDir.open`). The run directory,
    resume, signals and several processes (each runs this; the main one prints and writes) are
    behind ``session`` (:class:`reclor_lab.runs.session.RunSession`).
    """
    cfg, trainable = run.cfg, trainable_parameters(run.model)
    with RunSession(run, run_dir, resume, verbose) as session:  # the lock; new, resume or refuse; signals
        _, total_steps, warmup_steps = schedule_steps(cfg, len(run.train_ds), run.proc.world_size)
        state = LoopState(make_optimizer(run.model, cfg, run.device), History(), total_steps, warmup_steps,
                          scaler=loss_scaler(run.device, run.dtype))
        if not session.resume(state):  # a new run: the untrained model's scores first (epoch 0)
            session.record_baseline(state, evaluate(run, run.val_ds, desc="baseline"))
        stopping = False
        while state.epoch <= cfg.epochs and not stopping:
            for batch, scale in session.batches(state):  # the epoch's batches not yet run, in order
                batch = {k: v.to(run.device) for k, v in batch.items()}
                labels = batch.pop("labels")
                with session.no_sync(state):  # several processes: all-reduce on a step's last micro-batch
                    with autocast_for(run.device, run.dtype):
                        logits = session.model(**batch).logits
                    loss = weighted_cross_entropy(logits, labels, run.weights)
                    # scale: 1 on one process, this process's share of the batch on several
                    state.scaler.scale(loss * scale / cfg.grad_accum_steps).backward()
                state.losses.append(loss.detach() * (scale / run.proc.world_size))
                state.batch += 1
                if not session.ends_step(state.batch):
                    continue  # the gradients add up over the micro-batches of one optimizer step
                lr = get_lr(state.step, cfg, state.total_steps, state.warmup_steps)
                for group in state.optimizer.param_groups:
                    group["lr"] = lr
                state.scaler.unscale_(state.optimizer)  # fp16: the true gradients, before clipping
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                scale_before = state.scaler.get_scale()
                state.scaler.step(state.optimizer)  # fp16: skipped if a gradient is inf or NaN
                state.scaler.update()
                state.optimizer.zero_grad(set_to_none=True)
                state.step += 1
                session.record_step(state, lr, skipped=state.scaler.get_scale() < scale_before)
                stopping = session.should_stop() or state.step == stop_after_step
                if session.checkpoint_due(state, stopping):  # every save_every_steps; a stop inside the epoch
                    session.save(state)
                    if stopping:
                        break
            else:  # the epoch ran to its end: evaluate, record, checkpoint
                run.val_logits[state.epoch] = logits = run_logits(run, run.val_ds)  # analysed at the end
                result = scores(logits, run.val_ds, run.weights)
                session.end_epoch(state, result)  # its history rows and printed line; on to the next
                session.save(state, epoch_end=True, accuracy=result["accuracy"])
                stopping = session.should_stop() or stopping or state.epoch - 1 == stop_after_epoch
    return state.history
