"""The figures of a run: train loss per step with val loss per epoch, accuracy per epoch, confusion matrix;
and of its analysis: baselines, accuracy by question type, calibration, position bias.

Each function takes the history (or metrics) as data, returns the matplotlib ``Figure`` and,
given ``save`` (a path, or a binary file: PNG), writes it. The notebooks show the figures; a
finished run's are written into its directory by :func:`reclor_lab.runs.job.finish_run`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO, Sequence

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


def _finish(fig, save: str | Path | BinaryIO | None):
    fig.tight_layout()
    if save is not None:
        fmt = (Path(save).suffix.lstrip(".") if isinstance(save, (str, Path)) else "") or "png"
        fig.savefig(save, format=fmt, dpi=110)
    plt.close(fig)  # the caller displays the returned figure; no duplicate inline copy
    return fig


def majority_answer(confusion: Sequence[Sequence[int]]) -> tuple[str, float]:
    """The most frequent correct option of an evaluation set and its share, read from a confusion
    matrix's rows (one per true option): the accuracy of always giving that one answer.

    >>> majority_answer([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 2, 0, 1]])
    ('D', 0.5)
    """
    counts = np.asarray(confusion).sum(axis=1)
    return OPTION_LETTERS[int(counts.argmax())], float(counts.max() / counts.sum())


def _epoch_ends(history: dict) -> dict[int, int]:
    """Epoch → the optimizer step it ended on (epoch 0, the baseline, at step 0)."""
    ends = {0: 0}
    for row in history["steps"]:
        ends[row["epoch"]] = row["step"]
    return ends


def plot_loss(history: dict, save: str | Path | BinaryIO | None = None):
    """Train loss at every optimizer step (raw and smoothed) and the validation loss after every
    epoch, on one axis, with the epoch ends marked and ln 4 (the loss of a uniform guess)."""
    steps = [r["step"] for r in history["steps"]]
    loss = [r["loss"] for r in history["steps"]]
    ends = _epoch_ends(history)
    evals = [e for e in history["evals"] if e["epoch"] in ends]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ax.plot(steps, loss, alpha=0.3, label="train loss (per step)")
    ax.plot(steps, smooth(loss), label="train loss (EMA 0.9)")
    ax.plot([ends[e["epoch"]] for e in evals], [e["eval_loss"] for e in evals], "o-", color="tab:red",
            label="val loss (after each epoch)")
    ax.axhline(math.log(NUM_LABELS), color="grey", ls="--", lw=0.9,
               label=f"ln {NUM_LABELS} = {math.log(NUM_LABELS):.3f} (uniform guess)")
    for epoch, step in ends.items():
        if epoch:
            ax.axvline(step, color="grey", lw=0.8, ls=":")
            ax.text(step, 1.0, f"end of epoch {epoch}", transform=ax.get_xaxis_transform(), ha="right",
                    va="bottom", fontsize=8, color="grey")
    ax.set(xlabel="optimizer step", ylabel="weighted cross-entropy")
    ax.set_title("Training and validation loss", pad=14)
    ax.legend(fontsize=8)
    return _finish(fig, save)


def plot_eval(history: dict, save: str | Path | BinaryIO | None = None):
    """Val accuracy per epoch (epoch 0 = before training) with its 95 % interval, beside chance
    (25 %) and the best constant answer (always the most frequent correct option of the set)."""
    evals = history["evals"]
    epochs = [e["epoch"] for e in evals]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    accs = [e["accuracy"] for e in evals]
    ax.plot(epochs, accs, marker="o", label="val accuracy")
    if all(e.get("accuracy_ci95") for e in evals):  # runs written before intervals have none
        lo, hi = zip(*(e["accuracy_ci95"] for e in evals))
        ax.fill_between(epochs, lo, hi, alpha=0.2, label="95 % interval (Wilson)")
    ax.axhline(CHANCE, color="grey", ls="--", label=f"chance ({CHANCE:.0%})")
    if evals and evals[0].get("confusion_matrix"):
        letter, share = majority_answer(evals[0]["confusion_matrix"])
        ax.axhline(share, color="tab:orange", ls="-.", label=f"always {letter} ({share:.1%})")
    ax.set(ylim=(0, 1), xlabel="epoch (0 = before training)", ylabel="accuracy", title="Validation accuracy")
    ax.set_xticks(epochs)
    ax.legend(loc="upper left", fontsize=8)
    return _finish(fig, save)


def plot_confusion(confusion: Sequence[Sequence[int]], save: str | Path | BinaryIO | None = None,
                   title: str = "Confusion matrix (val)"):
    """Rows: the true option; columns: the predicted option; counts in the cells."""
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4, 3.6))
    im = ax.imshow(cm, cmap="Blues")
    ticks = range(NUM_LABELS)
    ax.set_xticks(ticks, list(OPTION_LETTERS))
    ax.set_yticks(ticks, list(OPTION_LETTERS))
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in ticks:
        for j in ticks:
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.colorbar(im, ax=ax)
    return _finish(fig, save)


# --- baselines and error analysis ---------------------------------------------------------------

def _error_bars(values: Sequence[float], intervals: Sequence[Sequence[float]]) -> np.ndarray:
    lo, hi = np.asarray(intervals, dtype=float).T
    v = np.asarray(values, dtype=float)
    return np.vstack([v - lo, hi - v])


def _accuracy_bars(names: list[str], accs: list[float], intervals: Sequence[Sequence[float]], row_height: float,
                   color: str, title: str):
    """Horizontal accuracy bars, top to bottom, each with its interval as an error bar, beside the
    chance line, on [0, 1]: the figure, its axis and the bars' y positions."""
    fig, ax = plt.subplots(figsize=(7, row_height * len(names) + 1.2))
    y = np.arange(len(names))[::-1]
    ax.barh(y, accs, xerr=_error_bars(accs, intervals), color=color, alpha=0.75, capsize=3)
    ax.axvline(CHANCE, color="grey", ls="--", lw=0.8, label="chance")
    ax.set_yticks(y, names)
    ax.set(xlim=(0, 1), xlabel="accuracy", title=title)
    return fig, ax, y


def plot_results(rows: Sequence[dict], title: str = "Val accuracy with 95 % intervals",
                 save: str | Path | BinaryIO | None = None):
    """One horizontal bar per result row (``method``, ``accuracy``, ``accuracy_ci95``), its
    interval as an error bar, the value written beside it, and the 25 % chance line."""
    fig, ax, y = _accuracy_bars([r["method"] for r in rows], [r["accuracy"] for r in rows],
                                [r["accuracy_ci95"] for r in rows], 0.45, "tab:blue", title)
    for yi, r in zip(y, rows):
        ax.text(r["accuracy_ci95"][1] + 0.01, yi, f"{r['accuracy']:.3f}", va="center", fontsize=8)
    return _finish(fig, save)


def plot_accuracy_by_type(by_type: dict, overall: float | None = None, title: str = "Val accuracy by question type",
                          save: str | Path | BinaryIO | None = None):
    """A bar per question type (from :func:`reclor_lab.results.analysis.accuracy_by_type`) with its Wilson
    interval; each bar is labelled with its count (n), so a bar of 5 examples is not read as a
    bar of 50."""
    names = list(by_type)
    fig, ax, y = _accuracy_bars(names, [by_type[k]["accuracy"] for k in names],
                                [by_type[k]["accuracy_ci95"] for k in names], 0.4, "tab:green", title)
    for yi, k in zip(y, names):
        ax.text(1.01, yi, f"n={by_type[k]['n']}", va="center", fontsize=8, transform=ax.get_yaxis_transform())
    if overall is not None:
        ax.axvline(overall, color="black", ls=":", lw=0.8, label="overall")
    ax.legend(loc="lower right", fontsize=8)
    return _finish(fig, save)


def plot_reliability(bins: Sequence[dict], ece: float, title: str = "Reliability diagram (val)",
                     save: str | Path | BinaryIO | None = None):
    """Accuracy against confidence per bin (from :func:`reclor_lab.results.analysis.reliability`), the
    diagonal of perfect calibration, the counts per bin, and the ECE in the title."""
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(4.5, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = bins[0]["high"] - bins[0]["low"]
    full = [b for b in bins if b["count"]]
    ax.bar([b["low"] for b in full], [b["accuracy"] for b in full], width=width, align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", label="perfect calibration")
    ax.plot([b["confidence"] for b in full], [b["accuracy"] for b in full], "o", color="tab:red",
            ms=4, label="(mean confidence, accuracy)")
    ax.set(ylabel="accuracy", ylim=(0, 1), title=f"{title}: ECE {ece:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    axn.bar([b["low"] for b in bins], [b["count"] for b in bins], width=width, align="edge", color="grey")
    axn.set(xlabel="confidence (top probability)", ylabel="count", xlim=(0, 1))
    return _finish(fig, save)


def plot_position_bias(bias: dict, title: str = "Predicted vs correct position (val)",
                       save: str | Path | BinaryIO | None = None):
    """Side-by-side bars per letter: how often it is predicted, and how often it is the answer."""
    letters = list(bias)
    x = np.arange(len(letters))
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.bar(x - 0.2, [bias[c]["predicted"] for c in letters], width=0.4, label="predicted")
    if "gold" in bias[letters[0]]:
        ax.bar(x + 0.2, [bias[c]["gold"] for c in letters], width=0.4, label="correct answer")
    ax.set_xticks(x, letters)
    ax.set(xlabel="answer option", ylabel="examples", title=title)
    ax.legend(fontsize=8)
    return _finish(fig, save)
