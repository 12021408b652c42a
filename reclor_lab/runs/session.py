"""What ``fit`` reaches through a few named calls: the run directory, resume, signals, processes.

:class:`RunSession` is the loop's one handle on the machinery (:func:`reclor_lab.train.fit`
reads as the loop itself; everything here is what it takes to make that loop a *run*):

- ``with RunSession(...)`` opens the run (:func:`reclor_lab.runs.rundir.started`: the lock, then
  new / resume / refuse), catches SIGTERM / SIGINT, and holds the model the step calls (with
  several processes, its DistributedDataParallel wrapper);
- :meth:`RunSession.resume` restores the loop's state from the last checkpoint, or prepares a
  new run's directory;
- :meth:`RunSession.batches` yields this process's part of each batch of the epoch not yet run,
  in the order a pure function of seed and epoch gives, with its share of the batch's loss;
- :meth:`RunSession.record_step`, :meth:`RunSession.should_stop`,
  :meth:`RunSession.checkpoint_due` and :meth:`RunSession.save`: after each optimizer step;
- :meth:`RunSession.record_baseline` and :meth:`RunSession.end_epoch`: an evaluation's and an
  epoch's history rows (speed, peak memory, fp16's skipped steps) and printed line.

A checkpoint holds exactly the loop's state (:class:`reclor_lab.train.LoopState`,
:func:`loop_state_dict`) and every RNG state, so a resume from any checkpoint skips the batches
already seen, in the same order, with the same RNG state: on a CPU it ends bit for bit where an
uninterrupted run ends.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from reclor_lab.data import BatchListSampler, column, epoch_batches, make_collator, model_inputs
from reclor_lab.errors import RunDirError, TrainingInterrupted
from reclor_lab.metrics import format_accuracy
from reclor_lab.runs.distributed import Process, no_sync, shard, shard_scale, wrap
from reclor_lab.runs.rundir import RunDir, RunStart, started

# ``state`` below is the loop's :class:`reclor_lab.train.LoopState` and ``run`` its
# :class:`reclor_lab.train.Run`: train imports this module, so this one cannot import them back.
LoopState = Run = Any

#: Exit status of a run stopped by a signal: 128 + the signal number, as shells report it.
SIGNAL_EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}


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
            os._exit(SIGNAL_EXIT.get(signum, 128 + signum))
        self.signum = signum

    def agree(self, proc: Process, device: torch.device) -> bool:
        """Whether to stop: with several processes, every one stops if any got a signal (a host
        sync on GPUs), so all stop at the same step."""
        if proc.distributed:
            self.signum = proc.max_int(self.signum or 0, device) or None
        return self.signum is not None

    def __enter__(self) -> "StopSignals":
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


# --- what the loop records and prints ---------------------------------------------------------------

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


def eval_row(epoch: int, result: dict) -> dict:
    """The history row of one evaluation (no per-example predictions)."""
    return {"epoch": epoch, **{k: v for k, v in result.items() if k not in ("predictions", "n")}}


def eval_line(epoch: int, r: dict) -> str:
    """One printed line per evaluation."""
    label = "baseline (before training)" if epoch == 0 else f"epoch {epoch}"
    return (f"{label}: eval loss {r['eval_loss']:.4f}, "
            f"accuracy {format_accuracy(r['accuracy'], r.get('accuracy_ci95'))}, macro F1 {r['f1_macro']:.3f}")


def scaling_row(history, epoch: int, scaler) -> dict:
    """fp16's figures for an epoch's history row: its steps whose gradients overflowed (skipped
    by the loss scaler) and the loss scale now; nothing without loss scaling (``scaler`` None or
    disabled)."""
    if scaler is None or not scaler.is_enabled():
        return {}
    skipped = sum(1 for r in history.steps if r["epoch"] == epoch and r.get("skipped"))
    return {"skipped_steps": skipped, "loss_scale": scaler.get_scale()}


def epoch_line(row: dict, result: dict) -> str:
    """The line printed after each epoch: its evaluation, speed and memory (and fp16's skips)."""
    return (eval_line(row["epoch"], result) + f" | {format_rate(row['tokens_per_second'])} tokens/s, "
            f"peak memory {row['peak_memory_mb']:,.0f} MB"
            + (f" | {row['skipped_steps']} steps skipped (inf/NaN gradients), loss scale {row['loss_scale']:g}"
               if "loss_scale" in row else ""))


def end_epoch(state: LoopState, result: dict, memory_mb: float) -> dict:
    """Record epoch ``state.epoch``'s evaluation and its figures, and move on to the next epoch;
    returns the epoch's history row."""
    state.history.evals.append(eval_row(state.epoch, result))
    tokens, seconds = state.epoch_tokens, state.epoch_seconds
    row = {"epoch": state.epoch, "seconds": seconds, "tokens": tokens, "tokens_per_second": rate(tokens, seconds),
           "peak_memory_mb": memory_mb} | scaling_row(state.history, state.epoch, state.scaler)
    state.history.epochs.append(row)
    state.epoch, state.batch, state.epoch_tokens, state.epoch_seconds = state.epoch + 1, 0, 0, 0.0
    return row


# --- what a checkpoint holds ----------------------------------------------------------------------

def flush(state: LoopState) -> None:
    """Turn the pending step losses into floats (one GPU sync for many steps)."""
    for row, loss in state.pending:
        row["loss"] = loss.item()
    state.pending.clear()


def loop_state_dict(state: LoopState) -> dict:
    """Where the loop is, as a checkpoint's trainer state keeps it (without the RNG states)."""
    flush(state)
    return {"epoch": state.epoch, "batch": state.batch, "step": state.step,
            "epoch_tokens": state.epoch_tokens, "epoch_seconds": state.epoch_seconds,
            "optimizer": state.optimizer.state_dict(), "scaler": state.scaler.state_dict(),  # {} unless fp16
            "total_steps": state.total_steps, "warmup_steps": state.warmup_steps}


def load_loop_state(state: LoopState, saved: dict, history: dict) -> None:
    """Put a checkpoint's loop state and history back into ``state`` (the inverse of
    :func:`loop_state_dict`)."""
    state.optimizer.load_state_dict(saved["optimizer"])
    if saved.get("scaler"):  # fp16's loss scale and its growth count, as the run left them
        state.scaler.load_state_dict(saved["scaler"])
    state.history = type(state.history).from_dict(history)
    state.epoch, state.batch, state.step = saved["epoch"], saved["batch"], saved["step"]
    state.epoch_tokens, state.epoch_seconds = saved["epoch_tokens"], saved["epoch_seconds"]
    state.warmup_steps = saved["warmup_steps"]  # keep the run's warm-up when --epochs extends it


def rng_state() -> dict:
    """This process's torch, CUDA, Python and NumPy RNG states, as a checkpoint keeps them."""
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": random.getstate(),
        "numpy_rng": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
    }


def set_rng_state(saved: dict) -> None:
    torch.set_rng_state(saved["torch_rng"])
    if saved.get("cuda_rng"):
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in saved["python_rng"]))
    kind, keys, pos, has_gauss, gauss = saved["numpy_rng"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def trainer_state(state: LoopState, proc: Process = Process()) -> dict:
    """What ``trainer_state.pt`` keeps: the loop's state and this process's RNG states; with
    several processes also each one's RNG state (their dropout masks differ), gathered from all
    of them: every process must call it."""
    saved = {**loop_state_dict(state), **rng_state()}
    if proc.distributed:
        saved["processes"] = proc.world_size
        saved["process_rng"] = proc.gather(rng_state())
    return saved


def restore_state(state: LoopState, saved: dict, history: dict, proc: Process = Process()) -> None:
    """Put a checkpoint's trainer state and history back into ``state``, RNG states included."""
    if saved.get("processes", 1) != proc.world_size:
        n = saved.get("processes", 1)
        raise RunDirError(f"this run trained on {n} process{'es' if n > 1 else ''} and cannot resume on "
                          f"{proc.world_size}: its batches are cut for {n} (resume it with "
                          f"--processes {n})")
    load_loop_state(state, saved, history)
    set_rng_state(saved["process_rng"][proc.rank] if proc.distributed else saved)


def data_fingerprint(run: Run) -> dict[str, str]:
    """What the run trains and evaluates on: a hash of each tokenized split (records, labels,
    token ids), so a resume on other data is refused."""
    from reclor_lab.runs.cache import checksum

    return {"train": checksum(run.train_ds), "val": checksum(run.val_ds)}


def save_checkpoint(run: Run, rd: RunDir, state: LoopState, epoch_end: bool, accuracy: float | None = None,
                    extra=None) -> str:
    """A checkpoint of the loop where it is, written by the main process; returns its name."""
    epoch = state.epoch - 1 if epoch_end else state.epoch  # an epoch end has already moved on
    saved = trainer_state(state, run.proc)  # every process: it gathers their RNG states
    if not run.proc.is_main:
        return ""
    return rd.save_checkpoint(run.model, saved, state.history.to_dict(), epoch=epoch,
                              step=state.step, epoch_end=epoch_end, accuracy=accuracy,
                              keep_last=run.cfg.keep_last_checkpoints, extra=extra).name


# --- the session -----------------------------------------------------------------------------------

class RunSession:
    """The training loop's handle on its run directory, signals and processes (see the module
    docstring). ``run_dir``: a folder (opened here) or a run already opened (:meth:`RunDir.open`)."""

    def __init__(self, run: Run, run_dir: str | Path | RunStart, resume: bool, verbose: bool):
        self.run, self.run_dir, self.resume_asked = run, run_dir, resume
        self.verbose = verbose and run.proc.is_main  # only the main process prints
        self.model = None  # what a training step calls: the model, or its DDP wrapper
        self.state: LoopState | None = None
        self.bar = None
        self._batches: list[list[int]] = []
        self._lap_start = 0.0

    def __enter__(self) -> "RunSession":
        run = self.run
        with contextlib.ExitStack() as stack:  # a failure in here releases what was taken
            self.opened = stack.enter_context(started(self.run_dir, self.resume_asked, run.cfg, run.proc))
            self.stop = stack.enter_context(StopSignals())
            run.model.to(run.device)
            self.model = wrap(run.model, run.proc)
            self._held = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self.model = None  # DDP's reducer goes while the process group is still there
        self._held.__exit__(*exc)  # the signal handlers back, the lock released
        if exc[0] is None and self.stop.signum is not None:
            step = self.state.step if self.state else 0
            raise self.stop.interrupted(step, self.opened.rd.path, self.run.proc.world_size)

    def resume(self, state: LoopState) -> bool:
        """Restore ``state`` from the run's last checkpoint (True), or prepare a new run's
        directory (False); the decision was taken when the run was opened (:meth:`RunDir.open`)."""
        run, cfg, proc, opened = self.run, self.run.cfg, self.run.proc, self.opened
        self.state = state
        weights = None if run.weights is None else run.weights.tolist()
        if opened.decision != "resume":
            opened.prepare(cfg, run.tokenizer, data_fingerprint(run), weights)
            return False
        batches = math.ceil(len(run.train_ds) / (cfg.batch_size * proc.world_size))
        saved, history = opened.load_checkpoint(run.model, batches_per_epoch=batches)  # every process reads it
        restore_state(state, saved, history, proc)
        opened.prepare(cfg, run.tokenizer, data_fingerprint(run), weights)  # the same data; --epochs may extend
        if self.verbose:
            print(f"resuming {opened.rd.path} at epoch {state.epoch}, batch {state.batch} (step {state.step})"
                  + ("" if state.epoch <= cfg.epochs else
                     f"; it already has {cfg.epochs} epochs: pass more --epochs to extend it"))
        return True

    def batches(self, state: LoopState) -> Iterator[tuple[dict, float]]:
        """This process's part of each batch of epoch ``state.epoch`` from micro-batch
        ``state.batch`` on, with how much its mean loss counts (1.0 on one process), the model in
        train mode. The epoch's batches are a pure function of seed and epoch.

        With several processes each batch of ``batch_size × processes`` examples is cut into one
        part per process (:func:`reclor_lab.runs.distributed.shard`); a process whose part is
        empty runs the batch's first example with weight 0, since every process must take part
        in the gradient all-reduce. Counts the epoch's tokens and training seconds."""
        run, cfg, proc = self.run, self.run.cfg, self.run.proc
        lengths, labels = column(run.train_ds, "length"), column(run.train_ds, "labels")
        self._batches = epoch_batches(lengths, cfg.batch_size * proc.world_size, cfg.seed, state.epoch,
                                      cfg.group_by_length)
        rest = self._batches[state.batch:]
        parts = [shard(b, proc.rank, proc.world_size) for b in rest]
        scales = [shard_scale(b, p, labels, run.weights, proc.world_size) for b, p in zip(rest, parts)]
        # Its own generator: a DataLoader draws a seed from the global RNG when it starts iterating,
        # which a mid-epoch resume would draw at another point than the uninterrupted run.
        loader = DataLoader(model_inputs(run.train_ds), batch_sampler=BatchListSampler(
            [p or b[:1] for p, b in zip(parts, rest)]), collate_fn=make_collator(run.tokenizer),
            generator=torch.Generator())
        run.model.train()
        with tqdm(loader, desc=f"epoch {state.epoch}/{cfg.epochs}", initial=state.batch,
                  total=len(self._batches), disable=None if proc.is_main else True) as self.bar:
            self._lap_start = time.perf_counter()
            try:
                for batch, scale in zip(self.bar, scales):
                    state.epoch_tokens += sum(lengths[i] for i in self._batches[state.batch])  # the whole batch's
                    yield batch, scale
            finally:
                self.lap(state)

    def lap(self, state: LoopState) -> None:
        """Add the training time since the last lap to the epoch's seconds."""
        now = time.perf_counter()
        state.epoch_seconds += max(0.0, now - self._lap_start)  # a clock that went back adds nothing
        self._lap_start = now

    def ends_step(self, done: int) -> bool:
        """Whether micro-batch number ``done`` (1-based) is the last of an optimizer step."""
        return done % self.run.cfg.grad_accum_steps == 0 or done == len(self._batches)

    def no_sync(self, state: LoopState):
        """Several processes: backward all-reduces the gradients only on an optimizer step's last
        micro-batch (once per step); else nothing."""
        return no_sync(self.model, skip=not self.ends_step(state.batch + 1))

    def record_step(self, state: LoopState, lr: float, skipped: bool) -> None:
        """The history row of optimizer step ``state.step`` (its loss, summed over the processes,
        stays on the device until :func:`flush`). A step that fp16's loss scaler skipped is
        marked."""
        step_loss = self.run.proc.sum(torch.stack(state.losses).mean())  # the whole batch's loss
        state.losses.clear()
        row = {"step": state.step, "epoch": state.epoch, "loss": None, "lr": lr}
        row |= {"skipped": True} if skipped else {}
        state.history.steps.append(row)
        state.pending.append((row, step_loss))
        if state.step % 10 == 0:  # .item() syncs with the GPU: only every 10 steps
            self.bar.set_postfix(loss=f"{step_loss.item():.4f}", lr=f"{lr:.2e}")

    def log(self, line: str) -> None:
        """Print ``line`` (the main process, when verbose)."""
        if self.verbose:
            print(line)

    def record_baseline(self, state: LoopState, result: dict) -> None:
        """The untrained model's evaluation (epoch 0): its history row and printed line."""
        state.history.evals.append(eval_row(0, result))
        self.log(eval_line(0, result))

    def end_epoch(self, state: LoopState, result: dict) -> None:
        """Epoch ``state.epoch``'s evaluation recorded with its speed, peak memory and fp16's
        skipped steps, its line printed; the state moves on to the next epoch."""
        self.log(epoch_line(end_epoch(state, result, peak_memory_mb(self.run.device)), result))

    def should_stop(self) -> bool:
        """Whether a signal asks the run to stop; every process agrees on it (they all call it)."""
        return self.stop.agree(self.run.proc, self.run.device)

    def checkpoint_due(self, state: LoopState, stopping: bool) -> bool:
        """Whether to checkpoint inside the epoch: every ``save_every_steps`` optimizer steps,
        and when stopping. Never at the epoch's end, which evaluates first (a stop waits for it)."""
        every = self.run.cfg.save_every_steps
        return state.batch < len(self._batches) and (stopping or bool(every) and state.step % every == 0)

    def save(self, state: LoopState, epoch_end: bool = False, accuracy: float | None = None) -> str:
        """A checkpoint where the loop is (inside an epoch, its training time counted up to here;
        or at an epoch's end, after its evaluation); returns its name."""
        if not epoch_end:
            self.lap(state)
        return save_checkpoint(self.run, self.opened.rd, state, epoch_end, accuracy)
