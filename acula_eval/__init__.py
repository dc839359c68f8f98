"""Evaluation of audio encoders (the app behind `eval_acula.py`).

- `tasks/`: the task registry, one module per task family, and the patient-grouped split policies;
- `embeddings`, `baselines`: cached recording embeddings of model folders and of the baselines (log-mel statistics,
  random weights, the starting encoder);
- `probes`, `metrics/`, `retrieval`, `leakage_check`: linear probes, the metric modules, retrieval and zero-shot
  through alignment heads, leakage checks against the alignment data;
- `paired`: paired differences between two encoders on the same test patients (aligned - frozen), with a
  patient-level paired bootstrap;
- `model_evaluation`: one encoder on every task; `runner`: the comparison run (arguments, run, outputs);
- `report`, `plots`: results.json / results.md / model-card metadata, and the figures.
"""

from .baselines import (
    LogMelStatsEmbedder,
    ModelSpec,
    find_recorded_start,
    open_embedder,
    resolve_models,
)
from .embeddings import AudioEmbedder, EmbeddingCache, model_fingerprint
from .leakage_check import check_leakage, training_manifest
from .probes import (
    ProbeResult,
    fit_probe,
    run_few_shot,
    run_probe,
    score_predictions,
    search_regularisation,
)
from .paired import paired_bootstrap, paired_differences, paired_mean_bootstrap
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
    "evaluate_model",
    "find_recorded_start",
    "fit_probe",
    "get_task",
    "list_tasks",
    "load_task",
    "make_splits",
    "model_fingerprint",
    "open_embedder",
    "paired_bootstrap",
    "paired_differences",
    "paired_mean_bootstrap",
    "recall_at_k",
    "resolve_models",
    "restrict_to_splits",
    "run_evaluation",
    "run_few_shot",
    "run_probe",
    "score_predictions",
    "search_regularisation",
    "training_manifest",
    "zero_shot_scores",
]

from .model_evaluation import evaluate_model
from .runner import EvalArguments, run_evaluation
