"""The Hugging Face ``Trainer`` path: the same loss, data order, optimizer, schedule and metrics
as the manual loop in :mod:`reclor_lab.train`, with progress you can see.

The reference solution's author gave up on the Trainer because it showed no validation numbers:
by default it never evaluates during training (``eval_strategy="no"``), and without
``compute_metrics`` an evaluation returns only the loss. (``logging_steps=500`` was not the
cause: at batch 2 ReClor has ~2,300 steps per epoch.) Here the Trainer evaluates every epoch
with the kit's metrics, logs a few times per epoch, every evaluation prints one line, and in a
notebook the Trainer's own live table shows.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments

from reclor_lab.config import RunConfig
from reclor_lab.data import column, epoch_batches, make_collator, model_inputs
from reclor_lab.loss import weighted_cross_entropy
from reclor_lab.metrics import compute_metrics
from reclor_lab.errors import RunDirError
from reclor_lab.runs.rundir import TRAINER_STATE_JSON, RunDir, RunStart, started

from reclor_lab.runs.session import (
    StopSignals, data_fingerprint, eval_line, flush, peak_memory_mb, rate, save_checkpoint, scaling_row,
)
from reclor_lab.train import History, LoopState, Run, get_lr, make_optimizer, schedule_steps


class EpochBatches(torch.utils.data.Sampler):
    """The manual loop's batch order (a pure function of seed and epoch) as a batch sampler."""

    def __init__(self, lengths, cfg: RunConfig):
        self.lengths, self.cfg, self.epoch = lengths, cfg, 1

    def set_epoch(self, epoch: int) -> None:  # the Trainer counts epochs from 0
        self.epoch = epoch + 1

    def __iter__(self):
        cfg = self.cfg
        return iter(epoch_batches(self.lengths, cfg.batch_size, cfg.seed, self.epoch, cfg.group_by_length))

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.cfg.batch_size)


class WeightedLossTrainer(Trainer):
    """A Trainer whose loss is the kit's weighted cross-entropy (:mod:`reclor_lab.loss`)."""

    # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps,
    # exactly as the manual loop does.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, class_weights: torch.Tensor | None = None, batch_order=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights
        self.batch_order = batch_order
        self.step_losses: list[torch.Tensor] = []
        self.last_metrics: dict = {}  # the full metrics of the last evaluation (the Trainer logs
        # only numbers, so the confusion matrix travels this way)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = weighted_cross_entropy(outputs.logits, labels, self.class_weights)
        if model.training:
            self.step_losses.append(loss.detach())
        return (loss, outputs) if return_outputs else loss

    def get_train_dataloader(self) -> DataLoader:
        if self.batch_order is None:
            return super().get_train_dataloader()
        loader = DataLoader(self.train_dataset, batch_sampler=self.batch_order, collate_fn=self.data_collator)
        return self.accelerator.prepare(loader)


class HistoryCallback(TrainerCallback):
    """Fills the same History as the manual loop, prints one line per evaluation, and writes the
    same checkpoints (plus the Trainer's own optimizer, scheduler, RNG and state files, so that
    ``Trainer.train(resume_from_checkpoint=...)`` continues from them)."""

    def __init__(self, run: Run, rd: RunDir, loop: LoopState, verbose: bool, stop_after_epoch: int | None = None,
                 stop: StopSignals | None = None, steps_per_epoch: int = 0):
        self.run, self.rd, self.loop, self.verbose = run, rd, loop, verbose
        self.stop_after_epoch = stop_after_epoch
        self.stop, self.steps_per_epoch = stop, steps_per_epoch  # SIGTERM / SIGINT: finish the step, save
        self.trainer: WeightedLossTrainer | None = None
        self.t0 = time.perf_counter()

    def on_epoch_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kw):
        self.loop.epoch_seconds = max(0.0, time.perf_counter() - self.t0)  # training only: the evaluation comes after

    def on_step_end(self, args, state, control, **kw):
        t, loop = self.trainer, self.loop
        losses = t.step_losses[-args.gradient_accumulation_steps:]
        t.step_losses.clear()
        step = state.global_step
        epoch = math.ceil(state.epoch - 1e-9) if state.epoch else 1
        row = {"step": step, "epoch": epoch, "loss": None,
               "lr": get_lr(step - 1, self.run.cfg, loop.total_steps, loop.warmup_steps)}
        if t.accelerator.optimizer_step_was_skipped:  # fp16: the Trainer's loss scaler saw inf/NaN
            row["skipped"] = True
        loop.history.steps.append(row)
        loop.pending.append((row, torch.stack(losses).mean()))
        if self.stop is not None and self.stop.signum is not None:
            if step % self.steps_per_epoch == 0:
                return  # the epoch's end evaluates and saves; on_evaluate stops there
            done_in_epoch = step - (epoch - 1) * self.steps_per_epoch
            loop.epoch, loop.step, loop.batch = epoch, step, done_in_epoch * args.gradient_accumulation_steps
            save_checkpoint(self.run, self.rd, loop, epoch_end=False, extra=self.trainer_files)
            control.should_training_stop = True

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        loop, epoch = self.loop, round(state.epoch or 0)
        flush(loop)  # one host sync per evaluation, not one per step
        row = {"epoch": epoch, **self.trainer.last_metrics}  # eval_loss: the kit's, see trainer_metrics
        loop.history.evals.append(row)
        if epoch >= 1:
            seconds, tokens = loop.epoch_seconds, sum(column(self.run.train_ds, "length"))
            loop.history.epochs.append({"epoch": epoch, "seconds": seconds, "tokens": tokens,
                                        "tokens_per_second": rate(tokens, seconds),
                                        "peak_memory_mb": peak_memory_mb(self.run.device)}
                                       | scaling_row(loop.history, epoch, self.trainer.accelerator.scaler))
            loop.epoch, loop.batch, loop.step, loop.epoch_seconds = epoch + 1, 0, state.global_step, 0.0
            save_checkpoint(self.run, self.rd, loop, epoch_end=True, accuracy=row["accuracy"], extra=self.trainer_files)
            if epoch == self.stop_after_epoch or (self.stop is not None and self.stop.signum is not None):
                control.should_training_stop = True
        if self.verbose:
            print(eval_line(epoch, row))

    def trainer_files(self, folder: Path) -> None:
        """The Trainer's own resume files, beside the kit's, in the same checkpoint folder."""
        t = self.trainer
        # private: the Trainer saves them publicly only from its own checkpoint step, which the
        # kit's checkpoints replace; tests/test_private_apis.py checks them on the pinned version
        t._save_optimizer_and_scheduler(str(folder))
        t._save_rng_state(str(folder))
        t._save_scaler(str(folder))  # fp16's loss scale (nothing without one); the Trainer's resume reads it
        t.state.save_to_json(str(folder / TRAINER_STATE_JSON))


def trainer_metrics(trainer: WeightedLossTrainer, eval_pred) -> dict:
    """The kit's metrics (reclor_lab.metrics.compute_metrics), remembered in full on the trainer,
    with the kit's eval loss: the weighted loss over the whole split at once, as
    :func:`reclor_lab.train.evaluate` computes it (the Trainer's own ``eval_loss`` is a mean of
    per-batch means weighted by batch size, which class weights make differ)."""
    metrics = compute_metrics(eval_pred)
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    loss = weighted_cross_entropy(torch.as_tensor(logits).float(), torch.as_tensor(eval_pred.label_ids),
                                  trainer.class_weights)
    trainer.last_metrics = {"eval_loss": loss.item(), **metrics}
    return metrics


def training_arguments(cfg: RunConfig, run_dir: Path, steps_per_epoch: int, fp16: bool = False) -> TrainingArguments:
    """TrainingArguments derived from the run config (no reporting services, no hub). ``fp16``:
    the Trainer's own fp16 autocast and dynamic loss scaling (what the manual loop does with an
    fp16 compute dtype; accelerate scales losses on a GPU only)."""
    return TrainingArguments(
        output_dir=str(RunDir(run_dir).trainer_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm > 0 else 1e9,
        eval_strategy="epoch",
        save_strategy="no",            # checkpoints are written by HistoryCallback, as in the manual loop
        logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // 4),  # a few lines per epoch on any run size (default: every 500)
        report_to="none",              # no wandb / tensorboard: no login, no network
        seed=cfg.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=False,                    # autocast is decided by the model's compute dtype (4-bit) instead,
        fp16=fp16,                     # except fp16, whose gradients need the Trainer's loss scaling
        disable_tqdm=False,
        label_names=["labels"],
    )


def fit_with_trainer(run: Run, run_dir: str | Path | RunStart, resume: bool = False, verbose: bool = True,
                     stop_after_epoch: int | None = None) -> History:
    """Train with :class:`WeightedLossTrainer`; returns the same History as :func:`train.fit`.
    ``resume`` continues from the last checkpoint through the Trainer's own resume (the Trainer
    path checkpoints at epoch ends only); ``stop_after_epoch`` ends the call after that epoch.
    ``run_dir``: a folder (opened here) or a run already opened (:meth:`RunDir.open`)."""
    cfg = run.cfg
    with started(run_dir, resume, cfg, run.proc) as opened, StopSignals() as stop:
        rd = opened.rd
        lengths = column(run.train_ds, "length")
        steps_per_epoch, total_steps, warmup_steps = schedule_steps(cfg, len(lengths))
        # The manual loop's optimizer and schedule, handed to the Trainer (its default optimizer
        # exempts biases and norms from weight decay; the manual loop does not).
        optimizer = make_optimizer(run.model, cfg, run.device)
        loop = LoopState(optimizer, History(), total_steps, warmup_steps)
        checkpoint = None
        weights = None if run.weights is None else run.weights.tolist()
        if opened.decision == "resume":
            checkpoint = rd.last_dir()
            if not (checkpoint / TRAINER_STATE_JSON).is_file():
                raise RunDirError(f"{checkpoint} was written by the manual loop, not the Trainer: resume it "
                                  "without --trainer")
            # checks every file's checksum and the adapter; the Trainer reloads them
            saved, history = opened.load_checkpoint(run.model, batches_per_epoch=len(EpochBatches(lengths, cfg)))
            loop.history, loop.warmup_steps = History.from_dict(history), saved["warmup_steps"]
        opened.prepare(cfg, run.tokenizer, data_fingerprint(run), weights)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: get_lr(s, cfg, total_steps, loop.warmup_steps) / cfg.learning_rate)
        callback = HistoryCallback(run, rd, loop, verbose, stop_after_epoch, stop, steps_per_epoch)
        trainer = WeightedLossTrainer(
            model=run.model,
            args=training_arguments(cfg, rd.path, steps_per_epoch,
                                    fp16=run.dtype == torch.float16 and run.device.type == "cuda"),
            train_dataset=model_inputs(run.train_ds),
            eval_dataset=model_inputs(run.val_ds),
            data_collator=make_collator(run.tokenizer),
            compute_metrics=lambda p: trainer_metrics(trainer, p),
            optimizers=(optimizer, schedule),
            callbacks=[callback],
            class_weights=run.weights,
            batch_order=EpochBatches(lengths, cfg),
        )
        callback.trainer = trainer
        if checkpoint is None:
            trainer.evaluate()  # the baseline, before training (epoch 0)
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stop.signum is not None:
        raise stop.interrupted(loop.step, rd.path, trainer=True)
    return loop.history
