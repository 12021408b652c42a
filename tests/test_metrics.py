"""The shipped evaluate metrics, checked against hand computations; offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reclor_lab.metrics import (
    METRIC_MODULES_DIR,
    accuracy_over_examples,
    compute_classification_metrics,
    compute_metrics,
    load_metric,
)

# 6 examples; option C (label 2) is never predicted.
REFERENCES = [0, 0, 1, 1, 2, 3]
PREDICTIONS = [0, 1, 1, 1, 0, 3]
# rows = true label, columns = predicted label
CONFUSION = [
    [1, 1, 0, 0],
    [0, 2, 0, 0],
    [1, 0, 0, 0],
    [0, 0, 0, 1],
]
PRECISION = [1 / 2, 2 / 3, 0.0, 1.0]  # class 2: 0 predicted → 0/0 counted as 0
RECALL = [1 / 2, 1.0, 0.0, 1.0]
F1 = [1 / 2, 0.8, 0.0, 1.0]


def test_metrics_match_a_hand_computation():
    m = compute_classification_metrics(PREDICTIONS, REFERENCES)
    assert set(m) == {"accuracy", "accuracy_ci95", "precision_macro", "recall_macro", "f1_macro", "confusion_matrix"}
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == CONFUSION
    assert m["precision_macro"] == pytest.approx(np.mean(PRECISION))
    assert m["recall_macro"] == pytest.approx(np.mean(RECALL))
    assert m["f1_macro"] == pytest.approx(np.mean(F1)) == pytest.approx(0.575)


def test_per_class_values_and_always_a_model():
    per_class = load_metric("multiclass").compute(predictions=PREDICTIONS, references=REFERENCES,
                                                  num_labels=4)
    assert per_class["precision"] == pytest.approx(PRECISION)
    assert per_class["f1"] == pytest.approx(F1)
    always_a = compute_classification_metrics([0] * 8, [0, 1, 2, 3] * 2)
    assert always_a["accuracy"] == 0.25
    assert always_a["f1_macro"] == pytest.approx((2 * 0.25 / 1.25) / 4)  # only class A scores


def test_classes_absent_from_both_sides_do_not_count_in_the_macro_mean():
    m = compute_classification_metrics([0, 1, 1], [0, 1, 1])
    assert m["accuracy"] == m["precision_macro"] == m["recall_macro"] == m["f1_macro"] == 1.0
    assert m["confusion_matrix"][2] == m["confusion_matrix"][3] == [0, 0, 0, 0]


def test_bad_inputs_fail_with_a_message():
    with pytest.raises(ValueError, match="predictions but"):
        compute_classification_metrics([0, 1], [0])
    with pytest.raises(ValueError, match="no examples"):
        compute_classification_metrics([], [])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        compute_classification_metrics([0, 4], [0, 1])


def test_trainer_compute_metrics_takes_argmax_of_logits():
    from transformers import EvalPrediction

    logits = np.full((len(REFERENCES), 4), -1.0, dtype=np.float32)
    logits[np.arange(len(PREDICTIONS)), PREDICTIONS] = 2.0
    m = compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array(REFERENCES)))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1_macro"] == pytest.approx(0.575)
    assert m["confusion_matrix"] == CONFUSION


def test_accuracy_is_over_examples_not_batches():
    # batch size 1: every way of averaging agrees
    singles = [([p], [r]) for p, r in zip(PREDICTIONS, REFERENCES)]
    assert accuracy_over_examples(singles) == pytest.approx(4 / 6)
    # batch sizes 2 and 1: 1/2 right, then 1/1 right
    batches = [(torch.tensor([0, 1]), torch.tensor([0, 0])), (np.array([2]), np.array([2]))]
    correct = 2
    assert accuracy_over_examples(batches) == pytest.approx(2 / 3)
    assert np.mean([0.5, 1.0]) == 0.75  # mean of per-batch accuracies: wrong
    assert correct / len(batches) == 1.0  # the reference's correct / number of batches: wrong


def test_metric_modules_load_offline_without_writing_into_the_package(monkeypatch):
    before = sorted(p.relative_to(METRIC_MODULES_DIR) for p in METRIC_MODULES_DIR.rglob("*")
                    if "__pycache__" not in p.parts)
    load_metric.cache_clear()  # load for real; the conftest guard fails any network access
    assert load_metric("accuracy").compute(predictions=[1, 0], references=[1, 1]) == {"accuracy": 0.5}
    after = sorted(p.relative_to(METRIC_MODULES_DIR) for p in METRIC_MODULES_DIR.rglob("*")
                   if "__pycache__" not in p.parts)
    assert before == after
    assert load_metric("accuracy") is load_metric("accuracy")  # cached
    with pytest.raises(ValueError, match="unknown metric"):
        load_metric("bleu")


def test_accuracy_interval_of_a_record_without_one_is_recomputed():
    """Runs written before intervals were kept have no accuracy_ci95: the interval comes back from
    the confusion matrix, equal to the one a new run stores."""
    from reclor_lab.metrics import accuracy_interval, compute_classification_metrics

    new = compute_classification_metrics([0, 1, 2, 3, 0, 0, 1], [0, 1, 2, 0, 1, 0, 1])
    old = {k: v for k, v in new.items() if k != "accuracy_ci95"}
    assert accuracy_interval(new) == tuple(new["accuracy_ci95"])
    assert accuracy_interval(old) == pytest.approx(new["accuracy_ci95"])
    with pytest.raises(ValueError, match="re-evaluate"):
        accuracy_interval({"accuracy": 0.5})
