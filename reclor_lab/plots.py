"""The figures of a run: train loss per step, eval loss and accuracy per epoch, confusion matrix.

Each function takes the history (or metrics) as data, returns the matplotlib ``Figure`` and,
given ``save=path``, writes a PNG. The notebooks show the figures; the CLI saves them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline",):
    # No display in a terminal or CI; a notebook keeps its inline backend.
    matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reclor_lab.config import NUM_LABELS, OPTION_LETTERS  # noqa: E402

CHANCE = 1 / NUM_LABELS


def smooth(values: Sequence[float], alpha: float = 0.9) -> np.ndarray:
    """Exponential moving average, debiased like Adam's (so the first points are not pulled to 0).

    >>> smooth([1.0, 1.0, 1.0]).tolist()
    [1.0, 1.0, 1.0]
    """
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha**i))
    return np.asarray(out)


def _finish(fig, save: str | Path | None):
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=110)
    plt.close(fig)  # the caller displays the returned figure; no duplicate inline copy
    return fig


def plot_train_loss(history: dict, save: str | Path | None = None):
    """Train loss at every optimizer step, raw and smoothed, with epoch boundaries."""
    steps = [r["step"] for r in history["steps"]]
    loss = [r["loss"] for r in history["steps"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, loss, alpha=0.3, label="train loss (per step)")
    ax.plot(steps, smooth(loss), label="smoothed (EMA 0.9)")
    epoch_ends = [r["step"] for a, r in zip(history["steps"], history["steps"][1:]) if r["epoch"] != a["epoch"]]
    for s in epoch_ends:
        ax.axvline(s - 0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("weighted cross-entropy")
    ax.set_title("Training loss")
    ax.legend()
    return _finish(fig, save)


def plot_eval(history: dict, save: str | Path | None = None):
    """Eval loss and accuracy per epoch (epoch 0 = before training), with the 25 % chance line."""
    evals = history["evals"]
    epochs = [e["epoch"] for e in evals]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [e["eval_loss"] for e in evals], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("eval loss")
    ax1.set_title("Validation loss")
    ax2.plot(epochs, [e["accuracy"] for e in evals], marker="o", label="val accuracy")
    ax2.axhline(CHANCE, color="grey", ls="--", label="chance (25 %)")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax2.set_title("Validation accuracy")
    ax2.legend(loc="lower right")
    for ax in (ax1, ax2):
        ax.set_xticks(epochs)
    return _finish(fig, save)


def plot_confusion(confusion: Sequence[Sequence[int]], save: str | Path | None = None,
                   title: str = "Confusion matrix (val)"):
    """Rows: the true option; columns: the predicted option; counts in the cells."""
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4, 3.6))
    im = ax.imshow(cm, cmap="Blues")
    ticks = range(NUM_LABELS)
    ax.set_xticks(ticks, list(OPTION_LETTERS))
    ax.set_yticks(ticks, list(OPTION_LETTERS))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in ticks:
        for j in ticks:
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.colorbar(im, ax=ax)
    return _finish(fig, save)


def save_run_plots(history: dict, confusion, run_dir: str | Path) -> list[Path]:
    """Write loss.png, eval.png and confusion.png into the run directory."""
    run_dir = Path(run_dir)
    paths = [run_dir / "loss.png", run_dir / "eval.png", run_dir / "confusion.png"]
    plot_train_loss(history, paths[0])
    plot_eval(history, paths[1])
    plot_confusion(confusion, paths[2])
    return paths
