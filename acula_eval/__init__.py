"""Evaluation of audio encoders: cached embeddings, a task registry, linear probes, retrieval and zero-shot,
leakage checks against the alignment data, baselines (log-mel statistics, random weights, the starting encoder),
tables, plots and model-card metadata (used by `eval_acula.py`)."""

from .baselines import LogMelStatsEmbedder, ModelSpec, open_embedder, resolve_models
from .embeddings import AudioEmbedder, EmbeddingCache, model_fingerprint
from .leakage_check import check_leakage, training_manifest
from .probes import ProbeResult, fit_probe, run_probe, score_predictions
from .retrieval import AlignedSpace, recall_at_k, zero_shot_scores
from .tasks import (
    TASKS,
    SplitPolicy,
    TaskData,
    TaskSpec,
    get_task,
    list_tasks,
    load_task,
    make_splits,
    restrict_to_splits,
)

__all__ = [
    "TASKS",
    "AlignedSpace",
    "AudioEmbedder",
    "EmbeddingCache",
    "EvalArguments",
    "LogMelStatsEmbedder",
    "ModelSpec",
    "ProbeResult",
    "SplitPolicy",
    "TaskData",
    "TaskSpec",
    "check_leakage",
    "fit_probe",
    "get_task",
    "list_tasks",
    "load_task",
    "make_splits",
    "model_fingerprint",
    "open_embedder",
    "recall_at_k",
    "resolve_models",
    "restrict_to_splits",
    "run_evaluation",
    "run_probe",
    "score_predictions",
    "training_manifest",
    "zero_shot_scores",
]

from .runner import EvalArguments, run_evaluation
