"""Macro precision / recall / F1 and the confusion matrix for single-label multi-class problems.

Shipped with reclor-lab so it loads offline; numpy only. A class that is never predicted has
precision 0 (0/0 counted as 0, scikit-learn's ``zero_division=0``), so it pulls the macro average
down: a model that always answers "A" cannot hide behind its accuracy. The macro average runs over
the classes that occur in the references or the predictions (scikit-learn's default): a class
absent from both has no precision or recall to speak of (reported as 0 per class, left out of
the mean), so a perfect score on a small sample stays 1.0.

>>> import evaluate
>>> m = evaluate.load("reclor_lab/metric_modules/multiclass")       # doctest: +SKIP
>>> m.compute(predictions=[0, 0, 1], references=[0, 1, 1], num_labels=2)["confusion_matrix"]  # doctest: +SKIP
[[1, 0], [1, 1]]
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Macro-averaged precision, recall and F1 over all labels, plus the confusion matrix."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels in [0, num_labels).
    references (list of int): true labels in [0, num_labels).
    num_labels (int): number of classes (the size of the confusion matrix).
Returns:
    precision_macro, recall_macro, f1_macro (float): unweighted means over the classes that
        occur in the references or the predictions.
    precision, recall, f1 (list of float): per class.
    confusion_matrix (list of list of int): num_labels x num_labels, rows = true label,
        columns = predicted label.
"""
_CITATION = ""


def _safe_divide(num, den):
    # 0/0 -> 0: an empty class scores 0 rather than NaN (scikit-learn's zero_division=0).
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


class Multiclass(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_labels=4):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        for name, values in (("predictions", predictions), ("references", references)):
            if values.size and (values.min() < 0 or values.max() >= num_labels):
                raise ValueError(
                    f"{name} must lie in [0, {num_labels}); got values {sorted(set(values.tolist()))}"
                )
        cm = np.zeros((num_labels, num_labels), dtype=np.int64)
        np.add.at(cm, (references, predictions), 1)  # rows: true label, columns: predicted
        true_pos = np.diag(cm).astype(np.float64)
        predicted = cm.sum(axis=0).astype(np.float64)
        actual = cm.sum(axis=1).astype(np.float64)
        precision = _safe_divide(true_pos, predicted)
        recall = _safe_divide(true_pos, actual)
        f1 = _safe_divide(2 * precision * recall, precision + recall)
        present = (actual + predicted) > 0
        if not present.any():
            raise ValueError("macro scores of zero examples are undefined; pass at least one prediction")
        return {
            "precision_macro": float(precision[present].mean()),
            "recall_macro": float(recall[present].mean()),
            "f1_macro": float(f1[present].mean()),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "confusion_matrix": cm.tolist(),
        }
