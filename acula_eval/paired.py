"""Paired differences between two encoders on the same test units: AUROC(model) - AUROC(reference) with a paired,
patient-level percentile bootstrap.

Both encoders are probed with the same splits, so each test unit (recording, or patient of a pooled task) has a
pooled prediction from each. One bootstrap resample draws the test patients (groups) with replacement, the same draw
for both encoders; both AUROCs are recomputed on it and their difference kept. The 95 % interval is the 2.5th and
97.5th percentile of those differences. Identical predictions give a difference of exactly 0 in every resample.

Resampling protocol (fixed, so that an independent implementation reproduces it exactly): the test groups are
sorted as strings; `rng = numpy.random.default_rng(seed)`; `draws = rng.integers(0, G, (samples, G))` for `G`
groups; resample `b` is the concatenation, over `draws[b]` in order, of each drawn group's units in their original
order (the resampling of the `roc_auc` metric module, so that with the same seed a model's own interval and its paired
difference see the same resamples). A resample that lacks a class has no AUROC and is left out for both.

The mean over several tasks resamples patients jointly: resample `b` draws, with replacement, as many patients as the
union of the tasks' test patients holds, from that union, and each task keeps every one of its patients as often as
it was drawn. A patient tested in two tasks (the CirCor tasks share their test patients) is therefore
drawn or left out in both at once, and the interval of the mean is not narrowed by treating such tasks as
independent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .metrics.roc_auc import _group_resamples, _score

DEFAULT_PAIRED_SEED = 0


@dataclass
class PairedTask:
    """
    One task's test predictions of two encoders.

    Args:
        task (`str`): the task name.
        labels (`np.ndarray`): class index of each test unit.
        model_scores (`np.ndarray`), reference_scores (`np.ndarray`): `(n, num_classes)` pooled class scores
            (probabilities or log-probabilities) of each encoder (the same units in the same order); a 1-D array is
            a binary task's positive-class scores.
        groups (`np.ndarray`): the patient (group) of each test unit.
    """

    task: str
    labels: np.ndarray
    model_scores: np.ndarray
    reference_scores: np.ndarray
    groups: np.ndarray

    def __post_init__(self):
        self.labels = np.asarray(self.labels)
        self.model_scores = _as_matrix(self.model_scores)
        self.reference_scores = _as_matrix(self.reference_scores)
        self.groups = np.asarray(self.groups).astype(str)
        if not (len(self.labels) == len(self.model_scores) == len(self.reference_scores) == len(self.groups)):
            raise ValueError(f"Task {self.task!r}: labels, both encoders' scores and groups must have one entry per "
                             "test unit.")
        if self.model_scores.shape != self.reference_scores.shape:
            raise ValueError(f"Task {self.task!r}: the two encoders' scores have shapes {self.model_scores.shape} and "
                             f"{self.reference_scores.shape}.")

    @property
    def num_classes(self) -> int:
        return self.model_scores.shape[1]

    def auroc(self, scores: np.ndarray, index: np.ndarray | None = None) -> float:
        """AUROC (binary: of the last class's score; else macro one-vs-rest) on the units `index`."""
        labels = self.labels if index is None else self.labels[index]
        chosen = scores if index is None else scores[index]
        if self.num_classes == 2:
            return float(_score(labels, chosen[:, 1], multiclass=False))
        return float(_score(labels, chosen, multiclass=True))

    def difference(self, index: np.ndarray | None = None) -> float:
        """AUROC(model) - AUROC(reference) on the units `index` (all by default); NaN when a class is missing."""
        labels = self.labels if index is None else self.labels[index]
        if len(np.unique(labels)) < len(np.unique(self.labels)):
            return float("nan")
        return self.auroc(self.model_scores, index) - self.auroc(self.reference_scores, index)


def _as_matrix(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:  # positive-class scores of a binary task (only the second column is ranked)
        scores = np.stack([-scores, scores], axis=1)
    return scores


def _interval(values: np.ndarray, confidence_level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    alpha = (1.0 - confidence_level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_bootstrap(task: PairedTask, *, samples: int = 1000, confidence_level: float = 0.95,
                     seed: int = DEFAULT_PAIRED_SEED) -> dict[str, float]:
    """
    AUROC(model) - AUROC(reference) on one task's test units, with its paired patient-level percentile bootstrap
    interval (the resampling protocol of the module docstring).

    Returns:
        `{"difference", "ci_low", "ci_high", "model_auroc", "reference_auroc", "bootstrap_samples",
        "bootstrap_samples_used", "num_test_units", "num_test_groups", "confidence_level", "seed"}`.
    """
    if samples < 1:
        raise ValueError(f"paired_bootstrap needs at least one resample, got {samples}.")
    rng = np.random.default_rng(seed)
    differences = np.array([task.difference(index) for index in _group_resamples(rng, task.groups, samples)])
    low, high = _interval(differences, confidence_level)
    return {
        "difference": task.difference(), "ci_low": low, "ci_high": high,
        "model_auroc": task.auroc(task.model_scores), "reference_auroc": task.auroc(task.reference_scores),
        "bootstrap_samples": int(samples), "bootstrap_samples_used": int(np.isfinite(differences).sum()),
        "num_test_units": len(task.labels), "num_test_groups": len(np.unique(task.groups)),
        "confidence_level": confidence_level, "seed": seed,
    }


def paired_mean_bootstrap(tasks: Sequence[PairedTask], *, samples: int = 1000, confidence_level: float = 0.95,
                          seed: int = DEFAULT_PAIRED_SEED) -> dict[str, float]:
    """
    The mean over tasks of AUROC(model) - AUROC(reference), with a paired bootstrap that resamples the patients of
    all tasks jointly (module docstring): a patient tested by several tasks is drawn for all of them at once.

    Returns:
        `{"mean_difference", "ci_low", "ci_high", "tasks", "bootstrap_samples", "bootstrap_samples_used", ...}`.
    """
    if not tasks:
        raise ValueError("paired_mean_bootstrap needs at least one task.")
    point = float(np.mean([task.difference() for task in tasks]))
    universe = np.unique(np.concatenate([task.groups for task in tasks]))
    members = []  # per task: group position in the universe -> that group's units
    for task in tasks:
        _, inverse = np.unique(task.groups, return_inverse=True)
        positions = np.searchsorted(universe, np.unique(task.groups))
        order = np.argsort(inverse, kind="stable")
        split = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
        members.append(dict(zip(positions.tolist(), split)))
    rng = np.random.default_rng(seed)
    means = np.full(samples, np.nan)
    for b in range(samples):
        # As many draws as there are patients in the union: each task gets, on average, as many of its patients as
        # it has (a patient shared by tasks is counted once, so shared tasks are not treated as more data).
        counts = np.bincount(rng.integers(0, len(universe), len(universe)), minlength=len(universe))
        values = []
        for task, groups in zip(tasks, members):
            parts = [np.tile(units, counts[position]) for position, units in groups.items() if counts[position]]
            values.append(task.difference(np.concatenate(parts)) if parts else float("nan"))
        means[b] = np.mean(values)
    low, high = _interval(means, confidence_level)
    return {"mean_difference": point, "ci_low": low, "ci_high": high, "tasks": [task.task for task in tasks],
            "bootstrap_samples": int(samples), "bootstrap_samples_used": int(np.isfinite(means).sum()),
            "num_test_groups": int(len(universe)), "confidence_level": confidence_level, "seed": seed}


def paired_differences(
    predictions: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    labels: Mapping[str, np.ndarray],
    groups: Mapping[str, np.ndarray],
    models: Sequence[str],
    reference: str,
    *,
    headroom_tasks: Sequence[str] = (),
    samples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = DEFAULT_PAIRED_SEED,
) -> dict[str, object]:
    """
    Every model's paired difference to `reference` on every classification task both were scored on, and the mean
    over the tasks with headroom that every compared model and the reference were scored on.

    Args:
        predictions (`Mapping`): task -> model -> `(test unit indices, pooled class scores)`.
        labels (`Mapping`), groups (`Mapping`): task -> class index / patient of every unit of the task.
        models (`Sequence[str]`): the models to compare (the reference among them is skipped).
        reference (`str`): the model every other one is compared with.
        headroom_tasks (`Sequence[str]`): the tasks of the mean.
        samples (`int`), confidence_level (`float`), seed (`int`): of the bootstraps.

    Returns:
        `{"reference", "tasks": [per (task, model) record], "mean_over_tasks_with_headroom": {model: record},
        "settings"}`.
    """
    compared = [model for model in models if model != reference]
    records, paired = [], {model: {} for model in compared}
    for task, by_model in predictions.items():
        if reference not in by_model:
            continue
        reference_index, reference_scores = by_model[reference]
        for model in compared:
            if model not in by_model:
                continue
            index, scores = by_model[model]
            if not np.array_equal(index, reference_index):
                raise ValueError(f"Task {task!r}: {model} and {reference} were tested on different units.")
            pair = PairedTask(task, labels[task][index], scores, reference_scores, groups[task][index])
            paired[model][task] = pair
            records.append({"task": task, "model": model, "reference": reference,
                            **paired_bootstrap(pair, samples=samples, confidence_level=confidence_level, seed=seed)})
    common = [task for task in headroom_tasks if all(task in paired[model] for model in compared)]
    means = {}
    if common:
        for model in compared:
            means[model] = paired_mean_bootstrap([paired[model][task] for task in common], samples=samples,
                                                 confidence_level=confidence_level, seed=seed)
    return {"reference": reference, "tasks": records, "mean_over_tasks_with_headroom": means,
            "settings": {"bootstrap_samples": samples, "confidence_level": confidence_level, "seed": seed,
                         "resampling": "test patients (group_id), the same resample for both models"}}


__all__ = ["PairedTask", "paired_bootstrap", "paired_differences", "paired_mean_bootstrap"]
