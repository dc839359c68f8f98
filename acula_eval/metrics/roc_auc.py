"""AUROC with a percentile-bootstrap confidence interval, as a local `evaluate` metric module.

Hub metrics cannot be downloaded offline, so acula ships its own: `evaluate.load(<path of this file>, "binary")`
or `"multiclass"` (macro one-vs-rest). The module is self-contained (evaluate copies it into its module cache).
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import rankdata

_DESCRIPTION = """Area under the ROC curve. `binary`: one score per example (higher = positive class).
`multiclass`: one probability vector per example (rows sum to 1), macro-averaged one-vs-rest AUROC.
With `bootstrap_samples > 0` a percentile-bootstrap confidence interval is added (resamples that lack a class
are redrawn as skipped)."""

_KWARGS_DESCRIPTION = """
Args:
    references (`list[int]`): true class index of each example.
    prediction_scores (`list[float]` or `list[list[float]]`): positive-class scores (binary) or class
        probabilities (multiclass).
    bootstrap_samples (`int`, defaults to 0): number of bootstrap resamples for the confidence interval.
    confidence_level (`float`, defaults to 0.95): coverage of the interval.
    seed (`int`, defaults to 0): seed of the resampling.
    groups (`list`, *optional*): a group id (e.g. patient) per example; the bootstrap then resamples whole groups,
        so that several recordings of one patient do not narrow the interval as if they were independent.
Returns:
    `roc_auc`, and with bootstrapping `roc_auc_ci_low`, `roc_auc_ci_high`, `bootstrap_samples_used`.
"""

_CITATION = "Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011."


def _binary_auc(positive, scores):
    """Mann-Whitney AUROC along the last axis (ties count one half, as in scikit-learn's `roc_auc_score`);
    works on a stack of bootstrap resamples at once."""
    ranks = rankdata(scores, axis=-1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * positive).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _group_resamples(rng, groups, samples):
    """`samples` index arrays, each the members of as many groups as there are, drawn with replacement."""
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    draws = rng.integers(0, len(members), (int(samples), len(members)))
    return [np.concatenate([members[g] for g in draw]) for draw in draws]


def _score(references, scores, multiclass):
    """AUROC of one set of predictions or of a stack of resamples (`references` of shape (..., n))."""
    if multiclass:
        # Macro one-vs-rest: the mean over classes of class k's score against all other examples.
        per_class = [_binary_auc(references == k, scores[..., k]) for k in range(scores.shape[-1])]
        return np.mean(per_class, axis=0)
    return _binary_auc(references == 1, scores)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RocAuc(evaluate.Metric):
    def _info(self):
        if self.config_name == "multiclass":
            features = datasets.Features(
                {"prediction_scores": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            )
        elif self.config_name in ("binary", "default"):
            features = datasets.Features(
                {"prediction_scores": datasets.Value("float64"), "references": datasets.Value("int64")}
            )
        else:
            raise ValueError(f"roc_auc: unknown config {self.config_name!r}; use 'binary' or 'multiclass'.")
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION, features=features
        )

    def _compute(self, references, prediction_scores, bootstrap_samples=0, confidence_level=0.95, seed=0,
                 groups=None):
        references = np.asarray(references)
        scores = np.asarray(prediction_scores, dtype=np.float64)
        multiclass = self.config_name == "multiclass"
        if len(np.unique(references)) < 2:
            raise ValueError("roc_auc: the references hold a single class; AUROC is undefined.")
        if multiclass and set(np.unique(references)) != set(range(scores.shape[1])):
            raise ValueError(
                f"roc_auc (multiclass): references hold classes {sorted(np.unique(references).tolist())} but the "
                f"scores have {scores.shape[1]} columns; every class needs examples for macro one-vs-rest AUROC."
            )
        result = {"roc_auc": float(_score(references, scores, multiclass))}
        if bootstrap_samples:
            rng = np.random.default_rng(seed)
            num_classes = len(np.unique(references))
            if groups is None:
                index = rng.integers(0, len(references), (int(bootstrap_samples), len(references)))
                resampled = references[index]
                # A resample that lacks a class has no AUROC: it is dropped.
                complete = np.array([len(np.unique(row)) == num_classes for row in resampled])
                values = _score(resampled[complete], scores[index[complete]], multiclass)
            else:
                if len(groups) != len(references):
                    raise ValueError(f"roc_auc: {len(groups)} group ids for {len(references)} examples.")
                values = np.array([
                    _score(references[index], scores[index], multiclass)
                    for index in _group_resamples(rng, groups, bootstrap_samples)
                    if len(np.unique(references[index])) == num_classes
                ])
            values = values[np.isfinite(values)]
            if len(values):
                alpha = (1.0 - confidence_level) / 2.0
                low, high = np.quantile(values, [alpha, 1.0 - alpha])
                result.update(roc_auc_ci_low=float(low), roc_auc_ci_high=float(high))
            else:
                result.update(roc_auc_ci_low=float("nan"), roc_auc_ci_high=float("nan"))
            result["bootstrap_samples_used"] = len(values)
        return result
