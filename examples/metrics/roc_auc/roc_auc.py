"""Area under the ROC curve as a local `evaluate` module.

The Hub's `roc_auc` metric cannot be downloaded offline, so the fine-tuning example loads this one by path:

    metric = evaluate.load("examples/metrics/roc_auc")                   # binary: score of the positive class
    metric = evaluate.load("examples/metrics/roc_auc", "multiclass")     # one probability per class (one-vs-rest)
"""

import datasets
import evaluate
from sklearn.metrics import roc_auc_score

_DESCRIPTION = """Area under the receiver operating characteristic curve, from prediction scores (scikit-learn's
`roc_auc_score`). `binary` takes one score per example (higher means the positive class, label 1); `multiclass` takes
one probability per class and averages one-vs-rest curves (`average="macro"` by default)."""

_KWARGS_DESCRIPTION = """
Args:
    references (`list[int]`): true class indices.
    prediction_scores (`list[float]` or `list[list[float]]`): score of the positive class (`binary`) or the
        probability of every class, rows summing to 1 (`multiclass`).
    average (`str`, *optional*, defaults to `"macro"`): how one-vs-rest areas are averaged (`multiclass`).
    labels (`list[int]`, *optional*): the class indices of the score columns (`multiclass`); needed when some class
        is absent from `references`.
Returns:
    `dict` with `roc_auc` (`float`).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RocAuc(evaluate.Metric):
    def _info(self):
        if self.config_name not in ("default", "binary", "multiclass"):
            raise ValueError(f"Unknown configuration {self.config_name!r}; use 'binary' or 'multiclass'.")
        score = datasets.Sequence(datasets.Value("float64")) if self.config_name == "multiclass" else datasets.Value(
            "float64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"prediction_scores": score, "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html"],
        )

    def _compute(self, references, prediction_scores, average="macro", labels=None):
        if self.config_name == "multiclass":
            score = roc_auc_score(references, prediction_scores, multi_class="ovr", average=average, labels=labels)
        else:
            score = roc_auc_score(references, prediction_scores)
        return {"roc_auc": float(score)}
