"""The eval loss is over examples: the training loss's definition on the whole split at once,
whatever the evaluation batch size (the last batch shorter than the others)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reclor_lab.config import get_preset  # noqa: E402
from reclor_lab.train import evaluate, setup  # noqa: E402

N_VAL = 7  # batches of 3, 3 and 1


@pytest.fixture(scope="module")
def run():
    return setup(get_preset("tiny", train_limit=8, eval_limit=N_VAL), verbose=False)


def per_example_logits(run) -> torch.Tensor:
    """Each validation example alone (batch 1, no padding): the reference the batched pass must match."""
    rows = []
    run.model.eval()
    with torch.no_grad():
        for i in range(len(run.val_ds)):
            ex = run.val_ds[i]
            ids = torch.tensor([ex["input_ids"]])
            rows.append(run.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()[0])
    return torch.stack(rows)


@pytest.mark.parametrize("weights", [None, torch.tensor([3.0, 0.5, 1.0, 1.0])], ids=["unweighted", "weighted"])
def test_eval_loss_is_the_per_example_loss_for_uneven_batches(run, weights):
    logits = per_example_logits(run)
    labels = torch.tensor(run.val_ds["labels"])
    nll = -torch.log_softmax(logits, -1)[torch.arange(N_VAL), labels]
    w = torch.ones(4) if weights is None else weights
    expected = float((w[labels] * nll).sum() / w[labels].sum())  # without weights: nll.mean()
    run.weights = weights
    for bs in (3, N_VAL, 1):
        run.cfg = run.cfg.replace(eval_batch_size=bs)
        got = evaluate(run, run.val_ds)["eval_loss"]
        assert got == pytest.approx(expected, rel=1e-5), f"eval_batch_size {bs}"
    if weights is not None:  # what the loss was before: per-batch weighted means, weighted by batch size
        batches = [range(0, 3), range(3, 6), range(6, 7)]
        old = sum(float((w[labels[b]] * nll[b]).sum() / w[labels[b]].sum()) * len(b) for b in batches) / N_VAL
        assert abs(old - expected) > 1e-3  # the test can tell the two apart on these labels
