"""The run figures say what they claim: ln 4, val loss at the epoch ends, the majority answer."""

from __future__ import annotations

import math

import pytest

from reclor_lab.plots import majority_answer, plot_eval, plot_loss

CM0 = [[10, 0, 0, 0], [12, 0, 0, 0], [8, 0, 0, 0], [20, 0, 0, 0]]  # before training: always "A"


def history(with_ci: bool = True) -> dict:
    steps = [{"step": s, "epoch": 1 + (s - 1) // 4, "loss": 1.4 - 0.05 * s, "lr": 1e-3} for s in range(1, 9)]
    evals = [{"epoch": e, "eval_loss": loss, "accuracy": acc, "confusion_matrix": CM0}
             for e, loss, acc in ((0, 1.39, 0.2), (1, 1.1, 0.5), (2, 1.2, 0.55))]
    if with_ci:
        for e in evals:
            e["accuracy_ci95"] = [e["accuracy"] - 0.1, e["accuracy"] + 0.1]
    return {"steps": steps, "evals": evals, "epochs": []}


def test_majority_answer_reads_the_true_rows():
    assert majority_answer(CM0) == ("D", pytest.approx(0.4))


def test_loss_plot_has_val_loss_at_epoch_ends_ln4_and_labelled_epochs(tmp_path):
    fig = plot_loss(history(), save=tmp_path / "loss.png")
    ax = fig.axes[0]
    val = next(line for line in ax.get_lines() if line.get_label().startswith("val loss"))
    assert list(val.get_xdata()) == [0, 4, 8] and list(val.get_ydata()) == [1.39, 1.1, 1.2]
    ln4 = [line for line in ax.get_lines() if line.get_label().startswith("ln 4")]
    assert ln4 and ln4[0].get_ydata()[0] == pytest.approx(math.log(4))
    assert [t.get_text() for t in ax.texts] == ["end of epoch 1", "end of epoch 2"]
    assert ax.get_xlabel() and ax.get_ylabel() and (tmp_path / "loss.png").stat().st_size > 0


@pytest.mark.parametrize("with_ci", [True, False], ids=["with-interval", "older-run-without"])
def test_accuracy_plot_has_chance_and_the_majority_answer(with_ci):
    ax = plot_eval(history(with_ci)).axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "chance (25%)" in labels and "always D (40.0%)" in labels
    assert ax.get_xlabel().startswith("epoch") and ax.get_ylabel() == "accuracy"
