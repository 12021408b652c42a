"""Accuracy: correct predictions / number of examples. Shipped with reclor-lab so it loads offline.

>>> import evaluate
>>> acc = evaluate.load("reclor_lab/metric_modules/accuracy")      # doctest: +SKIP
>>> acc.compute(predictions=[0, 1, 2, 3], references=[0, 1, 1, 3])  # doctest: +SKIP
{'accuracy': 0.75}
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Fraction of examples whose predicted label equals the reference label."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
Returns:
    accuracy (float): correct / number of examples, in [0, 1].
"""
_CITATION = ""


class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        if predictions.size == 0:
            raise ValueError("accuracy of zero examples is undefined; pass at least one prediction")
        return {"accuracy": float((predictions == references).mean())}
