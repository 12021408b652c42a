"""Classification metrics through Hugging Face ``evaluate``, offline.

``evaluate.load("accuracy")`` downloads the metric script from the Hub and fails offline, so the
kit ships its metric scripts in ``reclor_lab/metric_modules/`` and loads them by path
(:func:`load_metric`, machinery: :mod:`reclor_lab.runs.loading`). evaluate copies each script
into its module cache (``~/.cache/huggingface/modules/evaluate_modules``) and imports it from
there; nothing is written into the package.

>>> m = compute_classification_metrics([0, 1, 2, 2], [0, 1, 2, 3])
>>> m["accuracy"], m["confusion_matrix"][3]
(0.75, [0, 0, 1, 0])
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from reclor_lab.config import NUM_LABELS
# Loading a shipped metric script (once per process, one clear line when evaluate's cache cannot
# be written): machinery. The notebooks name it here.
from reclor_lab.runs.loading import METRIC_MODULES_DIR, load_metric  # noqa: F401

#: z for a two-sided 95 % interval of a normal distribution.
Z95 = 1.959963984540054
#: Bootstrap resamples for :func:`bootstrap_interval`: the 2.5 % and 97.5 % quantiles of 2,000
#: resamples move by about 0.2 points between seeds on 500 examples; more costs time, not truth.
BOOTSTRAP_RESAMPLES = 2000

def compute_classification_metrics(
    predictions: Sequence[int] | np.ndarray, references: Sequence[int] | np.ndarray
) -> dict[str, Any]:
    """Accuracy with its Wilson 95 % interval (``accuracy_ci95``: ``[low, high]``), macro
    precision / recall / F1 over the ``NUM_LABELS`` options, and the confusion matrix
    (``NUM_LABELS`` × ``NUM_LABELS`` nested list, rows = true label, columns = predicted).

    An option that occurs but is never predicted counts in the macro average with precision 0:
    so a model that always answers "A" scores ~25% accuracy but a low macro F1. Options absent
    from both references and predictions are left out of the average (scikit-learn's default).
    """
    predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
    references = np.asarray(references, dtype=np.int64).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"{predictions.size} predictions but {references.size} references; pass one of each "
                         "per example")
    if predictions.size == 0:
        raise ValueError("no examples to score; check that the evaluation set is not empty")
    acc = load_metric("accuracy").compute(predictions=predictions, references=references)
    multi = load_metric("multiclass").compute(
        predictions=predictions, references=references, num_labels=NUM_LABELS
    )
    return {
        "accuracy": acc["accuracy"],
        "accuracy_ci95": list(wilson_interval(int((predictions == references).sum()), predictions.size)),
        "precision_macro": multi["precision_macro"],
        "recall_macro": multi["recall_macro"],
        "f1_macro": multi["f1_macro"],
        "confusion_matrix": multi["confusion_matrix"],
    }


def compute_metrics(eval_pred) -> dict[str, Any]:
    """``compute_metrics`` for the Hugging Face ``Trainer``: logits → argmax → the metrics above.

    ``eval_pred`` is an ``EvalPrediction``. The result keeps the confusion matrix (a nested list):
    the Trainer passes it through to ``log_history`` unchanged; reporting integrations such as
    TensorBoard would skip it with a warning (the kit sets ``report_to="none"``).
    """
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):  # some models return (logits, extra outputs)
        logits = logits[0]
    predictions = np.asarray(logits).argmax(axis=-1)
    return compute_classification_metrics(predictions, np.asarray(labels))


def accuracy_over_examples(batches: Iterable[tuple[Any, Any]]) -> float:
    """Accuracy over many batches of ``(predictions, labels)``: correct / number of EXAMPLES.

    Averaging per-batch accuracies (or dividing the correct count by the number of batches, as
    the reference notebook did) is wrong as soon as batches differ in size, e.g. a short last
    batch, and dividing by batches is wrong for any batch size > 1.

    >>> accuracy_over_examples([([0, 1, 2], [0, 1, 2]), ([3], [0])])   # 3 of 4 right
    0.75
    """
    correct = 0
    seen = 0
    for predictions, labels in batches:
        predictions = np.asarray(_to_numpy(predictions)).reshape(-1)
        labels = np.asarray(_to_numpy(labels)).reshape(-1)
        if predictions.shape != labels.shape:
            raise ValueError(f"batch has {predictions.size} predictions but {labels.size} labels")
        correct += int((predictions == labels).sum())
        seen += labels.size
    if seen == 0:
        raise ValueError("no examples to score; the batches were empty")
    return correct / seen


def _to_numpy(x: Any) -> Any:
    """A torch tensor (on any device) as a numpy array; anything else unchanged."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return x


# --- intervals ----------------------------------------------------------------------------------

def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of an accuracy of ``correct`` out of ``n`` (95 % by default).

    Unlike the normal ("Wald") interval ``p ± z·sqrt(p(1-p)/n)`` it never leaves [0, 1] and keeps
    its coverage near 0 and 1 and for small ``n``. On 500 examples at 60 % it is about ±4.3
    points: 1 standard error is 2.2 points.

    >>> [round(x, 4) for x in wilson_interval(300, 500)]
    [0.5565, 0.642]
    >>> wilson_interval(0, 10)[0], round(wilson_interval(10, 10)[1], 6)
    (0.0, 1.0)
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"wilson_interval needs n >= 1 examples, got {n!r}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be in 0..n ({n}), got {correct!r}")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_interval(result: dict) -> tuple[float, float]:
    """The Wilson 95 % interval of an evaluation's accuracy: its ``accuracy_ci95``, or, for a
    record written before the kit kept intervals (metrics.json or history.json of an older run),
    the interval recomputed from its confusion matrix (correct = the diagonal, n = the sum).

    >>> [round(x, 4) for x in accuracy_interval({"accuracy": 0.6, "confusion_matrix": [[300, 0], [200, 0]]})]
    [0.5565, 0.642]
    """
    if result.get("accuracy_ci95"):
        return tuple(result["accuracy_ci95"])
    if not result.get("confusion_matrix"):
        raise ValueError("this evaluation record has neither `accuracy_ci95` nor a `confusion_matrix`; "
                         "re-evaluate the run (reclor-lab evaluate RUN_DIR) to get its interval")
    cm = np.asarray(result["confusion_matrix"])
    return wilson_interval(int(np.trace(cm)), int(cm.sum()))


def bootstrap_interval(statistic, *arrays, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*arrays)``: resample the examples (the same
    indices in every array) ``resamples`` times and take the middle ``level`` of the results.

    For statistics without a formula: macro F1, the difference of two models' accuracies on the
    same examples (pass both prediction arrays and the labels), a calibration error.
    Deterministic for a given ``seed``.

    >>> y = np.array([0, 1, 2, 3] * 25); p = y.copy(); p[:40] = (p[:40] + 1) % 4   # 60 % right
    >>> lo, hi = bootstrap_interval(lambda a, b: float((a == b).mean()), p, y)
    >>> 0.49 < lo < 0.6 < hi < 0.71
    True
    """
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError(f"bootstrap_interval needs non-empty arrays of one length, got {[len(a) for a in arrays]}")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(*(a[idx] for a in arrays))
                       for idx in rng.integers(0, n, size=(resamples, n))])
    tail = (1 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def format_accuracy(accuracy: float, ci: Sequence[float] | None) -> str:
    """``0.621 [0.560, 0.678]``: an accuracy with its 95 % interval (the interval left out when
    a record has none, e.g. a run written before intervals were kept).

    >>> format_accuracy(0.6, [0.5565, 0.6421])
    '0.600 [0.556, 0.642]'
    """
    if ci is None:
        return f"{accuracy:.3f}"
    return f"{accuracy:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
