"""Intervals, calibration and the error analysis, on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reclor_lab.results.analysis import (
    accuracy_by_type,
    expected_calibration_error,
    format_test_summary,
    most_confident_wrong,
    position_bias,
    reliability,
    summarize_test_predictions,
    val_analysis,
)
from reclor_lab.metrics import bootstrap_interval, format_accuracy, wilson_interval


def _probs(top: float, pred: int) -> list[float]:
    rest = (1 - top) / 3
    return [top if c == pred else rest for c in range(4)]


# --- intervals ------------------------------------------------------------------------------------

def test_wilson_interval_matches_the_formula_and_known_values():
    # textbook values (Newcombe 1998, Table I): 0/10 → [0, 0.2775]; 5/10 → [0.2366, 0.7634]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson_interval(300, 500)
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.6 * 0.4 / 500), rel=0.01)  # ≈ Wald for large n
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    for bad in ((1, 0), (11, 10), (-1, 10)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_bootstrap_interval_is_deterministic_and_covers_the_estimate():
    rng = np.random.default_rng(0)
    right = (rng.random(500) < 0.6).astype(float)
    lo, hi = bootstrap_interval(np.mean, right, seed=3)
    assert (lo, hi) == bootstrap_interval(np.mean, right, seed=3)
    assert lo < right.mean() < hi
    w_lo, w_hi = wilson_interval(int(right.sum()), 500)
    assert lo == pytest.approx(w_lo, abs=0.01) and hi == pytest.approx(w_hi, abs=0.01)
    with pytest.raises(ValueError, match="one length"):
        bootstrap_interval(np.mean, [1, 2], [1])


def test_format_accuracy():
    assert format_accuracy(0.5, [0.25, 0.75]) == "0.500 [0.250, 0.750]"
    assert format_accuracy(0.5, None) == "0.500"


# --- calibration --------------------------------------------------------------------------------------

def test_ece_on_hand_made_cases():
    labels = [0] * 10
    assert expected_calibration_error([_probs(1.0, 0)] * 10, labels) == 0.0          # sure and right
    assert expected_calibration_error([_probs(0.9, 1)] * 10, labels) == pytest.approx(0.9)  # sure and wrong
    # 80 % confident, right 8 times in 10: calibrated
    eight = [_probs(0.8, 0)] * 8 + [_probs(0.8, 1)] * 2
    assert expected_calibration_error(eight, labels) == pytest.approx(0.0)
    # two bins: 5 at 0.95 all right (gap 0.05), 5 at 0.45 none right (gap 0.45) → (0.05 + 0.45) / 2
    mixed = [_probs(0.95, 0)] * 5 + [_probs(0.45, 2)] * 5
    assert expected_calibration_error(mixed, labels) == pytest.approx(0.25)


def test_reliability_bins():
    rows = reliability([_probs(0.95, 0), _probs(0.95, 1), _probs(0.45, 0)], [0, 0, 0])
    assert len(rows) == 10 and sum(r["count"] for r in rows) == 3
    assert rows[9]["count"] == 2 and rows[9]["accuracy"] == 0.5 and rows[9]["confidence"] == pytest.approx(0.95)
    assert rows[4]["count"] == 1 and rows[4]["accuracy"] == 1.0
    assert rows[0]["count"] == 0 and rows[0]["accuracy"] is None
    with pytest.raises(ValueError, match="shape"):
        reliability([[0.5, 0.5]], [0])


# --- positions, types, mistakes -------------------------------------------------------------------------

def test_position_bias_and_accuracy_by_type():
    bias = position_bias([1, 1, 1, 1], [0, 1, 2, 3])
    assert bias["B"]["predicted_share"] == 1.0 and bias["B"]["gold_share"] == 0.25
    assert bias["A"] == {"predicted": 0, "predicted_share": 0.0, "gold": 1, "gold_share": 0.25}
    by = accuracy_by_type([0, 1, 2, 0, 0], [0, 1, 3, 1, 0], [3, 3, 3, 16, 16])
    assert list(by) == ["Weaken", "Others"]
    assert (by["Weaken"]["n"], by["Weaken"]["correct"]) == (3, 2)
    assert by["Others"]["accuracy_ci95"] == list(wilson_interval(1, 2))


def test_most_confident_wrong_orders_by_confidence():
    probs = [_probs(0.9, 1), _probs(0.99, 0), _probs(0.6, 2), _probs(0.95, 3), _probs(0.9, 1)]
    assert most_confident_wrong(probs, [0, 0, 0, 0, 0], k=3) == [3, 0, 4]
    assert most_confident_wrong(probs, [1, 0, 2, 3, 1]) == []


def test_val_analysis_collects_everything():
    records = [{"id_string": f"v{i}", "label": i % 4, "question": q}
               for i, q in enumerate(["Which one of the following most seriously weakens the argument?",
                                      "The main point of the argument is that"] * 4)]
    probs = [_probs(0.7, 0)] * 8
    out = val_analysis(records, probs)
    assert set(out["accuracy_by_type"]) == {"Weaken", "Conclusion/Main Point"}
    assert out["types_source"] == "inferred from the question stem"
    assert out["position_bias"]["A"]["predicted"] == 8
    assert out["calibration"]["ece"] == pytest.approx(0.7 - 0.25)
    assert [w["id_string"] for w in out["most_confident_wrong"]] == ["v1", "v2", "v3", "v5", "v6", "v7"]


def test_test_summary_easy_hard_only_for_the_official_size():
    records = [{"id_string": f"t{i}", "question": "x", "question_type": i % 17} for i in range(1000)]
    preds = [0] * 440 + [3] * 560
    s = summarize_test_predictions(records, preds)
    assert s["parts"] == {"EASY": {"A": 440, "B": 0, "C": 0, "D": 0}, "HARD": {"A": 0, "B": 0, "C": 0, "D": 560}}
    assert s["types_source"] == "official" and len(s["by_type"]) == 17
    assert sum(sum(v.values()) for v in s["by_type"].values()) == 1000
    assert "EASY" in format_test_summary(s)
    small = summarize_test_predictions(records[:10], preds[:10])
    assert small["parts"] == {} and "1,000-record" in small["parts_note"]
    with pytest.raises(ValueError, match="predictions"):
        summarize_test_predictions(records[:3], preds[:2])


def test_easy_hard_of_the_kits_data_and_of_the_official_test_file():
    from reclor_lab.results.analysis import easy_hard

    cued = {"answers": ["Probably, a.", "In every case, b.", "Invariably, c.", "Without exception, d."]}
    bare = {"answers": ["a.", "b.", "c.", "d."]}
    assert easy_hard([cued, bare, cued]) == ["EASY", "HARD", "EASY"]
    official_test = [dict(bare, question_type=0)] * 1000
    assert easy_hard(official_test) == ["EASY"] * 440 + ["HARD"] * 560
    assert easy_hard([dict(bare, label=0)] * 1000) is None  # a labelled split of that size: no split
    assert easy_hard([bare] * 10) is None
    test_records = [dict(cued, question="x", question_type=0), dict(bare, question="x", question_type=0)]
    s = summarize_test_predictions(test_records, [0, 3])
    assert s["parts"] == {"EASY": {"A": 1, "B": 0, "C": 0, "D": 0}, "HARD": {"A": 0, "B": 0, "C": 0, "D": 1}}
    probs = [_probs(0.7, 0), _probs(0.7, 0)]
    by_part = val_analysis([dict(cued, label=0, id_string="v0", question="x"),
                            dict(bare, label=1, id_string="v1", question="x")], probs)["accuracy_by_part"]
    assert by_part["EASY"]["accuracy"] == 1.0 and by_part["HARD"]["accuracy"] == 0.0
