"""The loss: cross-entropy weighted by answer-position frequency (the reference's loss).

One function serves the manual loop (:mod:`reclor_lab.train`) and the Trainer path
(:mod:`reclor_lab.runs.trainer`), so both optimise exactly the same objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the batch, each example weighted by its label's class weight.

    ``logits``: ``(batch, 4)``; ``labels``: ``(batch,)`` ints 0-3; ``weights``: ``(4,)`` from
    :func:`reclor_lab.data.class_weights` (None: plain cross-entropy). As in
    ``torch.nn.CrossEntropyLoss(weight=w)``, the mean divides by the sum of the weights of the
    batch's labels, so the loss scale does not depend on which labels a batch happens to hold.

    >>> weighted_cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3]))  # uniform logits: ln 4
    tensor(1.3863)
    """
    logits = logits.float()  # a bf16 log-softmax loses digits the loss curve can show
    if weights is not None:
        weights = weights.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, labels.to(logits.device), weight=weights)
