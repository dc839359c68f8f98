"""Linear probes: scores recomputed with scikit-learn, patient bootstrap, and the regularisation search."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from acula_eval.probes import run_probe
from acula_eval.tasks import SplitPolicy, make_splits


def test_leave_one_subject_out_regression_scores_every_subject():
    from acula_eval.tasks import TaskData, get_task

    # Subjects with one and with several recordings: each held-out subject is one split and one score.
    groups = np.array(["a", "a", "a", "b", "c", "d", "d", "e", "f", "g", "h", "i"], dtype=object)
    labels = np.linspace(10, 20, len(groups))
    data = TaskData(spec=get_task("nosemic_rr"), paths=[f"/x/{i}.wav" for i in range(len(groups))], labels=labels,
                    classes=[], groups=groups, known_groups=np.ones(len(groups), bool), rows=[{}] * len(groups))
    splits = make_splits(data, SplitPolicy(kind="leave_one_group_out"))
    features = np.c_[labels + np.random.default_rng(0).normal(0, 1.0, len(groups)), np.ones(len(groups))]
    result = run_probe(features, data, splits, bootstrap_samples=0)
    assert len(result.scores) == len(set(groups)) == result.extra["scored_splits"]


def test_bootstrap_resamples_patients_not_recordings():
    from acula_eval.probes import score_predictions

    rng = np.random.default_rng(0)
    # 12 patients with 10 near-identical recordings each: 12 independent observations, not 120.
    patient_label = np.arange(12) % 2
    patient_score = rng.normal(size=12) + 0.3 * patient_label
    labels, scores = np.repeat(patient_label, 10), np.repeat(patient_score, 10) + rng.normal(0, 1e-3, 120)
    groups = np.repeat([f"p{i}" for i in range(12)], 10)
    flat = score_predictions(labels, np.c_[1 - scores, scores], classification=True, bootstrap_samples=300)
    grouped = score_predictions(labels, np.c_[1 - scores, scores], classification=True, bootstrap_samples=300,
                                groups=groups)
    assert grouped["roc_auc"] == flat["roc_auc"]
    assert (grouped["roc_auc_ci_high"] - grouped["roc_auc_ci_low"]) > 1.5 * (flat["roc_auc_ci_high"] - flat["roc_auc_ci_low"])
    values = np.repeat(rng.normal(size=12), 10)
    flat = score_predictions(values, values + np.repeat(rng.normal(size=12), 10), classification=False,
                             bootstrap_samples=300)
    grouped = score_predictions(values, values + np.repeat(rng.normal(size=12), 10), classification=False,
                                bootstrap_samples=300, groups=groups)
    assert (grouped["mae_ci_high"] - grouped["mae_ci_low"]) > 1.5 * (flat["mae_ci_high"] - flat["mae_ci_low"])


def test_probe_separable_random_and_regression():
    rng = np.random.default_rng(0)
    from acula_eval.tasks import TaskData, get_task

    spec = get_task("pascal_murmur")
    labels = np.arange(60) % 2
    groups = np.array([f"g{i // 2}" for i in range(60)], dtype=object)
    data = TaskData(spec=spec, paths=[f"/x/{i}.wav" for i in range(60)], labels=labels, classes=["normal", "murmur"],
                    groups=groups, known_groups=np.ones(60, bool), rows=[{}] * 60)
    separable = rng.normal(size=(60, 8)) + 3.0 * labels[:, None]
    splits = make_splits(data, SplitPolicy(kind="group_kfold"), seeds=range(5))
    result = run_probe(separable, data, splits, bootstrap_samples=100)
    assert result.mean > 0.95 and result.pooled["roc_auc_ci_low"] > 0.8
    noise_features = rng.normal(size=(60, 8))
    noise = run_probe(noise_features, data, splits, bootstrap_samples=100)
    assert noise.pooled["roc_auc_ci_low"] < 0.5 < noise.pooled["roc_auc_ci_high"] + 0.2
    # each split's AUROC recomputed with scikit-learn alone (standardised logistic regression at the C the probe
    # chose), and the mean and population std over the five splits
    expected = []
    for split, strength in zip(splits, noise.extra["regularisation"]):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=strength, solver="newton-cholesky", max_iter=500))
        probe.fit(noise_features[split.train], labels[split.train])
        expected.append(roc_auc_score(labels[split.test], probe.predict_proba(noise_features[split.test])[:, 1]))
    np.testing.assert_allclose(noise.scores, expected, rtol=1e-6)
    assert noise.mean == pytest.approx(np.mean(expected)) and noise.std == pytest.approx(np.std(expected))
    assert noise.std > 0.01  # five different splits of noise do not score alike

    regression = TaskData(spec=get_task("nosemic_rr"), paths=[f"/x/{i}.wav" for i in range(30)],
                          labels=np.linspace(10, 20, 30), classes=[], groups=np.array([f"u{i % 6}" for i in range(30)],
                          dtype=object), known_groups=np.ones(30, bool), rows=[{}] * 30)
    features = np.c_[regression.labels + rng.normal(0, 0.1, 30), rng.normal(size=(30, 3))]
    result = run_probe(features, regression, make_splits(regression), bootstrap_samples=100)
    assert result.metric == "mae" and result.pooled["mae"] < 0.5 < np.abs(regression.labels - 15).mean()
    assert "mape" in result.pooled


# --- the regularisation search -----------------------------------------------------------------------------------


def _hand_search(features, targets, groups, classification, seed, grid):
    """The probe's former hand-written search, transcribed independently of `acula_eval.probes`: grouped 3-fold
    inner folds (stratified for classification), folds whose training part holds one class skipped, mean log-loss
    (probabilities over every training-side class, clipped at 1e-7 and renormalised) or MAE per value, the first
    minimum chosen. Returns `(chosen value, mean loss per value)`, or `(grid[0], None)` without a search."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import log_loss, mean_absolute_error
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    if len(grid) < 2 or len(np.unique(groups)) < 3:
        return grid[0], None
    if classification:
        if np.unique(targets, return_counts=True)[1].min() < 3:
            return grid[0], None
        splitter = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=seed)
    else:
        splitter = GroupKFold(n_splits=3, shuffle=True, random_state=seed)
    labels = np.unique(targets)
    losses = []
    for value in grid:
        fold_losses = []
        for train, valid in splitter.split(features, targets, groups):
            if classification:
                if len(np.unique(targets[train])) < 2:
                    continue
                model = make_pipeline(StandardScaler(), LogisticRegression(C=value, solver="newton-cholesky",
                                                                           max_iter=500, random_state=seed))
                model.fit(features[train], targets[train])
                probabilities = np.zeros((len(valid), len(labels)))
                probabilities[:, np.searchsorted(labels, model.classes_)] = model.predict_proba(features[valid])
                probabilities = np.clip(probabilities, 1e-7, 1.0)
                probabilities /= probabilities.sum(axis=1, keepdims=True)
                fold_losses.append(log_loss(targets[valid], probabilities, labels=labels))
            else:
                model = make_pipeline(StandardScaler(), Ridge(alpha=value)).fit(features[train], targets[train])
                fold_losses.append(mean_absolute_error(targets[valid], model.predict(features[valid])))
        losses.append(np.mean(fold_losses) if fold_losses else np.inf)
    return grid[int(np.argmin(losses))], np.array(losses)


def _search_case(seed):
    """A seeded training side: binary, three-class (one class in a single patient, so that an inner fold's training
    part misses it) or regression, weakly to strongly separable."""
    rng = np.random.default_rng(seed)
    kind = ("binary", "three_class", "regression")[seed % 3]
    n = int(rng.integers(30, 80))
    groups = np.array([f"p{i}" for i in rng.integers(0, max(4, n // int(rng.integers(1, 4))), n)], dtype=object)
    signal = float(rng.choice([0.0, 0.3, 1.0, 4.0]))
    if kind == "regression":
        targets = rng.normal(15, 3, n)
        features = np.c_[signal * targets[:, None] + rng.normal(size=(n, 1)), rng.normal(size=(n, 5))]
        return features, targets, groups, False
    classes = 2 if kind == "binary" else 3
    targets = rng.integers(0, classes, n)
    if kind == "three_class":  # the rare class is one patient's: the inner fold testing it trains without it
        targets[targets == 2] = 0
        groups[:4], targets[:4] = "rare", 2
    features = rng.normal(size=(n, 6)) + signal * np.eye(6)[targets % 6]
    return features, targets, groups, True


@pytest.mark.parametrize("seed", range(12))
def test_grid_search_chooses_what_the_hand_written_search_chose(seed):
    from acula_eval.probes import (
        DEFAULT_ALPHA_GRID,
        DEFAULT_C_GRID,
        fit_probe,
        search_regularisation,
    )

    features, targets, groups, classification = _search_case(seed)
    grid = list(DEFAULT_C_GRID if classification else DEFAULT_ALPHA_GRID)
    expected, losses = _hand_search(features, targets, groups, classification, seed, grid)
    model, chosen = fit_probe(features, targets, groups, classification=classification, seed=seed)
    assert chosen == expected
    search = search_regularisation(features, targets, groups, classification=classification, seed=seed)
    if losses is None:
        assert search is None
    else:  # the same mean loss for every value of the grid (inf where no inner fold could fit)
        finite = np.isfinite(losses)
        np.testing.assert_allclose(-search.cv_results_["mean_test_score"][finite], losses[finite], rtol=1e-12)
    # the returned probe is the one refitted on the whole training side at the chosen strength
    if classification:
        refit = make_pipeline(StandardScaler(), LogisticRegression(C=chosen, solver="newton-cholesky", max_iter=500))
        np.testing.assert_allclose(model.predict_proba(features), refit.fit(features, targets).predict_proba(features),
                                   rtol=1e-10, atol=1e-12)
    else:
        from sklearn.linear_model import Ridge

        refit = make_pipeline(StandardScaler(), Ridge(alpha=chosen)).fit(features, targets)
        np.testing.assert_allclose(model.predict(features), refit.predict(features), rtol=1e-10)


def test_a_fixed_strength_or_a_tiny_training_side_skips_the_search():
    from acula_eval.probes import fit_probe, search_regularisation

    features, targets, groups, _ = _search_case(0)
    assert fit_probe(features, targets, groups, classification=True, grid=[0.5])[1] == 0.5
    assert search_regularisation(features, targets, groups, classification=True, grid=[0.5]) is None
    two_patients = np.array(["a", "b"] * (len(targets) // 2) + ["a"] * (len(targets) % 2), dtype=object)
    assert search_regularisation(features, targets, two_patients, classification=True) is None
    assert fit_probe(features, targets, two_patients, classification=True, grid=[0.01, 1.0])[1] == 0.01


def test_inner_folds_that_cannot_fit_a_classifier_are_left_out_as_before():
    from acula_eval.probes import (
        DEFAULT_C_GRID,
        fit_probe,
        inner_folds,
        search_regularisation,
    )

    rng = np.random.default_rng(5)
    groups = np.array(["positive"] * 4 + [f"p{i % 9}" for i in range(36)], dtype=object)
    targets = np.r_[np.ones(4, int), np.zeros(36, int)]  # the positive class is one patient's
    features = rng.normal(size=(40, 4)) + targets[:, None]
    folds = inner_folds(targets, groups, True, seed=0)
    assert len(folds) == 2  # the fold testing that patient trains on one class only
    expected, losses = _hand_search(features, targets, groups, True, 0, list(DEFAULT_C_GRID))
    assert fit_probe(features, targets, groups, classification=True, seed=0)[1] == expected
    search = search_regularisation(features, targets, groups, classification=True, seed=0)
    np.testing.assert_allclose(-search.cv_results_["mean_test_score"], losses, rtol=1e-12)


def test_far_off_test_recordings_keep_their_ranking_instead_of_saturated_probabilities():
    """Test recordings far from the probe's training data (another source) get probabilities that round to exactly 1:
    ranked by them, every recording ties and the AUROC is 0.5. The probe's scores are log-probabilities from the
    decision function, which keep the ranking."""
    from acula_eval.probes import class_log_probabilities, fit_probe
    from acula_eval.tasks import Split, TaskData, get_task

    rng = np.random.default_rng(0)
    labels = np.arange(80) % 2
    features = rng.normal(size=(80, 3))
    features[:40, 0] += 2.0 * labels[:40]  # training side: an ordinary signal
    features[40:, 0] = 60.0 + 3.0 * labels[40:] + rng.normal(size=40)  # test side: far off, same direction
    data = TaskData(spec=get_task("heart_transfer_from_yaseen"), paths=[f"/x/{i}.wav" for i in range(80)],
                    labels=labels, classes=["normal", "abnormal"], groups=np.array([f"g{i}" for i in range(80)], object),
                    known_groups=np.ones(80, bool), rows=[{}] * 80)
    split = Split("s", np.arange(40), np.arange(40, 80), 0)
    model, _ = fit_probe(features[:40], labels[:40], data.groups[:40], classification=True, grid=[1.0])
    assert np.all(model.predict_proba(features[40:])[:, 1] == 1.0)  # saturated: every test recording ties
    result = run_probe(features, data, [split], grid=[1.0], bootstrap_samples=0)
    expected = roc_auc_score(labels[40:], model.decision_function(features[40:]))
    assert expected > 0.9 and result.mean == pytest.approx(expected)
    # Log-probabilities: a log-softmax over the classes, ordered like the decision function.
    log_probabilities = class_log_probabilities(model, features[:40], 2)
    np.testing.assert_allclose(np.exp(log_probabilities), model.predict_proba(features[:40]), rtol=1e-6, atol=1e-12)
    # Far from the decision boundary the winner's log-probability is still exact (-exp(-z) for a binary logit z).
    from acula_eval.probes import _log_softmax

    np.testing.assert_allclose(_log_softmax(np.array([[0.0, 100.0], [3.0, -1.0]])),
                               [[-100.0 - np.exp(-100.0), -np.exp(-100.0)], [-np.log1p(np.exp(-4.0)),
                                                                            -4.0 - np.log1p(np.exp(-4.0))]], rtol=1e-12)
