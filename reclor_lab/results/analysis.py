"""Where a model fails: accuracy by question type, position bias, calibration, the most confident
wrong answers, and what can be said about unlabeled test predictions.

Pure functions of arrays (predictions, the four probabilities per example, labels, types) plus
:func:`predict_proba` (the model's probabilities over a tokenized split) and :func:`val_analysis`
(everything at once, for ``metrics.json``). Every accuracy carries a Wilson 95 % interval.

>>> probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1]])
>>> expected_calibration_error(probs, [0, 0])    # one right and one wrong at confidence 0.7
0.2
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from reclor_lab.config import NUM_LABELS, OPTION_LETTERS
from reclor_lab.metrics import wilson_interval
from reclor_lab.results.qtypes import QUESTION_TYPES, official_type, record_type
from reclor_lab.train import predict_logits

#: Equal-width confidence bins of the reliability diagram and the ECE.
CALIBRATION_BINS = 10
#: How many of the most confident wrong answers to keep.
CONFIDENT_WRONG = 10
#: The official ReClor test split: its first 440 records form the EASY set, the last 560 the HARD
#: set (questions option-only models answer right, and the rest), scored separately on the
#: leaderboard. The split is only defined for the official 1,000-record file.
OFFICIAL_TEST_SIZE = 1000
EASY_SIZE = 440


def easy_hard(records: Sequence[dict]) -> list[str] | None:
    """Each record's part, ``"EASY"`` or ``"HARD"``, where a split is defined; else ``None``.

    * The kit's own data (any record carrying the planted cue, :func:`reclor_lab.tools.synth.cue_part`):
      EASY = the options alone give the answer away (one opens modestly, three sweepingly), HARD =
      only the passage tells them apart. Read from the text, so train, val and test all have it.
    * The official ReClor test file (1,000 unlabeled records): the first 440 are EASY, the last
      560 HARD, as the leaderboard scores them.
    * Anything else (ReClor's train and val, which have no such split): ``None``.
    """
    from reclor_lab.tools.synth import cue_part

    parts = [cue_part(r) if len(r.get("answers", ())) else "HARD" for r in records]
    if "EASY" in parts:
        return parts
    if len(records) == OFFICIAL_TEST_SIZE and not any("label" in r for r in records):
        return ["EASY"] * EASY_SIZE + ["HARD"] * (OFFICIAL_TEST_SIZE - EASY_SIZE)
    return None


def _as_arrays(probs, labels=None):
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != NUM_LABELS:
        raise ValueError(f"probabilities must be (examples, {NUM_LABELS}), got shape {probs.shape}")
    if labels is None:
        return probs, None
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(probs),):
        raise ValueError(f"{len(probs)} probability rows but {labels.size} labels")
    return probs, labels


# --- calibration ------------------------------------------------------------------------------

def reliability(probs, labels, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per equal-width confidence bin (confidence = the top probability): its range, how many
    predictions fall in it, their mean confidence and their accuracy. Empty bins are kept
    (count 0, confidence and accuracy None), so every diagram has the same x axis.

    >>> rows = reliability([[0.9, 0.1, 0, 0], [0.3, 0.3, 0.2, 0.2]], [0, 1], bins=2)
    >>> [(r["count"], r["confidence"], r["accuracy"]) for r in rows]
    [(1, 0.3, 0.0), (1, 0.9, 1.0)]
    """
    probs, labels = _as_arrays(probs, labels)
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    # bin k holds confidences in (k/bins, (k+1)/bins]; a confidence of exactly 0 joins bin 0
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for k in range(bins):
        sel = which == k
        n = int(sel.sum())
        rows.append({"low": k / bins, "high": (k + 1) / bins, "count": n,
                     "confidence": round(float(conf[sel].mean()), 12) if n else None,
                     "accuracy": round(float(right[sel].mean()), 12) if n else None})
    return rows


def expected_calibration_error(probs, labels, bins: int = CALIBRATION_BINS) -> float:
    """ECE: the gap between confidence and accuracy per bin, weighted by the bin's share of
    examples. 0 for a perfectly calibrated model; a model 90 % sure and always wrong scores 0.9.

    >>> expected_calibration_error([[0.9, 0.1, 0, 0]] * 4, [1, 1, 1, 1])
    0.9
    """
    rows = reliability(probs, labels, bins)
    n = sum(r["count"] for r in rows)
    return round(sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]), 12)


# --- positions, types, mistakes ---------------------------------------------------------------------

def position_bias(predictions: Sequence[int], labels: Sequence[int] | None = None) -> dict[str, dict]:
    """Per letter: how often it is predicted and (when labels are given) how often it is the
    answer, as counts and shares. A model that prefers a position predicts it more often than
    it is right.

    >>> position_bias([1, 1, 1, 0], [0, 1, 2, 3])["B"]
    {'predicted': 3, 'predicted_share': 0.75, 'gold': 1, 'gold_share': 0.25}
    """
    preds = np.bincount(np.asarray(predictions, dtype=int), minlength=NUM_LABELS)
    n = int(preds.sum())
    out = {}
    for c in range(NUM_LABELS):
        row: dict[str, Any] = {"predicted": int(preds[c]), "predicted_share": float(preds[c] / n)}
        if labels is not None:
            gold = np.bincount(np.asarray(labels, dtype=int), minlength=NUM_LABELS)
            row.update(gold=int(gold[c]), gold_share=float(gold[c] / n))
        out[OPTION_LETTERS[c]] = row
    return out


def accuracy_by_type(predictions: Sequence[int], labels: Sequence[int], types: Sequence[int]) -> dict[str, dict]:
    """Per question type present: examples, correct, accuracy and its Wilson 95 % interval.

    >>> accuracy_by_type([0, 1, 2], [0, 1, 3], [3, 3, 2])["Weaken"]["accuracy"]
    1.0
    """
    preds, labels, types = (np.asarray(a, dtype=int) for a in (predictions, labels, types))
    out = {}
    for t in range(len(QUESTION_TYPES)):
        sel = types == t
        n = int(sel.sum())
        if n:
            correct = int((preds[sel] == labels[sel]).sum())
            out[QUESTION_TYPES[t]] = {"type": t, "n": n, "correct": correct, "accuracy": correct / n,
                                      "accuracy_ci95": list(wilson_interval(correct, n))}
    return out


def most_confident_wrong(probs, labels, k: int = CONFIDENT_WRONG) -> list[int]:
    """Indices of the ``k`` wrong predictions made with the highest confidence, most confident
    first (ties: the earlier example first).

    >>> most_confident_wrong([[0.9, 0.1, 0, 0], [0.6, 0.4, 0, 0], [0.2, 0.8, 0, 0]], [1, 1, 1], k=5)
    [0, 1]
    """
    probs, labels = _as_arrays(probs, labels)
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    conf = probs.max(axis=1)
    return sorted(wrong.tolist(), key=lambda i: (-conf[i], i))[:k]


def record_types(records: Sequence[dict]) -> list[int]:
    """The question type of each record: official where the file has it, else inferred."""
    return [record_type(r) for r in records]


# --- a whole split -------------------------------------------------------------------------------------

def probabilities(logits: torch.Tensor) -> np.ndarray:
    """Softmax over the four options of each row of ``logits`` (on the CPU), ``(n, 4)``."""
    return torch.softmax(logits.float().cpu(), dim=-1).numpy()


def predict_proba(model, ds, tokenizer, batch_size: int, device, dtype) -> np.ndarray:
    """The classifier's softmax probabilities over the four options for every example of a
    tokenized split, ``(n, 4)``, in the split's order (eval mode, switched back after): the
    :func:`probabilities` of :func:`reclor_lab.train.predict_logits`."""
    return probabilities(predict_logits(model, ds, tokenizer, batch_size, device, dtype))


def val_analysis(records: Sequence[dict], probs) -> dict[str, Any]:
    """Everything :mod:`reclor_lab.results.analysis` says about predictions on a labeled split: accuracy on
    the EASY and HARD parts (:func:`easy_hard`; empty where the split is not defined), by
    question type, position bias, the reliability table and ECE, and the ids of the most
    confident wrong answers. The keys go into ``metrics.json``.
    """
    labels = [r["label"] for r in records]
    probs, labels_arr = _as_arrays(probs, labels)
    preds = probs.argmax(axis=1)
    types = record_types(records)
    wrong = most_confident_wrong(probs, labels_arr)
    parts = easy_hard(records)
    by_part = {}
    if parts is not None:
        arr = np.asarray(parts)
        for p in ("EASY", "HARD"):
            sel = arr == p
            right = int((preds[sel] == labels_arr[sel]).sum())
            n = int(sel.sum())
            by_part[p] = {"accuracy": right / n if n else None, "n": n,
                          "accuracy_ci95": list(wilson_interval(right, n)) if n else None}
    return {
        "accuracy_by_part": by_part,
        "accuracy_by_type": accuracy_by_type(preds, labels_arr, types),
        "types_source": ("official" if all(official_type(r) is not None for r in records)
                         else "inferred from the question stem"),
        "position_bias": position_bias(preds, labels_arr),
        "calibration": {"ece": expected_calibration_error(probs, labels_arr),
                        "bins": reliability(probs, labels_arr)},
        "most_confident_wrong": [{"id_string": records[i]["id_string"], "label": OPTION_LETTERS[labels_arr[i]],
                                  "predicted": OPTION_LETTERS[preds[i]], "confidence": float(probs[i].max())}
                                 for i in wrong],
    }


def summarize_test_predictions(records: Sequence[dict], predictions: Sequence[int]) -> dict[str, Any]:
    """What unlabeled test predictions allow: the predicted letters overall, per question type,
    and on the EASY and HARD parts (:func:`easy_hard`: the official test's first 440 and last
    560, or the kit's own data split by its planted cue); ``parts_note`` says why there are
    none otherwise.
    """
    preds = np.asarray(predictions, dtype=int)
    if len(preds) != len(records):
        raise ValueError(f"{len(preds)} predictions for {len(records)} records")
    types = np.asarray(record_types(records), dtype=int)
    summary: dict[str, Any] = {"n": len(preds), "letters": _letters(preds), "by_type": {}}
    summary["types_source"] = ("official" if all(official_type(r) is not None for r in records)
                               else "inferred from the question stem")
    for t in range(len(QUESTION_TYPES)):
        sel = types == t
        if sel.any():
            summary["by_type"][QUESTION_TYPES[t]] = _letters(preds[sel])
    parts = easy_hard(records)
    if parts is not None:
        arr = np.asarray(parts)
        summary["parts"] = {p: _letters(preds[arr == p]) for p in ("EASY", "HARD")}
    else:
        summary["parts"] = {}
        summary["parts_note"] = (f"EASY (first {EASY_SIZE}) / HARD (last {OFFICIAL_TEST_SIZE - EASY_SIZE}) are defined "
                                 f"for the official {OFFICIAL_TEST_SIZE:,}-record test file, and by the planted cue "
                                 f"for the kit's own data; this one has {len(preds)} records and no cue")
    return summary


def _letters(preds: np.ndarray) -> dict[str, int]:
    counts = np.bincount(preds, minlength=NUM_LABELS)
    return {OPTION_LETTERS[c]: int(counts[c]) for c in range(NUM_LABELS)}


def format_test_summary(summary: dict) -> str:
    """The test summary as a table: predicted letters per row (overall, types, EASY / HARD)."""
    rows = [("all", summary["letters"])] + list(summary["by_type"].items()) + list(summary["parts"].items())
    lines = [f"{'predicted letters':<28}{'n':>5}" + "".join(f"{c:>6}" for c in OPTION_LETTERS)]
    for name, counts in rows:
        n = sum(counts.values())
        lines.append(f"{name:<28}{n:>5}" + "".join(f"{counts[c]:>6}" for c in OPTION_LETTERS))
    if "parts_note" in summary:
        lines.append(f"({summary['parts_note']})")
    return "\n".join(lines)
