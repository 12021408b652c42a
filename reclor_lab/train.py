"""The manual training loop: setup → fit → evaluate, with checkpoints that resume exactly.

``fit`` is the loop on one screen: a baseline evaluation, then per epoch
:func:`train_one_epoch`, :func:`evaluate` and a checkpoint. Checkpoints also come every
``save_every_steps`` optimizer steps inside an epoch, and when SIGTERM or SIGINT arrives (a
cluster preempting the job, Ctrl-C): the loop finishes the optimizer step it is in, writes a
checkpoint and stops. A resume from any checkpoint skips the batches already seen, in the same
order, with the same RNG state: on a CPU it ends bit for bit where an uninterrupted run ends.
The run directory's layout and files belong to :class:`reclor_lab.runs.rundir.RunDir`.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from reclor_lab.config import NUM_LABELS, RunConfig
from reclor_lab.data import (
    BatchListSampler, class_weights, column, epoch_batches, make_collator, model_inputs, run_records,
    split_path, tokenize_records,
)
from reclor_lab.runs.distributed import Process, no_sync, process, shard, wrap
from reclor_lab.errors import RunDirError, TrainingInterrupted
from reclor_lab.loss import weighted_cross_entropy
from reclor_lab.metrics import compute_classification_metrics, format_accuracy
from reclor_lab.model import autocast_for, loss_scaler
from reclor_lab.runs.rundir import RunDir, RunStart, started

#: Exit status of a run stopped by a signal: 128 + the signal number, as shells report it.
SIGNAL_EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}


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


def make_optimizer(model, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable (LoRA + head) parameters.

    On a GPU it is the fused kernel (what the Trainer uses by default): one launch per step for
    all ~450 LoRA tensors of a 7B model instead of a few per tensor group. The CPU keeps the
    foreach kernel, so CPU runs stay bit-for-bit what they were.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                             fused=device.type == "cuda" or None)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocations on a GPU, the process's peak resident set on a CPU.

    On Linux that is ``VmHWM`` of ``/proc/self/status``: this process's own peak since it
    started (``ru_maxrss`` can carry over a large parent's peak into a child). Elsewhere
    ``ru_maxrss``, which macOS reports in bytes and the BSDs in KiB; 0 where neither exists
    (Windows).
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def rate(tokens: int, seconds: float) -> float | None:
    """Tokens per second; None when no time was measured (a clock too coarse or stopped)."""
    return tokens / seconds if seconds > 0 else None


def format_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


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


def eval_row(epoch: int, result: dict) -> dict:
    """The history row of one evaluation (no per-example predictions)."""
    return {"epoch": epoch, **{k: v for k, v in result.items() if k not in ("predictions", "n")}}


def eval_line(epoch: int, r: dict) -> str:
    """One printed line per evaluation."""
    label = "baseline (before training)" if epoch == 0 else f"epoch {epoch}"
    return (f"{label}: eval loss {r['eval_loss']:.4f}, "
            f"accuracy {format_accuracy(r['accuracy'], r.get('accuracy_ci95'))}, macro F1 {r['f1_macro']:.3f}")


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
    train_model: Any = None  # what a training step calls: the model, or its DDP wrapper (set by fit)
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
    ``batch_size="auto"`` is settled first (:func:`reclor_lab.plan.resolve_batch`): the run's
    config holds the batch it trains with."""
    from reclor_lab.lora import inject_lora, trainable_report
    from reclor_lab.model import load_model, load_tokenizer, pick_device, resolve_compute_dtype
    from reclor_lab.plan import resolve_batch

    proc = process()  # one process, or one of several started by a launcher
    verbose = verbose and proc.is_main
    if not proc.is_main:  # the main process reports loading; the others stay quiet
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
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

    Switches the model to eval() (no dropout) and back. Both numbers are over examples, never
    averages of per-batch values: accuracy is correct predictions / examples, and the eval loss
    is the training loss's definition applied to the whole split at once,
    ``sum_i w[y_i] * nll_i / sum_i w[y_i]`` (without class weights: the mean per-example
    cross-entropy). The batch size and the order of the examples cannot change it. With several
    processes each evaluates a contiguous part of ``ds`` and the logits are gathered in order:
    every example counts exactly once (no sampler padding duplicates one), and every process
    gets the result. ``progress=False`` shows no progress bar.
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


def shard_scale(batch: list[int], part: list[int], labels: list[int], weights: torch.Tensor | None,
                world_size: int) -> float:
    """How much this process's mean loss over ``part`` of a global ``batch`` counts:
    ``world_size · W(part) / W(batch)``, W being the sum of the class weights of a set's labels
    (its size without class weighting). DDP averages the processes' gradients, so the step then
    follows the gradient of the whole batch's weighted mean loss, as one process holding the
    whole batch would: unequal parts (a last batch of 5 over 2 processes) and class weights
    included. An empty part counts 0.

    >>> shard_scale([0, 1, 2], [0, 1], [0, 0, 0], None, 2)
    1.3333333333333333
    """
    if world_size == 1:
        return 1.0
    total = (lambda idx: sum(float(weights[labels[i]]) for i in idx)) if weights is not None else len
    return world_size * total(part) / total(batch)


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
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return scaler.get_scale() < before


# --- where the loop is, and its checkpoints ------------------------------------------------------

@dataclass
class Loop:
    """Where the loop is: exactly what a checkpoint saves and a resume restores."""

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
    pending: list = field(default_factory=list)  # (history row, loss tensor): one host sync later
    lap_start: float = 0.0      # when the training time now running started (not saved)

    def lap(self) -> None:
        """Add the training time since the last lap to the epoch's seconds."""
        now = time.perf_counter()
        self.epoch_seconds += max(0.0, now - self.lap_start)  # a clock that went back adds nothing
        self.lap_start = now

    @contextlib.contextmanager
    def clock(self):
        """Count the time inside ``with`` as the epoch's training time (a checkpoint laps it)."""
        self.lap_start = time.perf_counter()
        try:
            yield
        finally:
            self.lap()

    def flush(self) -> None:
        """Turn the pending step losses into floats (one GPU sync for many steps)."""
        for row, loss in self.pending:
            row["loss"] = loss.item()
        self.pending.clear()

    def trainer_state(self, proc: Process = Process()) -> dict:
        """The loop's state; with several processes also each one's RNG state (their dropout
        masks differ), gathered from all of them: every process must call it."""
        self.flush()
        ts = {
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "epoch_tokens": self.epoch_tokens, "epoch_seconds": self.epoch_seconds,
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),  # {} unless fp16
            "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
            **rng_state(),
        }
        if proc.distributed:
            ts["processes"] = proc.world_size
            ts["process_rng"] = proc.gather(rng_state())
        return ts

    def restore(self, ts: dict, history: dict, proc: Process = Process()) -> None:
        if ts.get("processes", 1) != proc.world_size:
            n = ts.get("processes", 1)
            raise RunDirError(f"this run trained on {n} process{'es' if n > 1 else ''} and cannot resume on "
                              f"{proc.world_size}: its batches are cut for {n} (resume it with "
                              f"--processes {n})")
        self.optimizer.load_state_dict(ts["optimizer"])
        if ts.get("scaler"):  # fp16's loss scale and its growth count, as the run left them
            self.scaler.load_state_dict(ts["scaler"])
        self.history = History.from_dict(history)
        self.epoch, self.batch, self.step = ts["epoch"], ts["batch"], ts["step"]
        self.epoch_tokens, self.epoch_seconds = ts["epoch_tokens"], ts["epoch_seconds"]
        self.warmup_steps = ts["warmup_steps"]  # keep the run's warm-up when --epochs extends it
        set_rng_state(ts["process_rng"][proc.rank] if proc.distributed else ts)


def rng_state() -> dict:
    """This process's torch, CUDA, Python and NumPy RNG states, as a checkpoint keeps them."""
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": random.getstate(),
        "numpy_rng": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
    }


def set_rng_state(ts: dict) -> None:
    torch.set_rng_state(ts["torch_rng"])
    if ts.get("cuda_rng"):
        torch.cuda.set_rng_state_all(ts["cuda_rng"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in ts["python_rng"]))
    kind, keys, pos, has_gauss, gauss = ts["numpy_rng"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def save(run: Run, rd: RunDir, loop: Loop, epoch_end: bool, accuracy: float | None = None,
         extra=None) -> str:
    """A checkpoint of the loop where it is, written by the main process; returns its name."""
    epoch = loop.epoch - 1 if epoch_end else loop.epoch  # an epoch end has already moved on
    ts = loop.trainer_state(run.proc)  # every process: it gathers their RNG states
    if not run.proc.is_main:
        return ""
    return rd.save_checkpoint(run.model, ts, loop.history.to_dict(), epoch=epoch,
                              step=loop.step, epoch_end=epoch_end, accuracy=accuracy,
                              keep_last=run.cfg.keep_last_checkpoints, extra=extra).name


class StopSignals:
    """Within ``with``: SIGTERM / SIGINT set ``signum`` instead of killing the process, so the
    loop can finish its optimizer step and write a checkpoint. A second signal stops at once
    (SIGINT raises KeyboardInterrupt, SIGTERM exits 143), leaving the previous checkpoint intact.
    Outside the main thread (where Python allows no handlers) it does nothing."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            import os

            os._exit(SIGNAL_EXIT.get(signum, 128 + signum))
        self.signum = signum

    def agree(self, proc: Process, device: torch.device) -> bool:
        """Whether to stop: with several processes, every one stops if any got a signal (a host
        sync on GPUs), so all stop at the same step."""
        if proc.distributed:
            self.signum = proc.max_int(self.signum or 0, device) or None
        return self.signum is not None

    def __enter__(self) -> "StopSignals":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in SIGNAL_EXIT:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)

    def interrupted(self, step: int, run_dir: Path, processes: int = 1, trainer: bool = False) -> TrainingInterrupted:
        """What a stopped run raises: one line with the command that resumes it."""
        name = signal.Signals(self.signum).name
        return TrainingInterrupted(
            f"{name}: stopped after step {step}, checkpoint written; resume with: "
            f"reclor-lab train --resume --output-dir {run_dir}" + (" --trainer" if trainer else "")
            + (f" --processes {processes}" if processes > 1 else ""), SIGNAL_EXIT[self.signum])


# --- the loop ---------------------------------------------------------------------------------------

def data_fingerprint(run: Run) -> dict[str, str]:
    """What the run trains and evaluates on: a hash of each tokenized split (records, labels,
    token ids), so a resume on other data is refused."""
    from reclor_lab.runs.cache import checksum

    return {"train": checksum(run.train_ds), "val": checksum(run.val_ds)}


def start(run: Run, opened: RunStart, verbose: bool) -> Loop:
    """A fresh loop (directory prepared, baseline evaluated) or one restored from the run's last
    checkpoint; the decision was taken when the run was opened (:meth:`RunDir.open`)."""
    cfg, rd, proc = run.cfg, opened.rd, run.proc
    _, total_steps, warmup_steps = schedule_steps(cfg, len(run.train_ds), proc.world_size)
    loop = Loop(make_optimizer(run.model, cfg, run.device), History(), total_steps, warmup_steps,
                scaler=loss_scaler(run.device, run.dtype))
    weights = None if run.weights is None else run.weights.tolist()
    if opened.decision == "resume":
        batches = math.ceil(len(run.train_ds) / (cfg.batch_size * proc.world_size))
        ts, history = opened.load_checkpoint(run.model, batches_per_epoch=batches)  # every process reads it
        loop.restore(ts, history, proc)
        opened.prepare(cfg, run.tokenizer, data_fingerprint(run), weights)  # the same data; --epochs may extend
        if verbose:
            print(f"resuming {rd.path} at epoch {loop.epoch}, batch {loop.batch} (step {loop.step})"
                  + ("" if loop.epoch <= cfg.epochs else
                     f"; it already has {cfg.epochs} epochs: pass more --epochs to extend it"))
        return loop
    opened.prepare(cfg, run.tokenizer, data_fingerprint(run), weights)
    baseline = evaluate(run, run.val_ds, desc="baseline")
    loop.history.evals.append(eval_row(0, baseline))
    if verbose:
        print(eval_line(0, baseline))
    return loop


@dataclass
class EpochRest:
    """The batches of epoch ``loop.epoch`` still to run, as this process runs them.

    With several processes each batch of ``batch_size × processes`` examples is cut into one
    part per process (:func:`reclor_lab.runs.distributed.shard`); a process whose part is empty runs
    the batch's first example with weight 0, since every process must take part in the gradient
    all-reduce.
    """

    batches: list[list[int]]  # every batch of the epoch (example indices, all processes)
    scales: list[float]       # how much this process's part of each remaining batch counts
    loader: DataLoader        # this process's parts of the remaining batches, in order
    lengths: list[int]        # tokens per example, for the tokens/s figure
    accum: int                # micro-batches per optimizer step
    losses: list = field(default_factory=list)  # the losses of the optimizer step in progress

    def ends_step(self, done: int) -> bool:
        """Whether micro-batch number ``done`` (1-based) is the last of an optimizer step."""
        return done % self.accum == 0 or done == len(self.batches)


def start_epoch(run: Run, loop: Loop) -> EpochRest:
    """The epoch's batches (a pure function of seed and epoch) from micro-batch ``loop.batch``
    on; the model in train mode."""
    cfg, proc = run.cfg, run.proc
    lengths, labels = column(run.train_ds, "length"), column(run.train_ds, "labels")
    batches = epoch_batches(lengths, cfg.batch_size * proc.world_size, cfg.seed, loop.epoch,
                            cfg.group_by_length)
    rest = batches[loop.batch:]
    parts = [shard(b, proc.rank, proc.world_size) for b in rest]
    scales = [shard_scale(b, p, labels, run.weights, proc.world_size) for b, p in zip(rest, parts)]
    # Its own generator: a DataLoader draws a seed from the global RNG when it starts iterating,
    # which a mid-epoch resume would draw at another point than the uninterrupted run.
    sampler = BatchListSampler([p or b[:1] for p, b in zip(parts, rest)])
    loader = DataLoader(model_inputs(run.train_ds), batch_sampler=sampler,
                        collate_fn=make_collator(run.tokenizer), generator=torch.Generator())
    run.model.train()
    return EpochRest(batches, scales, loader, lengths, cfg.grad_accum_steps)


def progress_bar(run: Run, loop: Loop, epoch: EpochRest):
    """The epoch's progress bar over its loader (on the main process only)."""
    from tqdm.auto import tqdm

    return tqdm(epoch.loader, desc=f"epoch {loop.epoch}/{run.cfg.epochs}", initial=loop.batch,
                total=len(epoch.batches), disable=None if run.proc.is_main else True)


def micro_step(run: Run, loop: Loop, epoch: EpochRest, batch: dict, scale: float) -> None:
    """Forward and backward of this process's part of one micro-batch; its loss waits in
    ``epoch.losses`` for the optimizer step."""
    model = run.train_model or run.model
    loop.epoch_tokens += sum(epoch.lengths[i] for i in epoch.batches[loop.batch])  # the whole batch's, on the host
    batch = {k: v.to(run.device) for k, v in batch.items()}
    with no_sync(model, skip=not epoch.ends_step(loop.batch + 1)):  # all-reduce once per optimizer step
        loss = train_step(model, batch, run.weights, run.dtype, run.cfg.grad_accum_steps, scale, loop.scaler)
    epoch.losses.append(loss * (scale / run.proc.world_size))  # this process's share of the batch's loss
    loop.batch += 1


def step_and_record(run: Run, loop: Loop, epoch: EpochRest, bar) -> None:
    """The optimizer step at the schedule's learning rate, and its history row (the loss stays
    on the device until :meth:`Loop.flush`). A step that fp16's loss scaler skipped is marked."""
    lr = get_lr(loop.step, run.cfg, loop.total_steps, loop.warmup_steps)
    skipped = optimizer_step(run.model, loop.optimizer, lr, run.cfg.max_grad_norm, loop.scaler)
    step_loss = run.proc.sum(torch.stack(epoch.losses).mean())  # the whole batch's loss
    epoch.losses.clear()
    row = {"step": loop.step + 1, "epoch": loop.epoch, "loss": None, "lr": lr} | ({"skipped": True} if skipped else {})
    loop.history.steps.append(row)
    loop.pending.append((row, step_loss))
    loop.step += 1
    if loop.step % 10 == 0:  # .item() syncs with the GPU: only every 10 steps
        bar.set_postfix(loss=f"{step_loss.item():.4f}", lr=f"{lr:.2e}")


def checkpoint_due(cfg: RunConfig, step: int) -> bool:
    """Whether ``save_every_steps`` asks for a checkpoint after optimizer step ``step``."""
    return bool(cfg.save_every_steps) and step % cfg.save_every_steps == 0


def checkpoint(run: Run, rd: RunDir, loop: Loop) -> None:
    """A checkpoint inside the epoch, its training time counted up to here."""
    loop.lap()
    save(run, rd, loop, epoch_end=False)


def train_one_epoch(run: Run, loop: Loop, rd: RunDir, stop: StopSignals,
                    stop_after_step: int | None = None) -> bool:
    """Train the rest of epoch ``loop.epoch`` from micro-batch ``loop.batch``, checkpointing
    every ``save_every_steps`` steps. False when a signal (or ``stop_after_step``) stopped it
    after a checkpoint; True at the epoch's end."""
    epoch = start_epoch(run, loop)
    with progress_bar(run, loop, epoch) as bar, loop.clock():
        for batch, scale in zip(bar, epoch.scales):
            micro_step(run, loop, epoch, batch, scale)
            if not epoch.ends_step(loop.batch):
                continue  # more micro-batches before this optimizer step
            step_and_record(run, loop, epoch, bar)
            stopping = stop.agree(run.proc, run.device) or loop.step == stop_after_step
            if loop.batch == len(epoch.batches):
                break  # the epoch's end evaluates and saves (and a stop waits for that)
            if stopping or checkpoint_due(run.cfg, loop.step):
                checkpoint(run, rd, loop)
            if stopping:
                return False
    return True


def scaling_row(history: History, epoch: int, scaler) -> dict:
    """fp16's figures for an epoch's history row: its steps whose gradients overflowed (skipped
    by the loss scaler) and the loss scale now; nothing without loss scaling (``scaler`` None or
    disabled)."""
    if scaler is None or not scaler.is_enabled():
        return {}
    skipped = sum(1 for r in history.steps if r["epoch"] == epoch and r.get("skipped"))
    return {"skipped_steps": skipped, "loss_scale": scaler.get_scale()}


def end_epoch(run: Run, rd: RunDir, loop: Loop, verbose: bool) -> None:
    """Evaluate, record the epoch, and write its checkpoint."""
    logits = run_logits(run, run.val_ds)
    run.val_logits[loop.epoch] = logits  # the best epoch's are analysed at the end, without another pass
    result = scores(logits, run.val_ds, run.weights)
    loop.history.evals.append(eval_row(loop.epoch, result))
    tokens, seconds, memory = loop.epoch_tokens, loop.epoch_seconds, peak_memory_mb(run.device)
    row = {"epoch": loop.epoch, "seconds": seconds, "tokens": tokens, "tokens_per_second": rate(tokens, seconds),
           "peak_memory_mb": memory} | scaling_row(loop.history, loop.epoch, loop.scaler)
    loop.history.epochs.append(row)
    if verbose:
        print(eval_line(loop.epoch, result) + f" | {format_rate(row['tokens_per_second'])} tokens/s, "
              f"peak memory {memory:,.0f} MB"
              + (f" | {row['skipped_steps']} steps skipped (inf/NaN gradients), loss scale {row['loss_scale']:g}"
                 if "loss_scale" in row else ""))
    loop.epoch, loop.batch, loop.epoch_tokens, loop.epoch_seconds = loop.epoch + 1, 0, 0, 0.0
    save(run, rd, loop, epoch_end=True, accuracy=result["accuracy"])


def fit(run: Run, run_dir: str | Path | RunStart, resume: bool = False, stop_after_epoch: int | None = None,
        stop_after_step: int | None = None, verbose: bool = True) -> History:
    """Train ``run.model`` for ``cfg.epochs`` epochs, evaluating and checkpointing after each.

    ``stop_after_epoch`` / ``stop_after_step`` end the call there, after a checkpoint (as an
    interrupt would), for teaching and testing resume. SIGTERM / SIGINT do the same, then raise
    :class:`TrainingInterrupted` with the command that resumes.

    ``run_dir``: a folder (opened here) or a run already opened (:meth:`RunDir.open`). With
    several processes (see :mod:`reclor_lab.runs.distributed`) every process runs this; the main one
    holds the lock, prints and writes, and all stop at the same step.
    """
    cfg, proc = run.cfg, run.proc
    verbose = verbose and proc.is_main
    with started(run_dir, resume, cfg, proc) as opened, StopSignals() as stop:
        rd = opened.rd
        run.model.to(run.device)
        run.train_model = wrap(run.model, proc)
        loop = start(run, opened, verbose)
        stopped = False
        while loop.epoch <= cfg.epochs and not stopped:
            if train_one_epoch(run, loop, rd, stop, stop_after_step):
                end_epoch(run, rd, loop, verbose)
                stop.agree(proc, run.device)  # a signal during the evaluation stops every process here
            stopped = (stop.signum is not None or loop.batch > 0  # a mid-epoch stop
                       or loop.step == stop_after_step or loop.epoch - 1 == stop_after_epoch)
    run.train_model = None  # DDP's reducer goes while the process group is still there
    if stop.signum is not None:
        raise stop.interrupted(loop.step, rd.path, proc.world_size)
    return loop.history
