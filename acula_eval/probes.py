"""Linear probes on frozen embeddings: standardisation + logistic regression (classification) or ridge (regression),
trained on patient-grouped splits, scored through acula's `evaluate` metric modules. The regularisation strength is
chosen by scikit-learn's `GridSearchCV` on patient-grouped inner folds of each split's training side."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import log_loss
from sklearn.model_selection import GridSearchCV, GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from transformers.utils import logging

from .metrics import load_metric
from .tasks import Split, TaskData

logger = logging.get_logger(__name__)

DEFAULT_C_GRID = (0.001, 0.01, 0.1, 1.0)
DEFAULT_ALPHA_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)
INNER_FOLDS = 3
# BLAS threads while probes are fitted: the matrices are small (at most a few thousand rows of a few hundred
# dimensions), where extra BLAS threads only contend, badly so on a shared machine (a Whisper-size probe on 2,300
# recordings took 44 s with 2 threads and 12 s with 1 on 2 busy cores).
PROBE_BLAS_THREADS = 1
# The log-probability of a class a probe never saw (its training side lacked it): far below any real one.
LOG_PROBABILITY_FLOOR = float(np.log(1e-300))


@dataclass
class ProbeResult:
    """
    Scores of one (model, task) probe.

    Args:
        task (`str`), model (`str`): names.
        metric (`str`): `"roc_auc"` or `"mae"`.
        scores (`list[float]`): the metric on each split's test side (one per seed / fold).
        mean (`float`), std (`float`): over `scores` (population std, ddof=0).
        pooled (`dict`): the metric with its bootstrap confidence interval on the pooled test predictions (each
            test recording's prediction averaged over the splits that tested it).
        extra (`dict`): further numbers (accuracy, MAPE, chosen regularisation).
        test_indices (`np.ndarray`): recordings with a pooled prediction; `test_scores` (`np.ndarray`): their
            pooled class log-probabilities (classification, [`class_log_probabilities`] averaged over the splits)
            or predicted values (regression).
    """

    task: str
    model: str
    metric: str
    scores: list[float]
    mean: float
    std: float
    pooled: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    test_indices: np.ndarray | None = None
    test_scores: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "model": self.model, "metric": self.metric, "scores": self.scores,
                "mean": self.mean, "std": self.std, "pooled": self.pooled, **self.extra}


def inner_folds(
    targets: np.ndarray, groups: np.ndarray, classification: bool, seed: int, n_splits: int = INNER_FOLDS
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """
    Patient-grouped inner folds of a probe's training side for choosing the regularisation:
    `StratifiedGroupKFold` (classification) or `GroupKFold` (regression), shuffled with `seed`. Folds whose training
    part holds a single class cannot fit a classifier and are left out.

    Returns:
        The `(train, valid)` index pairs, or `None` when the training side is too small for a search (fewer groups
        than folds, or a class with fewer recordings than folds).
    """
    if len(np.unique(groups)) < n_splits:
        return None
    if classification:
        if np.unique(targets, return_counts=True)[1].min() < n_splits:
            return None
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    else:
        splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(targets)), targets, groups))
    if classification:
        folds = [(train, valid) for train, valid in folds if len(np.unique(targets[train])) >= 2]
    return folds


def _estimator(classification: bool, strength: float, seed: int, solver: str = "newton-cholesky") -> Pipeline:
    if classification:
        return make_pipeline(StandardScaler(), LogisticRegression(C=strength, solver=solver, max_iter=500, random_state=seed))
    return make_pipeline(StandardScaler(), Ridge(alpha=strength))


def _strength_parameter(classification: bool) -> str:
    return "logisticregression__C" if classification else "ridge__alpha"


def _negative_log_loss(labels: np.ndarray):
    """A `GridSearchCV` scorer: minus the log-loss over every class of the probe's training side. A validation fold's
    probe may not know every class (its training part lacked one): its probabilities are placed in their columns,
    clipped at 1e-7 and renormalised, so that a class it never saw costs a finite, large loss."""

    def score(model: Pipeline, features: np.ndarray, targets: np.ndarray) -> float:
        probabilities = np.zeros((len(targets), len(labels)))
        probabilities[:, np.searchsorted(labels, model.classes_)] = model.predict_proba(features)
        probabilities = np.clip(probabilities, 1e-7, 1.0)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        return -log_loss(targets, probabilities, labels=labels)

    return score


def search_regularisation(
    features: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray,
    *,
    classification: bool,
    seed: int = 0,
    grid: Sequence[float] | None = None,
    solver: str = "newton-cholesky",
) -> GridSearchCV | None:
    """
    The regularisation search of a probe: `GridSearchCV` over `grid` on the grouped [`inner_folds`], scored by
    log-loss (classification) or MAE (regression), refitted on the whole training side with the best value (the
    first of the grid among equal scores).

    Returns:
        The fitted `GridSearchCV`, or `None` when there is nothing to search (one value, or no usable inner folds).
    """
    grid = list(grid or (DEFAULT_C_GRID if classification else DEFAULT_ALPHA_GRID))
    folds = inner_folds(targets, groups, classification, seed) if len(grid) > 1 else None
    if not folds:
        return None
    scoring = _negative_log_loss(np.unique(targets)) if classification else "neg_mean_absolute_error"
    search = GridSearchCV(_estimator(classification, grid[0], seed, solver), {_strength_parameter(classification): grid},
                          scoring=scoring, cv=folds, error_score="raise")
    return search.fit(features, targets)


def fit_probe(
    features: np.ndarray,
    targets: np.ndarray,
    groups: np.ndarray,
    *,
    classification: bool,
    seed: int = 0,
    grid: Sequence[float] | None = None,
    solver: str = "newton-cholesky",
) -> tuple[Pipeline, float]:
    """
    Fit a standardised linear probe, choosing the regularisation by grouped 3-fold cross-validation on the training
    side (log-loss or MAE, [`search_regularisation`]); the inner folds depend on `seed`.

    Args:
        features (`np.ndarray`): `(n, dim)` embeddings.
        targets (`np.ndarray`): class indices or values.
        groups (`np.ndarray`): patient ids (inner folds never split a patient).
        classification (`bool`): logistic regression if True, ridge otherwise.
        seed (`int`): seed of the inner folds.
        grid (`Sequence[float]`, *optional*): C values (classification) or alphas (ridge); one value skips the search,
            and so does a training side too small for grouped inner folds (the first value is used).
        solver (`str`, *optional*, defaults to `"newton-cholesky"`): the logistic regression's solver (the same
            L2-regularised objective either way; `"lbfgs"` is much faster with far fewer rows than dimensions).

    Returns:
        `(fitted pipeline, chosen value)`.
    """
    grid = list(grid or (DEFAULT_C_GRID if classification else DEFAULT_ALPHA_GRID))
    search = search_regularisation(features, targets, groups, classification=classification, seed=seed, grid=grid,
                                   solver=solver)
    if search is None:
        return _estimator(classification, grid[0], seed, solver).fit(features, targets), grid[0]
    return search.best_estimator_, search.best_params_[_strength_parameter(classification)]


def class_log_probabilities(model: Pipeline, features: np.ndarray, num_classes: int) -> np.ndarray:
    """
    `(n, num_classes)` log class probabilities of a fitted classification probe, computed as the log-softmax of its
    decision function (a binary probe's logits are `[0, z]`). Unlike `predict_proba`, they never saturate:
    recordings far from the probe's training data (another source, another device) get probabilities that round to
    exactly 0 or 1, which ties them all and turns an informative ranking into an AUROC of 0.5; their log-probabilities
    keep the ranking of the decision function. Classes the probe never saw get [`LOG_PROBABILITY_FLOOR`].
    """
    scores = np.asarray(model.decision_function(features), dtype=np.float64)
    logits = np.stack([np.zeros_like(scores), scores], axis=1) if scores.ndim == 1 else scores
    result = np.full((len(features), num_classes), LOG_PROBABILITY_FLOOR)
    result[:, model.classes_] = _log_softmax(logits)
    return result


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax that stays exact for the winning class: with `m` the row's largest logit and `s` the sum
    of `exp(z_j - m)` over the other classes, `log p_k = (z_k - m) - log1p(s)` (the usual `z - logsumexp(z)` rounds
    the winner's log-probability to exactly 0 once the others are some 37 logits behind, and ties it again)."""
    rows = np.arange(len(logits))
    top = logits.argmax(axis=1)
    shifted = logits - logits[rows, top][:, None]
    others = np.exp(shifted)
    others[rows, top] = 0.0
    return shifted - np.log1p(others.sum(axis=1))[:, None]


def _compute(metric_name: str, config_name: str | None = None, **kwargs) -> dict[str, float]:
    return load_metric(metric_name, config_name).compute(**kwargs)


def score_predictions(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    classification: bool,
    num_classes: int = 2,
    bootstrap_samples: int = 0,
    confidence_level: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, float]:
    """
    AUROC (binary, or macro one-vs-rest) and accuracy, or MAE and MAPE, through acula's metric modules.

    Args:
        labels (`np.ndarray`): class indices or true values.
        scores (`np.ndarray`): `(n, num_classes)` class scores (probabilities or log-probabilities: AUROC ranks
            them, accuracy takes their argmax), or `(n,)` predicted values.
        classification (`bool`): which family of metrics.
        num_classes (`int`): number of classes of the task.
        bootstrap_samples (`int`): resamples for the confidence interval (0: none).
        confidence_level (`float`): coverage of the interval.
        seed (`int`): seed of the resampling.
        groups (`np.ndarray`, *optional*): patient of each prediction: the bootstrap resamples patients, not
            recordings (several recordings of one patient are not independent).

    Returns:
        `dict` with `roc_auc` (+ `roc_auc_ci_low/high`) and `accuracy`, or `mae` (+ CI) and `mape`.
    """
    bootstrap = {"bootstrap_samples": bootstrap_samples, "confidence_level": confidence_level, "seed": seed}
    if bootstrap_samples and groups is not None:
        bootstrap["groups"] = [str(group) for group in groups]
    if classification:
        if num_classes == 2:
            result = _compute("roc_auc", "binary", references=labels.tolist(),
                              prediction_scores=scores[:, 1].tolist(), **bootstrap)
        else:
            result = _compute("roc_auc", "multiclass", references=labels.tolist(),
                              prediction_scores=scores.tolist(), **bootstrap)
        result["accuracy"] = float(np.mean(scores.argmax(axis=1) == labels))
        return result
    result = _compute("mae", references=labels.tolist(), predictions=scores.tolist(), **bootstrap)
    if np.all(labels != 0):
        result.update(_compute("mape", references=labels.tolist(), predictions=scores.tolist()))
    return result


def run_probe(
    features: np.ndarray,
    data: TaskData,
    splits: Sequence[Split],
    *,
    model_name: str = "model",
    grid: Sequence[float] | None = None,
    bootstrap_samples: int = 1000,
    confidence_level: float = 0.95,
) -> ProbeResult:
    """
    Train and score one probe per split; pool the test predictions for a bootstrap confidence interval.

    Args:
        features (`np.ndarray`): `(len(data), dim)` embeddings in task order.
        data (`TaskData`): the task.
        splits (`Sequence[Split]`): from [`make_splits`]; the same for every model.
        model_name (`str`): recorded in the result.
        grid (`Sequence[float]`, *optional*): regularisation grid (see [`fit_probe`]).
        bootstrap_samples (`int`, defaults to 1000), confidence_level (`float`, defaults to 0.95): for the CI.

    Returns:
        [`ProbeResult`].
    """
    if features.shape[0] != len(data):
        raise ValueError(f"Task {data.spec.name!r}: {features.shape[0]} embeddings for {len(data)} recordings.")
    if not np.isfinite(features).all():
        raise ValueError(f"Task {data.spec.name!r}, model {model_name!r}: embeddings contain NaN or Inf.")
    classification = data.spec.kind == "classification"
    num_classes = len(data.classes) if classification else 0
    width = num_classes if classification else 1
    sums = np.zeros((len(data), width))
    counts = np.zeros(len(data))
    scores, accuracies, chosen = [], [], []
    per_split_mape = []
    for split in splits:
        with warnings.catch_warnings(), threadpool_limits(PROBE_BLAS_THREADS, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            model, value = fit_probe(features[split.train], data.labels[split.train], data.groups[split.train],
                                     classification=classification, seed=split.seed, grid=grid)
        chosen.append(value)
        if classification:
            predicted = class_log_probabilities(model, features[split.test], num_classes)
        else:
            predicted = model.predict(features[split.test])[:, None]
        sums[split.test] += predicted
        counts[split.test] += 1
        if classification and len(np.unique(data.labels[split.test])) < (2 if num_classes == 2 else num_classes):
            # One patient per fold (leave-one-group-out) or a test side lacking a class: AUROC is undefined there,
            # so this split enters only the pooled score (and `scored_splits` says how many did count).
            continue
        metrics = score_predictions(data.labels[split.test], predicted if classification else predicted[:, 0],
                                    classification=classification, num_classes=num_classes)
        scores.append(metrics[data.spec.metric])
        if classification:
            accuracies.append(metrics["accuracy"])
        elif "mape" in metrics:
            per_split_mape.append(metrics["mape"])
    tested = np.flatnonzero(counts)
    pooled_scores = sums[tested] / counts[tested, None]
    pooled = score_predictions(
        data.labels[tested], pooled_scores if classification else pooled_scores[:, 0], classification=classification,
        num_classes=num_classes, bootstrap_samples=bootstrap_samples, confidence_level=confidence_level,
        groups=data.groups[tested],
    )
    scored_splits = len(scores)
    if 0 < scored_splits < len(splits):
        logger.warning(f"Task {data.spec.name!r}, model {model_name!r}: only {scored_splits} of {len(splits)} splits "
                       "have every class on the test side; the mean and std are over those.")
    if not scores:  # e.g. leave-one-patient-out classification: the pooled out-of-fold predictions are the score
        scores = [pooled[data.spec.metric]]
    extra: dict[str, Any] = {"regularisation": chosen, "num_test_recordings": len(tested),
                             "num_splits": len(splits), "scored_splits": scored_splits}
    if classification:
        extra["accuracy_mean"] = float(np.mean(accuracies)) if accuracies else pooled["accuracy"]
    elif per_split_mape:
        extra["mape_mean"] = float(np.mean(per_split_mape))
    return ProbeResult(
        task=data.spec.name, model=model_name, metric=data.spec.metric, scores=[float(s) for s in scores],
        mean=float(np.mean(scores)), std=float(np.std(scores)), pooled=pooled, extra=extra,
        test_indices=tested, test_scores=pooled_scores if classification else pooled_scores[:, 0],
    )


# ---------------------------------------------------------------------------------------------------- few labels

FEW_SHOT_SEED = 20_22


def distinct_splits(splits: Sequence[Split]) -> list[tuple[int, Split]]:
    """The splits with distinct (train, test) sides, with their position (a column or transfer policy repeats one
    split per seed; only the probe seed differs)."""
    seen, distinct = set(), []
    for number, split in enumerate(splits):
        key = (np.asarray(split.train).tobytes(), np.asarray(split.test).tobytes())
        if key not in seen:
            seen.add(key)
            distinct.append((number, split))
    return distinct


def draw_few_shot(labels: np.ndarray, groups: np.ndarray, candidates: np.ndarray, per_class: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, bool] | None:
    """
    `per_class` training units of every class, drawn from `candidates`, patient-aware: `per_class` different
    patients of each class, one unit of each (chosen at random); where a class has fewer patients than that, units
    are taken round-robin over its patients (every patient once before any twice).

    Returns:
        `(indices, patient_aware)`: the drawn indices and whether every class had enough patients; `None` when a
        class has fewer than `per_class` units.
    """
    chosen, patient_aware = [], True
    for label in np.unique(labels[candidates]):
        units = candidates[labels[candidates] == label]
        if len(units) < per_class:
            return None
        by_patient: dict[str, list[int]] = {}
        for unit in units.tolist():
            by_patient.setdefault(str(groups[unit]), []).append(unit)
        patients = sorted(by_patient)
        order = [patients[i] for i in rng.permutation(len(patients))]
        queues = {patient: [by_patient[patient][i] for i in rng.permutation(len(by_patient[patient]))]
                  for patient in order}
        if len(patients) < per_class:
            patient_aware = False
        picked: list[int] = []
        while len(picked) < per_class:
            for patient in order:
                if queues[patient] and len(picked) < per_class:
                    picked.append(queues[patient].pop())
        chosen += picked
    return np.sort(np.array(chosen, dtype=np.int64)), patient_aware


def run_few_shot(
    features: np.ndarray,
    data: TaskData,
    splits: Sequence[Split],
    sizes: Sequence[int],
    *,
    draws: int = 20,
    grid: Sequence[float] | None = None,
    seed: int = FEW_SHOT_SEED,
) -> dict[str, dict[str, Any]]:
    """
    Probes fitted on a few labelled units per class (binary classification tasks), beside the full probe.

    For every size `k` and draw, `k` units of each class are drawn ([`draw_few_shot`], patient-aware) from the
    units on the probe-training side of every split (the train rows of a column, transfer or held-out K-fold
    policy), one probe is fitted on them and it predicts every unit tested by any split; where no unit is on every
    training side (a K-fold over all patients), each distinct split draws from its own training side and predicts
    its own test side. The probe is the full probe's (standardisation + logistic regression, the regularisation
    searched on grouped inner folds where the draw allows; L-BFGS, the same objective, much faster on a few rows).
    The draw's AUROC is over its pooled test predictions. The draws depend only on the task, its splits and `seed`,
    never on the embeddings, so every encoder is fitted on the same units.

    Returns:
        `{str(k): {"per_class", "draws", "scores", "mean", "std", "low", "high", "patient_aware", "drawn_from"}}`,
        or for a size a class cannot fill `{"per_class", "skipped": why}`; `low` / `high` are the 2.5th / 97.5th
        percentiles over the draws.
    """
    if data.spec.kind != "classification" or len(data.classes) != 2:
        raise ValueError(f"Task {data.spec.name!r}: few-label probes are for binary classification tasks.")
    distinct = distinct_splits(splits)
    common = functools.reduce(np.intersect1d, [np.asarray(split.train) for _, split in distinct])
    tested = np.unique(np.concatenate([np.asarray(split.test) for _, split in distinct]))
    # (name, training side to draw from, test units) of each fit per draw.
    if len(common) and len(np.unique(data.labels[common])) == 2:
        sides = [("every split's training side", common, tested)]
    else:
        sides = [(split.name, np.asarray(split.train), np.asarray(split.test)) for _, split in distinct]
    results: dict[str, dict[str, Any]] = {}
    for size in sizes:
        scores, patient_aware, skipped = [], True, None
        for draw in range(draws):
            sums, counts = np.zeros(len(data)), np.zeros(len(data))
            for number, (name, candidates, test) in enumerate(sides):
                rng = np.random.default_rng([seed, int(size), draw, number])
                drawn = draw_few_shot(data.labels, data.groups, candidates, int(size), rng)
                if drawn is None:
                    skipped = f"a class has fewer than {size} units on the probe-training side ({name})"
                    break
                train, aware = drawn
                patient_aware &= aware
                with warnings.catch_warnings(), threadpool_limits(PROBE_BLAS_THREADS, user_api="blas"):
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    model, _ = fit_probe(features[train], data.labels[train], data.groups[train],
                                         classification=True, seed=draw, grid=grid, solver="lbfgs")
                sums[test] += class_log_probabilities(model, features[test], 2)[:, 1]
                counts[test] += 1
            if skipped:
                break
            scored = np.flatnonzero(counts)
            scores.append(_compute("roc_auc", "binary", references=data.labels[scored].tolist(),
                                   prediction_scores=(sums[scored] / counts[scored]).tolist())["roc_auc"])
        if skipped:
            results[str(size)] = {"per_class": int(size), "skipped": skipped}
            continue
        low, high = np.quantile(scores, [0.025, 0.975])
        results[str(size)] = {"per_class": int(size), "draws": draws, "scores": [float(x) for x in scores],
                              "mean": float(np.mean(scores)), "std": float(np.std(scores)), "low": float(low),
                              "high": float(high), "patient_aware": patient_aware,
                              "drawn_from": [name for name, _, _ in sides]}
    return results


__all__ = [
    "DEFAULT_ALPHA_GRID",
    "DEFAULT_C_GRID",
    "FEW_SHOT_SEED",
    "LOG_PROBABILITY_FLOOR",
    "ProbeResult",
    "class_log_probabilities",
    "distinct_splits",
    "draw_few_shot",
    "fit_probe",
    "inner_folds",
    "run_few_shot",
    "run_probe",
    "score_predictions",
    "search_regularisation",
]
