"""acula's own `evaluate` metric modules (Hub metrics cannot be downloaded offline) and a cached loader."""

from __future__ import annotations

import functools
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("roc_auc", "mae", "mape")


@functools.cache
def load_metric(name: str, config_name: str | None = None):
    """Load one of acula's metric modules through `evaluate.load` (local file, no Hub access).

    Args:
        name (`str`): `"roc_auc"`, `"mae"` or `"mape"`.
        config_name (`str`, *optional*): for `roc_auc`, `"binary"` (default) or `"multiclass"`.

    Returns:
        `evaluate.EvaluationModule`.
    """
    import evaluate

    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown acula metric {name!r}; available: {METRIC_NAMES}.")
    if name == "roc_auc" and config_name is None:
        config_name = "binary"
    return evaluate.load(str(METRICS_DIR / f"{name}.py"), config_name)


__all__ = ["METRICS_DIR", "METRIC_NAMES", "load_metric"]
