"""Evaluation metrics: acula's `evaluate` metric modules vs scikit-learn, and their bootstrap confidence intervals."""

import numpy as np
import pytest
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    roc_auc_score,
)

from acula_eval.metrics import load_metric


def test_roc_auc_module_matches_sklearn_binary_and_multiclass():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    scores = np.round(rng.random(80) + 0.3 * labels, 1)  # rounded: ties must count one half, as in sklearn
    result = load_metric("roc_auc", "binary").compute(references=labels.tolist(), prediction_scores=scores.tolist())
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)

    labels = np.arange(90) % 3
    probabilities = rng.dirichlet([1, 1, 1], 90)
    result = load_metric("roc_auc", "multiclass").compute(references=labels.tolist(),
                                                          prediction_scores=probabilities.tolist())
    expected = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    assert result["roc_auc"] == pytest.approx(expected, abs=1e-12)


def test_bootstrap_ci_contains_point_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 120)
    scores = rng.random(120) + 0.5 * labels
    metric = load_metric("roc_auc", "binary")
    first = metric.compute(references=labels.tolist(), prediction_scores=scores.tolist(), bootstrap_samples=300, seed=3)
    again = metric.compute(references=labels.tolist(), prediction_scores=scores.tolist(), bootstrap_samples=300, seed=3)
    assert first["roc_auc_ci_low"] < first["roc_auc"] < first["roc_auc_ci_high"]
    assert first == again
    assert first["bootstrap_samples_used"] == 300
    mae = load_metric("mae").compute(predictions=scores.tolist(), references=labels.astype(float).tolist(),
                                     bootstrap_samples=300)
    assert mae["mae_ci_low"] < mae["mae"] < mae["mae_ci_high"]


def test_regression_modules_match_sklearn():
    rng = np.random.default_rng(2)
    truth, predicted = rng.random(50) + 1.0, rng.random(50) + 1.0
    assert load_metric("mae").compute(predictions=predicted, references=truth)["mae"] == pytest.approx(
        mean_absolute_error(truth, predicted))
    assert load_metric("mape").compute(predictions=predicted, references=truth)["mape"] == pytest.approx(
        mean_absolute_percentage_error(truth, predicted))
    with pytest.raises(ValueError, match="reference"):
        load_metric("mape").compute(predictions=[1.0, 2.0], references=[0.0, 2.0])


def test_multiclass_auroc_refuses_missing_class():
    with pytest.raises(ValueError, match="every class"):
        load_metric("roc_auc", "multiclass").compute(references=[0, 1, 0, 1],
                                                     prediction_scores=[[0.5, 0.3, 0.2]] * 4)
