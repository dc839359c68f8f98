"""One column of a comparison: an encoder probed on every task (refusing the tasks it was aligned on), with retrieval
and zero-shot through its alignment heads where it has them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .baselines import FOLDER_KINDS, ModelSpec
from .embeddings import FileEmbedder
from .leakage_check import check_leakage, load_trained_recordings, not_applicable
from .probes import run_few_shot, run_probe, score_predictions
from .report import METRIC_LABELS
from .retrieval import (
    NOT_VALID_NO_READOUT,
    AlignedSpace,
    has_alignment_heads,
    retrieval_for_rows,
    zero_shot_scores,
)
from .tasks import Split, TaskData


@dataclass
class ProbeSettings:
    """
    How every probe of a comparison is fitted and scored.

    Args:
        grid (`Sequence[float]`, *optional*): the regularisation grid (one value: no search; `None`: the defaults).
        bootstrap_samples (`int`), confidence_level (`float`): the pooled confidence interval.
        refuse_leakage (`bool`): skip the tasks whose test recordings or patients the model was aligned on.
        retrieval (`bool`): retrieval and zero-shot for folders with alignment heads.
        few_shot (`Sequence[int]`): labelled units per class of the few-label probes (binary classification tasks;
            empty: none), `few_shot_draws` (`int`) draws of each.
    """

    grid: Sequence[float] | None = None
    bootstrap_samples: int = 1000
    confidence_level: float = 0.95
    refuse_leakage: bool = True
    retrieval: bool = True
    few_shot: Sequence[int] = ()
    few_shot_draws: int = 20


@dataclass
class ModelEvaluation:
    """
    What one column gives.

    Args:
        results (`list[dict]`): one record per task (probe scores, or the refusal, with the leakage check).
        retrieval (`list[dict]`): retrieval and zero-shot records (classification tasks of folders with heads).
        embeddings (`dict[str, np.ndarray]`): task -> unit embeddings (recordings, or patients of a pooled task; for
            the plots).
        pooled_predictions (`dict[str, tuple]`): classification task -> (labels, pooled class log-probabilities).
        test_predictions (`dict[str, tuple]`): classification task -> (test unit indices, pooled class
            log-probabilities), for the paired differences between columns.
        leakage_warnings (`list[str]`): one line per task the model was aligned on.
    """

    results: list[dict[str, Any]] = field(default_factory=list)
    retrieval: list[dict[str, Any]] = field(default_factory=list)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    pooled_predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    test_predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    leakage_warnings: list[str] = field(default_factory=list)


def evaluate_model(
    spec: ModelSpec,
    embedder: FileEmbedder,
    datasets: Mapping[str, TaskData],
    splits: Mapping[str, Sequence[Split]],
    settings: ProbeSettings,
    say: Callable[..., None] = print,
) -> ModelEvaluation:
    """
    Probe one column on every task with the given splits.

    Args:
        spec ([`ModelSpec`]): the column.
        embedder ([`FileEmbedder`]): its embedder ([`~acula_eval.baselines.open_embedder`]).
        datasets (`Mapping[str, TaskData]`), splits (`Mapping[str, Sequence[Split]]`): the tasks, the same for every
            column.
        settings ([`ProbeSettings`]): probe, leakage and retrieval settings.
        say (`Callable`): progress output.
    """
    evaluation = ModelEvaluation()
    model_name = spec.name
    # Only a real model folder can have been aligned on anything (and have alignment heads).
    model_dir = spec.folder if spec.kind in FOLDER_KINDS else None
    trained = load_trained_recordings(model_dir) if model_dir is not None else None
    space = (AlignedSpace(model_dir, device=embedder.device)
             if model_dir is not None and settings.retrieval and has_alignment_heads(model_dir) else None)
    if space is not None and not space.valid:
        say(f"{model_name}: retrieval and zero-shot are {space.invalid_reason}")
    for task_name, data in datasets.items():
        test_indices = sorted({int(i) for split in splits[task_name] for i in split.test})
        leakage = (check_leakage(trained, data, test_indices) if trained is not None else
                   not_applicable(f"{spec.kind} baseline: no trained weights, nothing was aligned"))
        record: dict[str, Any] = {"task": task_name, "model": model_name, "model_dir": spec.to_dict()["path"],
                                  "baseline": spec.baseline, "metric": data.spec.metric, "leakage": leakage,
                                  "status": "ok"}
        if leakage["leaked"]:
            message = (f"LEAKAGE: {model_name} was aligned on {leakage['recordings']} test recording(s) / "
                       f"{leakage['patients']} test patient(s) of task {task_name} (e.g. {leakage['examples'][:1]})")
            evaluation.leakage_warnings.append(message)
            say("!" * 100 + "\n" + message + "\n" + "!" * 100)
            if settings.refuse_leakage:
                record["status"] = "refused (leakage)"
                evaluation.results.append(record)
                continue
        # Every recording once (the embedder keeps what earlier tasks embedded); a pooled task's unit is the mean of
        # its recordings' vectors.
        features = data.unit_embeddings(embedder.embed_files(data.recording_paths(), desc=f"{model_name} / {task_name}"))
        evaluation.embeddings[task_name] = features
        probe = run_probe(features, data, splits[task_name], model_name=model_name, grid=settings.grid,
                          bootstrap_samples=settings.bootstrap_samples, confidence_level=settings.confidence_level)
        record.update(probe.to_dict())
        if data.pooled:
            record["unit"] = data.spec.pool_by
        if settings.few_shot and data.spec.kind == "classification" and len(data.classes) == 2:
            record["few_shot"] = run_few_shot(features, data, splits[task_name], settings.few_shot,
                                              draws=settings.few_shot_draws, grid=settings.grid)
        evaluation.results.append(record)
        if data.spec.kind == "classification":
            evaluation.pooled_predictions[task_name] = (data.labels[probe.test_indices], probe.test_scores)
            evaluation.test_predictions[task_name] = (probe.test_indices, probe.test_scores)
        say(f"{model_name:>24s} | {task_name:24s} {METRIC_LABELS.get(probe.metric)} {probe.mean:.3f} ± {probe.std:.3f}"
            f"  (pooled {probe.pooled[probe.metric]:.3f}, CI {probe.pooled.get(probe.metric + '_ci_low', float('nan')):.3f}"
            f"–{probe.pooled.get(probe.metric + '_ci_high', float('nan')):.3f})")
        if space is not None and data.spec.kind == "classification":
            evaluation.retrieval.append(retrieval_and_zero_shot(space, features, data, test_indices, model_name, leakage))
    return evaluation


def retrieval_and_zero_shot(space: AlignedSpace, features: np.ndarray, data: TaskData, test_indices: list[int],
                            model_name: str, leakage: Mapping[str, Any]) -> dict[str, Any]:
    """Audio <-> report recall@k and zero-shot class scores on a task's test recordings (or why there are none)."""
    record: dict[str, Any] = {"task": data.spec.name, "model": model_name, "leakage": leakage["leaked"],
                              "readout": space.readout_record}
    if not space.valid:  # CKA heads without a readout: their cosine numbers would be arbitrary, so none are made
        record["retrieval"] = {"skipped": NOT_VALID_NO_READOUT}
        record["zero_shot"] = {"skipped": NOT_VALID_NO_READOUT}
        return record
    try:
        record["retrieval"] = retrieval_for_rows(space, features[test_indices], [data.rows[i] for i in test_indices])
    except ValueError as error:
        record["retrieval"] = {"skipped": str(error)}
    descriptions = data.spec.label_descriptions
    if descriptions:
        scores = zero_shot_scores(space, features[test_indices], [descriptions.get(c, c) for c in data.classes])
        labels = data.labels[test_indices]
        if len(np.unique(labels)) > 1:
            record["zero_shot"] = score_predictions(labels, scores, classification=True, num_classes=len(data.classes))
    return record


__all__ = ["ModelEvaluation", "ProbeSettings", "evaluate_model", "retrieval_and_zero_shot"]
