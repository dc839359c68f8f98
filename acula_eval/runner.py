"""The comparison run behind `eval_acula.py`: its arguments, the tasks and splits shared by every column, one
[`~acula_eval.model_evaluation.evaluate_model`] per column, and the output folder (results.json, results.md,
model_index.yaml, plots)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from acula_train.public_paths import local_display_path
from modeling_acula.file_utils import default_dev_pack

from .baselines import ModelSpec, column_order, open_embedder, resolve_models
from .embeddings import model_fingerprint
from .model_evaluation import ModelEvaluation, ProbeSettings, evaluate_model
from .paired import paired_differences
from .report import (
    METRIC_LABELS,
    _headroom_task,
    headroom_summary,
    leakage_summary,
    few_shot_markdown,
    markdown_table,
    paired_markdown,
    results_markdown,
    update_model_card,
    write_json,
    write_model_index,
)
from .tasks import (
    Split,
    SplitPolicy,
    TaskData,
    TaskSpec,
    get_task,
    list_tasks,
    load_task,
    make_splits,
    restrict_to_splits,
)
from .tasks.dev_pack import SUGGESTED_SPLIT
from .tasks.hf_dataset import dataset_task
from .tasks.specs import default_circor

logger = logging.getLogger(__name__)
SPLIT_OVERRIDES = ("default", "suggested", "kfold")
TASK_FAMILIES = ("dev_pack", "circor", "opera")


@dataclass
class EvalArguments:
    models: list[str] = field(default_factory=list, metadata={"help": "Model folders to compare (AutoModel loads each), and baselines: logmel-stats (per-mel-bin mean and std of the log-mel spectrogram) and random:<folder> (that folder's architecture, random weights, seed 0); ceiling:<folder> is a model folder labelled as the supervised ceiling."})
    model_names: list[str] = field(default_factory=list, metadata={"help": "Column names, one per --models entry (default: folder names, logmel-stats, random:<folder name>)."})
    update_model_cards: bool = field(default=False, metadata={"help": "Write the scores (model-index metadata) and this comparison table into the README.md model card of every evaluated acula output folder."})
    add_baselines: bool = field(default=False, metadata={"help": "Also evaluate logmel-stats, random:<first model folder> and the starting encoder an acula output folder records (training_args.json -> init_from, if it can be found here: as recorded, beside that folder, or a Hub id in the local Hugging Face cache; for the default whisper-base preset, the converted Whisper-base in acula's cache, embedded on the run's window)."})
    tasks: list[str] = field(default_factory=list, metadata={"help": "Task names or OPERA ids (T10), or the groups dev_pack, circor (CirCor tasks and the cross-source heart tasks, need --circor), opera, headroom (dev-pack tasks with headroom); default: every dev-pack task."})
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where results.json, results.md and plots go."})
    dev_pack: str = field(default_factory=lambda: str(default_dev_pack()), metadata={"help": "The auscultation-dev folder (default: $ACULA_DEV_PACK, else ../shared/data/auscultation-dev beside the repository)."})
    data_root: str | None = field(default=None, metadata={"help": "Folder with the public datasets of the OPERA tasks."})
    circor: str | None = field(default_factory=lambda: str(default_circor()) if default_circor() else None, metadata={"help": "The CirCor DigiScope folder (official layout: training_data.csv and training_data/), or a manifest written from it, for the circor tasks (default: $ACULA_CIRCOR)."})
    split_policy: str = field(default="default", metadata={"help": "default (per task), suggested (dev pack split column) or kfold (grouped 5-fold)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={"help": "One probe split / seed each."})
    max_per_task: int | None = field(default=None, metadata={"help": "Subsample every task to at most N recordings (stratified)."})
    batch_size: int = field(default=16, metadata={"help": "Recordings per embedding batch."})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda when available)."})
    autocast_dtype: str | None = field(default=None, metadata={"help": "bfloat16 or float16: run the encoders under autocast (GPUs; CPUs with AMX). Default float32."})
    decode_workers: int = field(default=2, metadata={"help": "Threads decoding the next batch of files while the current one is embedded (0: none)."})
    window_seconds: float | None = field(default=None, metadata={"help": "Sliding-window length (default: the model's input)."})
    hop_seconds: float | None = field(default=None, metadata={"help": "Hop between windows (default: the window)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Embedding cache (default: the embeddings folder of acula's cache: $ACULA_CACHE, else under the Hugging Face cache)."})
    no_cache: bool = field(default=False, metadata={"help": "Recompute every embedding, write no cache."})
    probe_c: float | None = field(default=None, metadata={"help": "Fixed regularisation instead of a grouped inner search."})
    bootstrap_samples: int = field(default=1000, metadata={"help": "Bootstrap resamples of the pooled CI and of the paired differences (use at least 1000 for reported numbers)."})
    confidence_level: float = field(default=0.95, metadata={"help": "Coverage of the CI."})
    refuse_leakage: bool = field(default=True, metadata={"help": "Refuse tasks whose test recordings/patients were aligned on."})
    retrieval: bool = field(default=True, metadata={"help": "Retrieval and zero-shot for folders with alignment/ heads."})
    few_shot: list[str] = field(default_factory=list, metadata={"help": "Few-label probes beside the full probe (binary classification tasks): labelled recordings (patients, for a per-patient task) per class, e.g. 8,16,32 (or 8 16 32), drawn patient-aware from the probe-training side."})
    few_shot_draws: int = field(default=20, metadata={"help": "Draws of each few-label size (the same draws for every model)."})
    reference: str | None = field(default=None, metadata={"help": "Column name of the model every other column is compared with (paired bootstrap of the AUROC difference over test patients). Default: the frozen starting encoder, when --add_baselines adds it or it is listed."})
    max_windows_per_recording: int | None = field(default=None, metadata={"help": "Embed only the first N windows of each recording (1: the first window only; cheaper on long recordings). Default: every window."})
    shared_prefix_layers: int | None = field(default=None, metadata={"help": "Whisper-backed acula folders: store the output of their first N layers per window, so that every model sharing those weights (a start and its top-layer LoRA runs: 4 for Whisper-base with --lora_top_layers 2) computes them once and runs only its top layers. Random-weight columns are not shared. The embeddings are the same."})
    plots: bool = field(default=True, metadata={"help": "Write PNG plots."})
    projection: str = field(default="pca", metadata={"help": "2-D projection of the embedding plots: pca or tsne."})
    dataset_name: str | None = field(default=None, metadata={"help": "Add one task from a `datasets` dataset: a Hub id, a builder (audiofolder, csv, ...) with --data_dir / --data_files, or a save_to_disk folder; needs --label_column_name. Without --tasks, only this task is evaluated. See acula_eval/tasks/hf_dataset.py."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The configuration of --dataset_name."})
    data_dir: str | None = field(default=None, metadata={"help": "Data folder of a --dataset_name builder (e.g. an audiofolder with metadata.csv)."})
    data_files: list[str] = field(default_factory=list, metadata={"help": "Data files of a --dataset_name builder: a.csv, or train=a.csv test=b.csv."})
    audio_column_name: str = field(default="audio", metadata={"help": "--dataset_name: the Audio column, or a column of audio file paths."})
    label_column_name: str | None = field(default=None, metadata={"help": "--dataset_name: the column holding each recording's class."})
    train_split_name: str | None = field(default=None, metadata={"help": "--dataset_name: the split the probe trains on; with --eval_split_name, the probe is tested on that split (default: grouped 5-fold over every split, or over this one)."})
    eval_split_name: str | None = field(default=None, metadata={"help": "--dataset_name: the split the probe is tested on (needs --train_split_name)."})
    patient_column_name: str | None = field(default=None, metadata={"help": "--dataset_name: the patient column the folds (and the leakage check) group by (default: the dataset's group_id, if any; else each recording is its own patient)."})
    dataset_task_name: str | None = field(default=None, metadata={"help": "--dataset_name: the task's name in the results (default: <dataset>/<label column>)."})
    list_tasks: bool = field(default=False, metadata={"help": "Print the task registry and exit."})
    quiet: bool = field(default=False, metadata={"help": "No progress bars."})


def describe_tasks() -> str:
    """The registry as text (for `--list_tasks`); tasks without headroom (saturated) are marked."""
    lines = []
    for family in TASK_FAMILIES:
        lines.append(f"{family} tasks:" + (" (--circor or $ACULA_CIRCOR: the CirCor DigiScope folder)"
                                            if family == "circor" else ""))
        for spec in list_tasks(family):
            label = f"{spec.opera_id:>4} " if spec.opera_id else ""
            saturated = "" if spec.headroom else " [saturated: not in the headroom mean]"
            unit = f" [one unit per {spec.pool_by}]" if spec.pool_by else ""
            lines.append(f"  {label}{spec.name:28s} {spec.kind:14s} {METRIC_LABELS.get(spec.metric, spec.metric):6s} "
                         f"split={spec.split.kind:20s} {spec.description}{unit}{saturated}")
    from .tasks.circor import CIRCOR_SOURCE

    lines.append(f"circor source: {CIRCOR_SOURCE}")
    return "\n".join(lines)


def resolve_task_names(names: Sequence[str]) -> list[str]:
    """Task names, with OPERA ids (`T10`) and `dev_pack` / `circor` / `opera` / `headroom` (dev-pack tasks with
    headroom) as shorthands."""
    if not names:
        return [spec.name for spec in list_tasks("dev_pack")]
    resolved = []
    by_id = {spec.opera_id.lower(): spec.name for spec in list_tasks("opera")}
    for name in names:
        if name in TASK_FAMILIES:
            resolved += [spec.name for spec in list_tasks(name)]
        elif name == "headroom":
            resolved += [spec.name for spec in list_tasks("dev_pack") if spec.headroom]
        elif name.lower() in by_id:
            resolved.append(by_id[name.lower()])
        else:
            resolved.append(get_task(name).name)
    return list(dict.fromkeys(resolved))


def chosen_split_policy(data: TaskData, override: str) -> SplitPolicy:
    """The split policy `--split_policy` gives a task: its own (`default`), the dev pack's `suggested_split` column
    (`suggested`) or a patient-grouped 5-fold (`kfold`)."""
    if override not in SPLIT_OVERRIDES:
        raise ValueError(f"--split_policy must be one of {SPLIT_OVERRIDES}, got {override!r}.")
    if override == "suggested":
        return SUGGESTED_SPLIT
    if override == "kfold":
        return SplitPolicy(kind="group_kfold")
    return data.spec.split


def load_tasks(args: EvalArguments) -> tuple[dict[str, TaskData], dict[str, list[Split]], dict[str, dict[str, Any]]]:
    """
    The tasks of a comparison and their splits, identical for every model (so missing data fails before any
    embedding is computed).

    Returns:
        `(datasets, splits, task_records)` by task name; `task_records` are what results.json says of each task.
    """
    datasets: dict[str, TaskData] = {}
    splits: dict[str, list[Split]] = {}
    task_specs = [get_task(name) for name in resolve_task_names(args.tasks)] if args.tasks or not args.dataset_name else []
    if args.dataset_name:  # --dataset_name alone evaluates its task only
        task_specs.append(dataset_task_from_args(args))
    for spec in task_specs:
        task_name = spec.name
        if task_name in datasets:
            raise ValueError(f"Two tasks are named {task_name!r}: pass --dataset_task_name.")
        data = load_task(spec, dev_pack=args.dev_pack, data_root=args.data_root, circor=args.circor,
                         max_recordings=args.max_per_task)
        # Recordings on no side of any split (a transfer task's unused target rows) are neither embedded nor counted.
        datasets[task_name], splits[task_name] = restrict_to_splits(
            data, make_splits(data, chosen_split_policy(data, args.split_policy), args.seeds))
    task_records = {
        name: {"name": name, "description": d.spec.description, "kind": d.spec.kind, "metric": d.spec.metric,
               "family": d.spec.family, "opera_id": d.spec.opera_id, "classes": d.classes,
               "headroom": d.spec.headroom, "unit": d.spec.pool_by or "recording",
               "num_recordings": len(d.recording_paths()), "num_units": len(d), "num_groups": len(set(d.groups)),
               "split_policy": asdict(chosen_split_policy(d, args.split_policy)), "num_splits": len(splits[name]),
               "notes": d.spec.notes}
        for name, d in datasets.items()
    }
    return datasets, splits, task_records


def dataset_task_from_args(args: EvalArguments) -> TaskSpec:
    """The task of `--dataset_name` and its settings (see [`~acula_eval.tasks.hf_dataset.dataset_task`])."""
    if not args.label_column_name:
        raise ValueError("--dataset_name needs --label_column_name (the column holding each recording's class).")
    return dataset_task(args.dataset_name, label_column=args.label_column_name, audio_column=args.audio_column_name,
                        dataset_config_name=args.dataset_config_name, data_dir=args.data_dir,
                        data_files=args.data_files, train_split_name=args.train_split_name,
                        eval_split_name=args.eval_split_name, patient_column=args.patient_column_name,
                        task_name=args.dataset_task_name)


def dataset_argument_errors(args: EvalArguments) -> list[str]:
    """`--dataset_name` settings given without `--dataset_name`."""
    if args.dataset_name:
        return []
    given = [name for name in ("dataset_config_name", "data_dir", "data_files", "label_column_name",
                               "train_split_name", "eval_split_name", "patient_column_name", "dataset_task_name")
             if getattr(args, name)]
    return [f"--{name} applies with --dataset_name only." for name in given]


def run_evaluation(args: EvalArguments) -> dict[str, Any]:
    """
    Evaluate every model on every task with the same splits and write the output folder: results.json, results.md,
    model_index.yaml, plots/ (and, with `--update_model_cards`, the model cards).

    Returns:
        The payload written to `results.json`.
    """
    if not args.models:
        raise ValueError("Pass at least one model folder (or baseline: logmel-stats, random:<folder>) with --models.")
    errors = dataset_argument_errors(args)
    if errors:
        raise ValueError(" ".join(errors))
    started = time.time()
    specs: list[ModelSpec] = resolve_models(args.models, args.model_names, args.add_baselines)
    reference = chosen_reference(specs, args.reference)
    few_shot = parse_few_shot(args.few_shot)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if args.quiet else print
    datasets, splits, task_records = load_tasks(args)

    settings = ProbeSettings(grid=[args.probe_c] if args.probe_c is not None else None,
                             bootstrap_samples=args.bootstrap_samples, confidence_level=args.confidence_level,
                             refuse_leakage=args.refuse_leakage, retrieval=args.retrieval, few_shot=few_shot,
                             few_shot_draws=args.few_shot_draws)
    columns: list[ModelEvaluation] = []
    for spec in specs:
        with open_embedder(spec, device=args.device, batch_size=args.batch_size, window_seconds=args.window_seconds,
                           hop_seconds=args.hop_seconds, autocast_dtype=args.autocast_dtype,
                           decode_workers=args.decode_workers, cache_dir=False if args.no_cache else args.cache_dir,
                           show_progress=not args.quiet,
                           max_windows_per_recording=args.max_windows_per_recording,
                           shared_prefix_layers=args.shared_prefix_layers) as embedder:
            columns.append(evaluate_model(spec, embedder, datasets, splits, settings, say))
    results = [record for column in columns for record in column.results]
    retrieval = [record for column in columns for record in column.retrieval]
    leakage_warnings = [line for column in columns for line in column.leakage_warnings]

    names = [spec.name for spec in specs]
    paired = None
    if reference is not None:
        predictions: dict[str, dict[str, tuple]] = {}
        for spec, column in zip(specs, columns):
            for task, prediction in column.test_predictions.items():
                leaked = any(r["task"] == task and r["model"] == spec.name and r.get("leakage", {}).get("leaked")
                             for r in column.results)
                if not leaked:  # a leaked score (--no_refuse_leakage) is never compared
                    predictions.setdefault(task, {})[spec.name] = prediction
        paired = paired_differences(
            predictions, {task: data.labels for task, data in datasets.items()},
            {task: data.groups for task, data in datasets.items()}, names, reference,
            headroom_tasks=[task["name"] for task in task_records.values() if _headroom_task(task)],
            samples=args.bootstrap_samples, confidence_level=args.confidence_level)
    payload = {
        "models": [_model_record(spec) for spec in specs],
        "tasks": list(task_records.values()),
        "results": results,
        "summary": {"mean_auroc_over_tasks_with_headroom": headroom_summary(results, names,
                                                                             list(task_records.values()))},
        "paired_differences": paired,
        "retrieval_zero_shot": retrieval,
        "leakage_warnings": leakage_warnings,
        # Per model: "checked", "not checked" (with the reason: never to be read as "no leakage") or "not applicable".
        "leakage_checks": {spec.name: leakage_summary(results, spec.name) for spec in specs},
        "settings": _recorded_settings(args),
        "wall_time_s": round(time.time() - started, 1),
    }
    write_json(output / "results.json", payload)
    ordered = column_order(specs)  # logmel-stats, random weights, frozen start, models, ceiling
    labels = {spec.name: spec.label for spec in specs}
    table = markdown_table(results, [spec.name for spec in ordered], list(task_records.values()), labels)
    baselines = [(spec.name, spec.kind) for spec in ordered if spec.baseline or spec.kind == "ceiling"]
    (output / "results.md").write_text(
        results_markdown(table, retrieval, baselines, leakage_warnings,
                         few_shot=few_shot_markdown(results, [spec.name for spec in ordered],
                                                    list(task_records.values()), labels) if few_shot else "",
                         paired=paired_markdown(paired, [spec.name for spec in ordered], list(task_records.values()),
                                                labels) if paired else ""),
        encoding="utf-8")
    # Model-card metadata only for real model folders (logmel-stats and random weights have no model card).
    carded = [spec.name for spec in specs if spec.kind in ("model", "start")]
    write_model_index(output / "model_index.yaml", carded, results, task_records)
    if args.update_model_cards:
        for spec in specs:
            if spec.kind == "model" and update_model_card(spec.folder, spec.name, results, task_records, table):
                say(f"Evaluation written into the model card {Path(spec.folder) / 'README.md'}.")
    if args.plots:
        from .plots import write_plots

        embeddings = {(spec.name, task): features for spec, column in zip(specs, columns)
                      for task, features in column.embeddings.items()}
        pooled: dict[str, dict[str, tuple]] = {}
        for spec, column in zip(specs, columns):
            for task, predictions in column.pooled_predictions.items():
                pooled.setdefault(task, {})[spec.name] = predictions
        write_plots(output / "plots", results, task_records, datasets, embeddings, pooled, args.projection)
    say("\n" + table)
    if paired:
        say(paired_markdown(paired, [spec.name for spec in ordered], list(task_records.values()), labels))
    for message in leakage_warnings:
        say(message)
    say(f"Results written to {output.resolve()} ({payload['wall_time_s']} s).")
    return payload


def _model_record(spec: ModelSpec) -> dict[str, Any]:
    """A column of results.json, with the sha256 of the weights it scored (`model_fingerprint`: config, preprocessor
    config and weight files) where it is a model folder, so that a released folder can be tied to its figures."""
    record = spec.to_dict()
    if spec.kind != "random" and spec.folder is not None:
        try:
            record["fingerprint"] = model_fingerprint(spec.folder)
        except ValueError:  # a folder without the files a fingerprint reads (scored all the same)
            record["fingerprint"] = None
    return record


def parse_few_shot(values: Sequence[str | int]) -> tuple[int, ...]:
    """`--few_shot` as sizes: `8,16,32` or `8 16 32` (positive integers, in the given order, without repeats)."""
    sizes = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            try:
                size = int(part)
            except ValueError:
                raise ValueError(f"--few_shot takes labelled units per class such as 8,16,32; got {value!r}.") from None
            if size < 2:
                raise ValueError(f"--few_shot sizes must be >= 2 per class, got {size}.")
            sizes.append(size)
    return tuple(dict.fromkeys(sizes))


def chosen_reference(specs: Sequence[ModelSpec], reference: str | None) -> str | None:
    """The column the paired differences compare every other one with: `--reference`, else the frozen starting
    encoder (a `start` column), else none."""
    names = [spec.name for spec in specs]
    if reference is not None:
        if reference not in names:
            raise ValueError(f"--reference {reference!r} is not a column of this comparison; columns: {names}.")
        return reference
    starts = [spec.name for spec in specs if spec.kind == "start"]
    return starts[0] if starts else None


def _recorded_settings(args: EvalArguments) -> dict[str, Any]:
    """The settings as results.json records them: folders relative to the working directory where possible."""
    settings = asdict(args)
    for key in ("output_dir", "dev_pack", "data_root", "cache_dir", "circor", "data_dir"):
        if settings.get(key):
            settings[key] = local_display_path(settings[key])
    return settings



__all__ = [
    "EvalArguments",
    "chosen_reference",
    "chosen_split_policy",
    "dataset_task_from_args",
    "describe_tasks",
    "load_tasks",
    "parse_few_shot",
    "resolve_task_names",
    "run_evaluation",
]
