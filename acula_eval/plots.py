"""PNG figures of an evaluation: per-task score bars with error bars, ROC curves, 2-D embedding projections.

matplotlib is an optional dependency (`pip install acula[plots]`) and is imported only here, with the
non-interactive Agg backend.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("Plots need matplotlib: `pip install matplotlib` (or acula[plots]), or pass --no_plots.") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_score_bars(table: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | os.PathLike,
                    metric_label: str = "AUROC") -> Path:
    """
    Grouped bars: one group per task, one bar per model, height = mean score, error bar = std over seeds.

    Args:
        table (`Mapping[str, Mapping[str, Mapping[str, float]]]`): task -> model -> {"mean", "std"}.
        path (`str` or `os.PathLike`): the PNG to write.
        metric_label (`str`): y-axis label.
    """
    plt = _pyplot()
    tasks = list(table)
    models = sorted({model for row in table.values() for model in row})
    width = 0.8 / max(1, len(models))
    figure, axis = plt.subplots(figsize=(max(4.0, 1.4 * len(tasks) + 2), 3.6))
    for number, model in enumerate(models):
        means = [table[t].get(model, {}).get("mean", np.nan) for t in tasks]
        stds = [table[t].get(model, {}).get("std", 0.0) for t in tasks]
        axis.bar(np.arange(len(tasks)) + (number - (len(models) - 1) / 2) * width, means, width, yerr=stds,
                 capsize=3, label=model)
    axis.set_xticks(np.arange(len(tasks)), tasks, rotation=25, ha="right", fontsize=8)
    axis.set_ylabel(metric_label)
    if metric_label == "AUROC":
        axis.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        axis.set_ylim(0.0, 1.0)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, title: str,
                    classes: Sequence[str]) -> Path:
    """
    ROC curves of several models on one task (pooled test predictions). Binary tasks: the positive class; multi-class
    tasks: the micro-average over one-vs-rest.

    Args:
        curves (`Mapping[str, tuple]`): model -> (labels `(n,)`, class probabilities `(n, k)`).
        path (`str` or `os.PathLike`): the PNG.
        title (`str`): figure title (the task).
        classes (`Sequence[str]`): class names.
    """
    from sklearn.metrics import auc, roc_curve

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.2, 4.0))
    for model, (labels, scores) in curves.items():
        if len(classes) == 2:
            fpr, tpr, _ = roc_curve(labels, scores[:, 1])
        else:
            one_hot = np.eye(len(classes))[labels]
            fpr, tpr, _ = roc_curve(one_hot.ravel(), scores.ravel())
        axis.plot(fpr, tpr, label=f"{model} (area {auc(fpr, tpr):.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title + ("" if len(classes) == 2 else " (micro-average)"), fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def project_2d(features: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Standardised embeddings -> 2-D with PCA or t-SNE (scikit-learn)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    features = StandardScaler().fit_transform(features)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if method == "tsne":
        perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
        return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(features)
    raise ValueError(f"Unknown projection {method!r}; use 'pca' or 'tsne'.")


def plot_projection(features: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: str | os.PathLike,
                    title: str, method: str = "pca") -> Path:
    """Scatter of a 2-D projection of the embeddings, coloured by label (a colour bar for regression targets)."""
    plt = _pyplot()
    points = project_2d(features, method)
    figure, axis = plt.subplots(figsize=(4.4, 4.0))
    if classes:
        for index, name in enumerate(classes):
            chosen = labels == index
            if chosen.any():
                axis.scatter(points[chosen, 0], points[chosen, 1], s=10, alpha=0.7, label=name)
        axis.legend(fontsize=7, markerscale=1.5)
    else:
        scatter = axis.scatter(points[:, 0], points[:, 1], s=10, c=labels, cmap="viridis")
        figure.colorbar(scatter, ax=axis)
    axis.set_title(f"{title} ({method.upper()})", fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def _safe(name: str) -> str:
    """A task or model name as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_plots(folder: str | os.PathLike, results: Sequence[Mapping[str, Any]],
                tasks: Mapping[str, Mapping[str, Any]], datasets: Mapping[str, Any],
                embeddings: Mapping[tuple[str, str], np.ndarray], pooled_predictions: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                projection: str = "pca") -> None:
    """
    Every figure of an evaluation into `folder`: `<metric>_bars.png`, `roc_<task>.png` and
    `embedding_<task>_<model>.png`.

    Args:
        folder (`str` or `os.PathLike`): created if needed.
        results (`Sequence[Mapping]`): the result records (`task`, `model`, `metric`, `status`, `mean`, `std`).
        tasks (`Mapping[str, Mapping]`): task records by name (`metric`, `classes`).
        datasets (`Mapping[str, TaskData]`): the tasks' recordings (their labels and classes colour the points).
        embeddings (`Mapping`): `(model, task)` -> recording embeddings.
        pooled_predictions (`Mapping`): task -> model -> `(labels, pooled class probabilities)`.
        projection (`str`): `"pca"` or `"tsne"`.
    """
    from .report import METRIC_LABELS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for metric in sorted({t["metric"] for t in tasks.values()}):
        table: dict[str, dict[str, dict[str, float]]] = {}
        for record in results:
            if record["metric"] == metric and record["status"] == "ok":
                table.setdefault(record["task"], {})[record["model"]] = {"mean": record["mean"], "std": record["std"]}
        if table:
            plot_score_bars(table, folder / f"{metric}_bars.png", METRIC_LABELS.get(metric, metric))
    for task_name, curves in pooled_predictions.items():
        plot_roc_curves(curves, folder / f"roc_{_safe(task_name)}.png", task_name, tasks[task_name]["classes"])
    for (model_name, task_name), features in embeddings.items():
        data = datasets[task_name]
        if len(features) >= 5:
            plot_projection(features, data.labels, data.classes,
                            folder / f"embedding_{_safe(task_name)}_{_safe(model_name)}.png",
                            f"{task_name} / {model_name}", projection)


__all__ = ["plot_projection", "plot_roc_curves", "plot_score_bars", "project_2d", "write_plots"]
