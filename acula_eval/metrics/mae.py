"""Mean absolute error with a percentile-bootstrap confidence interval, as a local `evaluate` metric module."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Mean absolute error |prediction - reference|, averaged over examples, in the target's unit."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): predicted values.
    references (`list[float]`): true values.
    bootstrap_samples (`int`, defaults to 0): bootstrap resamples for the confidence interval.
    confidence_level (`float`, defaults to 0.95): coverage of the interval.
    seed (`int`, defaults to 0): seed of the resampling.
    groups (`list`, *optional*): a group id (e.g. subject) per example; the bootstrap then resamples whole groups.
Returns:
    `mae`, and with bootstrapping `mae_ci_low`, `mae_ci_high`.
"""


class Mae(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references, bootstrap_samples=0, confidence_level=0.95, seed=0, groups=None):
        errors = np.abs(np.asarray(predictions, dtype=np.float64) - np.asarray(references, dtype=np.float64))
        result = {"mae": float(errors.mean())}
        if bootstrap_samples:
            rng = np.random.default_rng(seed)
            if groups is None:
                means = errors[rng.integers(0, len(errors), (int(bootstrap_samples), len(errors)))].mean(axis=1)
            else:
                if len(groups) != len(errors):
                    raise ValueError(f"mae: {len(groups)} group ids for {len(errors)} examples.")
                # Resample whole groups (subjects): a resample's MAE is its total error over its recordings.
                _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
                totals, sizes = np.bincount(inverse, weights=errors), np.bincount(inverse)
                draws = rng.integers(0, len(sizes), (int(bootstrap_samples), len(sizes)))
                means = totals[draws].sum(axis=1) / sizes[draws].sum(axis=1)
            alpha = (1.0 - confidence_level) / 2.0
            low, high = np.quantile(means, [alpha, 1.0 - alpha])
            result.update(mae_ci_low=float(low), mae_ci_high=float(high))
        return result
