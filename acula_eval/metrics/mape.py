"""Mean absolute percentage error (as a fraction, like scikit-learn), as a local `evaluate` metric module."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = (
    "Mean of |prediction - reference| / |reference| over examples, as a fraction (0.1 = 10 %). References of 0 are"
    " refused: the error relative to zero is undefined."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): predicted values.
    references (`list[float]`): true values, none of them 0.
Returns:
    `mape`.
"""


class Mape(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):
        predictions = np.asarray(predictions, dtype=np.float64)
        references = np.asarray(references, dtype=np.float64)
        if np.any(references == 0):
            raise ValueError(f"mape: {int(np.sum(references == 0))} reference(s) are 0; MAPE is undefined there.")
        return {"mape": float(np.mean(np.abs(predictions - references) / np.abs(references)))}
