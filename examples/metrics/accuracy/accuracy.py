"""Accuracy as a local `evaluate` module (the Hub's `accuracy` metric cannot be downloaded offline):

    metric = evaluate.load("examples/metrics/accuracy")
"""

import datasets
import evaluate

_DESCRIPTION = "Fraction of examples whose predicted class index equals the reference."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class indices.
    references (`list[int]`): true class indices.
Returns:
    `dict` with `accuracy` (`float`).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        if not references:
            raise ValueError("accuracy of zero examples")
        return {"accuracy": sum(int(p == r) for p, r in zip(predictions, references)) / len(references)}
