"""The manual training loop: setup → fit → validate, with checkpoints that resume exactly.

A run directory holds::

    config.json            the RunConfig of the run
    tokenizer files        the tokenizer the run used (pad = eos)
    checkpoints/epoch-N/   LoRA adapter + head (adapter_model.safetensors, loadable with
                           PeftModel.from_pretrained) and trainer_state.pt (optimizer, RNG, epoch)
    state.json             which epoch is the last and which is the best (by val accuracy)
    history.json           per-step train loss and lr, per-epoch eval loss and metrics
    metrics.json, *.png    written when the run finishes

Every file is written to a temporary name and renamed, so an interrupt (Ctrl-C, SIGTERM, a
killed process) leaves the last completed epoch and its history intact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from reclor_lab.config import RunConfig
from reclor_lab.data import (
    BatchListSampler, class_weights, column, epoch_batches, load_split, make_collator, model_inputs,
    tokenize_records,
)
from reclor_lab.loss import weighted_cross_entropy

STATE_FILE = "state.json"
HISTORY_FILE = "history.json"
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.pt"


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (exists already, or nothing to resume)."""


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


def schedule_steps(cfg: RunConfig, n_train: int) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total steps, warm-up steps) for ``n_train`` training examples."""
    steps_per_epoch = math.ceil(math.ceil(n_train / cfg.batch_size) / cfg.grad_accum_steps)
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
    """Peak memory so far: CUDA allocations on a GPU, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def autocast_for(device: torch.device, dtype: torch.dtype):
    """bf16 autocast where the compute dtype is bf16; a no-op context in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class History:
    """What happened, as data: one row per optimizer step, one row per evaluation."""

    steps: list[dict] = field(default_factory=list)   # {"step", "epoch", "loss", "lr"}
    evals: list[dict] = field(default_factory=list)   # {"epoch", "eval_loss", "accuracy", ...}
    epochs: list[dict] = field(default_factory=list)  # {"epoch", "seconds", "tokens_per_second", ...}

    def to_dict(self) -> dict:
        return {"steps": self.steps, "evals": self.evals, "epochs": self.epochs}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(steps=d["steps"], evals=d["evals"], epochs=d.get("epochs", []))

    @classmethod
    def load(cls, run_dir: str | Path) -> "History":
        return cls.from_dict(json.loads((Path(run_dir) / HISTORY_FILE).read_text()))


# --- setup --------------------------------------------------------------------------------------

@dataclass
class Run:
    """Everything a run needs, built by :func:`setup`."""

    cfg: RunConfig
    tokenizer: Any
    model: Any            # the PeftModel
    device: torch.device
    dtype: torch.dtype
    train_ds: Any
    val_ds: Any
    weights: torch.Tensor | None
    stats: dict           # token statistics per split


def prepare_data(cfg: RunConfig, tokenizer) -> tuple[Any, Any, dict, torch.Tensor | None]:
    """Tokenized train and val datasets, their token statistics, and the class weights."""
    train = load_split(cfg.data_dir, "train")[: cfg.train_limit]
    val = load_split(cfg.data_dir, "val")[: cfg.eval_limit]
    train_ds, train_stats = tokenize_records(train, tokenizer, cfg.max_len, cfg.template)
    val_ds, val_stats = tokenize_records(val, tokenizer, cfg.max_len, cfg.template)
    weights = class_weights(column(train_ds, "labels")) if cfg.class_weighting else None
    return train_ds, val_ds, {"train": train_stats, "val": val_stats}, weights


def setup(cfg: RunConfig, verbose: bool = True) -> Run:
    """Seed, load the tokenizer and the 4-bit model, inject LoRA, tokenize the data."""
    from reclor_lab.lora import inject_lora, trainable_report
    from reclor_lab.modeling import load_model, load_tokenizer, pick_device, resolve_compute_dtype

    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model_name_or_path)
    train_ds, val_ds, stats, weights = prepare_data(cfg, tokenizer)
    model = inject_lora(load_model(cfg, tokenizer), cfg)
    device, dtype = pick_device(), resolve_compute_dtype(cfg)
    if verbose:
        print(f"device {device.type}, compute dtype {str(dtype).removeprefix('torch.')}, "
              f"quantization {cfg.quantization}, seed {cfg.seed}")
        print(trainable_report(model).line())
        for split, s in stats.items():
            print(f"{split}: {s.n} examples; {s.line()}")
        if weights is not None:
            print("class weights (A B C D): " + " ".join(f"{w:.3f}" for w in weights.tolist()))
    return Run(cfg, tokenizer, model, device, dtype, train_ds, val_ds, weights, stats)


# --- evaluation ---------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, ds, tokenizer, batch_size: int, device: torch.device, dtype: torch.dtype,
             weights: torch.Tensor | None = None, desc: str = "eval") -> dict:
    """Eval loss and metrics over every example of ``ds`` (predictions only when unlabeled).

    Switches the model to eval() (no dropout) and back. Accuracy counts correct predictions
    over examples, never an average of per-batch accuracies.
    """
    from tqdm.auto import tqdm

    from reclor_lab.metrics import compute_classification_metrics

    was_training = model.training
    model.eval()
    loader = DataLoader(model_inputs(ds), batch_size=batch_size, collate_fn=make_collator(tokenizer))
    logits_all, loss_sum, n = [], torch.zeros((), device=device), 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=None):
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels", None)
        with autocast_for(device, dtype):
            logits = model(**batch).logits.float()
        if labels is not None:
            loss_sum += weighted_cross_entropy(logits, labels, weights) * len(labels)
        logits_all.append(logits.cpu())
        n += len(logits)
    model.train(was_training)
    logits = torch.cat(logits_all)
    preds = logits.argmax(-1).numpy()
    out: dict[str, Any] = {"predictions": preds.tolist(), "n": n}
    if "labels" in ds.column_names:
        out["eval_loss"] = loss_sum.item() / n
        out.update(compute_classification_metrics(preds, np.asarray(column(ds, "labels"))))
    return out


# --- checkpoints ----------------------------------------------------------------------------------

def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a run, and refuse to resume from nothing."""
    has_run = (run_dir / STATE_FILE).exists()
    if resume and not has_run:
        raise RunDirError(f"{run_dir}: nothing to resume (no {STATE_FILE}); start a new run without --resume")
    if not resume and run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(f"{run_dir} already exists and is not empty; pass --resume to continue it, "
                          "or choose another --output-dir")


def read_state(run_dir: Path) -> dict:
    return json.loads((run_dir / STATE_FILE).read_text())


def epoch_dir(run_dir: Path, epoch: int) -> Path:
    return run_dir / CHECKPOINTS / f"epoch-{epoch:03d}"


def best_adapter_dir(run_dir: str | Path) -> Path:
    """The checkpoint folder of the best epoch by val accuracy (its adapter is the run's result)."""
    run_dir = Path(run_dir)
    return epoch_dir(run_dir, read_state(run_dir)["best_epoch"])


def save_checkpoint(run: Run, run_dir: Path, epoch: int, optimizer, history: History,
                    total_steps: int, warmup_steps: int) -> None:
    """Write epoch ``epoch``'s adapter and resume state, then point state.json at it.

    The folder is written under a temporary name and renamed; state.json is replaced last, so
    a crash at any moment leaves state.json naming a complete checkpoint.
    """
    final = epoch_dir(run_dir, epoch)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    run.model.save_pretrained(tmp)  # adapter_model.safetensors + adapter_config.json (head included)
    torch.save({
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "total_steps": total_steps,
        "warmup_steps": warmup_steps,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": random.getstate(),
        "numpy_rng": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
    }, tmp / TRAINER_STATE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_json(run_dir / HISTORY_FILE, history.to_dict())

    accs = {e["epoch"]: e["accuracy"] for e in history.evals if e["epoch"] >= 1}
    best = max(accs, key=lambda e: (accs[e], -e))  # the earliest of equally good epochs
    previous = read_state(run_dir) if (run_dir / STATE_FILE).exists() else {}
    _write_json(run_dir / STATE_FILE, {"last_epoch": epoch, "best_epoch": best,
                                       "best_accuracy": accs[best], "total_steps": total_steps,
                                       "warmup_steps": warmup_steps})
    # keep only the last and the best checkpoints
    for old in {previous.get("last_epoch"), previous.get("best_epoch")} - {epoch, best, None}:
        shutil.rmtree(epoch_dir(run_dir, old), ignore_errors=True)


def load_checkpoint(run: Run, run_dir: Path, optimizer) -> tuple[int, History, dict]:
    """Restore the adapter, head, optimizer and RNG of the last completed epoch."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = read_state(run_dir)
    folder = epoch_dir(run_dir, state["last_epoch"])
    set_peft_model_state_dict(run.model, load_file(folder / "adapter_model.safetensors"))
    ts = torch.load(folder / TRAINER_STATE, weights_only=True)
    optimizer.load_state_dict(ts["optimizer"])
    torch.set_rng_state(ts["torch_rng"])
    if ts["cuda_rng"]:
        torch.cuda.set_rng_state_all(ts["cuda_rng"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in ts["python_rng"]))
    kind, keys, pos, has_gauss, gauss = ts["numpy_rng"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    return state["last_epoch"], History.load(run_dir), ts


# --- the loop ---------------------------------------------------------------------------------------

def train_step(model, batch: dict, weights: torch.Tensor | None, dtype: torch.dtype,
               accum_steps: int = 1) -> torch.Tensor:
    """Forward, weighted loss, backward for one micro-batch; returns the (detached) loss."""
    labels = batch.pop("labels")
    with autocast_for(labels.device, dtype):
        logits = model(**batch).logits
    loss = weighted_cross_entropy(logits, labels, weights)
    (loss / accum_steps).backward()  # gradients add up over the micro-batches of one step
    return loss.detach()


def optimizer_step(model, optimizer, lr: float, max_grad_norm: float) -> None:
    """Set the lr, clip the gradient norm, step, and clear the gradients."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def fit(run: Run, run_dir: str | Path, resume: bool = False, stop_after_epoch: int | None = None,
        verbose: bool = True) -> History:
    """Train ``run.model`` for ``cfg.epochs`` epochs, evaluating and checkpointing after each.

    ``stop_after_epoch`` ends the call after that epoch (as an interrupt would), for teaching
    and testing resume.
    """
    from tqdm.auto import tqdm

    cfg, model, device, dtype = run.cfg, run.model, run.device, run.dtype
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    collate = make_collator(run.tokenizer)
    lengths = column(run.train_ds, "length")
    steps_per_epoch, total_steps, warmup_steps = schedule_steps(cfg, len(lengths))
    optimizer = make_optimizer(model, cfg, device)
    history, start = History(), 1
    if resume:
        done, history, ts = load_checkpoint(run, run_dir, optimizer)
        warmup_steps = ts["warmup_steps"]  # keep the run's warm-up when it is extended
        start = done + 1
        cfg.save(run_dir / "config.json")  # --epochs may have extended the run
        if verbose:
            print(f"resuming {run_dir} after epoch {done} (step {done * steps_per_epoch})"
                  + ("" if start <= cfg.epochs else f"; it already has {done} epochs: pass more --epochs to extend it"))
    else:
        cfg.save(run_dir / "config.json")
        run.tokenizer.save_pretrained(run_dir)
        baseline = evaluate(model, run.val_ds, run.tokenizer, cfg.eval_batch_size, device, dtype,
                            run.weights, desc="baseline")
        history.evals.append(_eval_row(0, baseline))
        if verbose:
            print(_eval_line(0, baseline))

    data = model_inputs(run.train_ds)
    for epoch in range(start, cfg.epochs + 1):
        batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
        loader = DataLoader(data, batch_sampler=BatchListSampler(batches), collate_fn=collate)
        step = (epoch - 1) * steps_per_epoch
        model.train()
        losses, tokens, t0 = [], 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=None)
        for micro, batch in enumerate(bar):
            tokens += int(batch["attention_mask"].sum())  # counted on the host: no GPU sync
            batch = {k: v.to(device) for k, v in batch.items()}
            losses.append(train_step(model, batch, run.weights, dtype, cfg.grad_accum_steps))
            if (micro + 1) % cfg.grad_accum_steps == 0 or micro + 1 == len(batches):
                lr = get_lr(step, cfg, total_steps, warmup_steps)
                optimizer_step(model, optimizer, lr, cfg.max_grad_norm)
                step_loss = torch.stack(losses[-cfg.grad_accum_steps:]).mean()
                history.steps.append({"step": step + 1, "epoch": epoch, "loss": step_loss, "lr": lr})
                if step % 10 == 0:  # .item() syncs with the GPU: only every 10 steps
                    bar.set_postfix(loss=f"{step_loss.item():.4f}", lr=f"{lr:.2e}")
                step += 1
        bar.close()
        seconds = time.perf_counter() - t0
        for row in history.steps:  # one host sync per epoch instead of one per step
            if isinstance(row["loss"], torch.Tensor):
                row["loss"] = row["loss"].item()
        result = evaluate(model, run.val_ds, run.tokenizer, cfg.eval_batch_size, device, dtype, run.weights)
        history.evals.append(_eval_row(epoch, result))
        history.epochs.append({"epoch": epoch, "seconds": seconds, "tokens": tokens,
                               "tokens_per_second": tokens / seconds,
                               "peak_memory_mb": peak_memory_mb(device)})
        save_checkpoint(run, run_dir, epoch, optimizer, history, total_steps, warmup_steps)
        if verbose:
            print(_eval_line(epoch, result) + f" | {tokens / seconds:,.0f} tokens/s, "
                  f"peak memory {peak_memory_mb(device):,.0f} MB")
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    return history


def _eval_row(epoch: int, result: dict) -> dict:
    return {"epoch": epoch, **{k: v for k, v in result.items() if k not in ("predictions", "n")}}


def _eval_line(epoch: int, r: dict) -> str:
    label = "baseline (before training)" if epoch == 0 else f"epoch {epoch}"
    from reclor_lab.metrics import format_accuracy

    return (f"{label}: eval loss {r['eval_loss']:.4f}, accuracy {format_accuracy(r['accuracy'], r.get('accuracy_ci95'))}, "
            f"macro F1 {r['f1_macro']:.3f}")
