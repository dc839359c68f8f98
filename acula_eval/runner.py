"""The comparison run behind `eval_acula.py`: several encoders, the same tasks and splits, one output folder."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modeling_acula.file_utils import default_dev_pack
from acula_train.public_paths import local_display_path
from .baselines import ModelSpec, open_embedder, resolve_models
from .leakage_check import check_leakage, load_trained_recordings, not_applicable
from .probes import run_probe, score_predictions
from .report import (
    METRIC_LABELS,
    headroom_summary,
    leakage_summary,
    markdown_table,
    update_model_card,
    write_json,
    write_model_index,
)
from .retrieval import (
    NOT_VALID_NO_READOUT,
    AlignedSpace,
    has_alignment_heads,
    retrieval_for_rows,
    zero_shot_scores,
)
from .tasks import (
    SplitPolicy,
    TaskData,
    get_task,
    list_tasks,
    load_task,
    make_splits,
    restrict_to_splits,
)

logger = logging.getLogger(__name__)
SPLIT_OVERRIDES = ("default", "suggested", "kfold")


@dataclass
class EvalArguments:
    models: list[str] = field(default_factory=list, metadata={"help": "Model folders to compare (AutoModel loads each), and baselines: logmel-stats (per-mel-bin mean and std of the log-mel spectrogram) and random:<folder> (that folder's architecture, random weights, seed 0)."})
    model_names: list[str] = field(default_factory=list, metadata={"help": "Column names, one per --models entry (default: folder names, logmel-stats, random:<folder name>)."})
    update_model_cards: bool = field(default=False, metadata={"help": "Write the scores (model-index metadata) and this comparison table into the README.md model card of every evaluated acula output folder."})
    add_baselines: bool = field(default=False, metadata={"help": "Also evaluate logmel-stats, random:<first model folder> and the starting encoder an acula output folder records (training_args.json -> init_from, if it can be found here: as recorded, beside that folder, or a Hub id in the local Hugging Face cache)."})
    tasks: list[str] = field(default_factory=list, metadata={"help": "Task names or OPERA ids (T10), or the groups dev_pack, opera, headroom (dev-pack tasks with headroom); default: every dev-pack task."})
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where results.json, results.md and plots go."})
    dev_pack: str = field(default_factory=lambda: str(default_dev_pack()), metadata={"help": "The auscultation-dev folder (default: $ACULA_DEV_PACK, else ../shared/data/auscultation-dev beside the repository)."})
    data_root: str | None = field(default=None, metadata={"help": "Folder with the public datasets of the OPERA tasks."})
    split_policy: str = field(default="default", metadata={"help": "default (per task), suggested (dev pack split column) or kfold (grouped 5-fold)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={"help": "One probe split / seed each."})
    max_per_task: int | None = field(default=None, metadata={"help": "Subsample every task to at most N recordings (stratified)."})
    batch_size: int = field(default=16, metadata={"help": "Recordings per embedding batch."})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda when available)."})
    autocast_dtype: str | None = field(default=None, metadata={"help": "bfloat16 or float16: run the encoders under autocast (GPUs; CPUs with AMX). Default float32."})
    decode_workers: int = field(default=2, metadata={"help": "Threads decoding the next batch of files while the current one is embedded (0: none)."})
    window_seconds: float | None = field(default=None, metadata={"help": "Sliding-window length (default: the model's input)."})
    hop_seconds: float | None = field(default=None, metadata={"help": "Hop between windows (default: the window)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Embedding cache (default: $ACULA_CACHE/embeddings)."})
    no_cache: bool = field(default=False, metadata={"help": "Recompute every embedding, write no cache."})
    probe_c: float | None = field(default=None, metadata={"help": "Fixed regularisation instead of a grouped inner search."})
    bootstrap_samples: int = field(default=1000, metadata={"help": "Bootstrap resamples of the pooled CI."})
    confidence_level: float = field(default=0.95, metadata={"help": "Coverage of the CI."})
    refuse_leakage: bool = field(default=True, metadata={"help": "Refuse tasks whose test recordings/patients were aligned on."})
    retrieval: bool = field(default=True, metadata={"help": "Retrieval and zero-shot for folders with alignment/ heads."})
    plots: bool = field(default=True, metadata={"help": "Write PNG plots."})
    projection: str = field(default="pca", metadata={"help": "2-D projection of the embedding plots: pca or tsne."})
    list_tasks: bool = field(default=False, metadata={"help": "Print the task registry and exit."})
    quiet: bool = field(default=False, metadata={"help": "No progress bars."})


def describe_tasks() -> str:
    """The registry as text (for `--list_tasks`); tasks without headroom (saturated) are marked."""
    lines = []
    for family in ("dev_pack", "opera"):
        lines.append(f"{family} tasks:")
        for spec in list_tasks(family):
            label = f"{spec.opera_id:>4} " if spec.opera_id else ""
            saturated = "" if spec.headroom else " [saturated: not in the headroom mean]"
            lines.append(f"  {label}{spec.name:28s} {spec.kind:14s} {METRIC_LABELS.get(spec.metric, spec.metric):6s} "
                         f"split={spec.split.kind:20s} {spec.description}{saturated}")
    return "\n".join(lines)


def resolve_task_names(names: Sequence[str]) -> list[str]:
    """Task names, with OPERA ids (`T10`) and `dev_pack` / `opera` / `headroom` (dev-pack tasks with headroom) as
    shorthands."""
    if not names:
        return [spec.name for spec in list_tasks("dev_pack")]
    resolved = []
    by_id = {spec.opera_id.lower(): spec.name for spec in list_tasks("opera")}
    for name in names:
        if name in ("dev_pack", "opera"):
            resolved += [spec.name for spec in list_tasks(name)]
        elif name == "headroom":
            resolved += [spec.name for spec in list_tasks("dev_pack") if spec.headroom]
        elif name.lower() in by_id:
            resolved.append(by_id[name.lower()])
        else:
            resolved.append(get_task(name).name)
    return list(dict.fromkeys(resolved))


def _policy(data: TaskData, override: str) -> SplitPolicy:
    if override not in SPLIT_OVERRIDES:
        raise ValueError(f"--split_policy must be one of {SPLIT_OVERRIDES}, got {override!r}.")
    if override == "suggested":
        return SplitPolicy(kind="column", column="suggested_split", train_values=("train",), test_values=("val",))
    if override == "kfold":
        return SplitPolicy(kind="group_kfold")
    return data.spec.split


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def run_evaluation(args: EvalArguments) -> dict[str, Any]:
    """
    Evaluate every model on every task with the same splits and write the output folder.

    Returns:
        The payload written to `results.json`.
    """
    if not args.models:
        raise ValueError("Pass at least one model folder (or baseline: logmel-stats, random:<folder>) with --models.")
    started = time.time()
    specs: list[ModelSpec] = resolve_models(args.models, args.model_names, args.add_baselines)
    names = [spec.name for spec in specs]
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if args.quiet else print

    # Tasks and splits first: identical for every model, and missing data fails before any embedding is computed.
    datasets: dict[str, TaskData] = {}
    splits: dict[str, list] = {}
    for task_name in resolve_task_names(args.tasks):
        data = load_task(task_name, dev_pack=args.dev_pack, data_root=args.data_root, max_recordings=args.max_per_task)
        # Recordings on no side of any split (a transfer task's unused target rows) are neither embedded nor counted.
        datasets[task_name], splits[task_name] = restrict_to_splits(
            data, make_splits(data, _policy(data, args.split_policy), args.seeds))
    task_records = {
        name: {"name": name, "description": d.spec.description, "kind": d.spec.kind, "metric": d.spec.metric,
               "family": d.spec.family, "opera_id": d.spec.opera_id, "classes": d.classes,
               "headroom": d.spec.headroom,
               "num_recordings": len(d), "num_groups": len(set(d.groups)),
               "split_policy": asdict(_policy(d, args.split_policy)), "num_splits": len(splits[name]),
               "notes": d.spec.notes}
        for name, d in datasets.items()
    }

    results: list[dict[str, Any]] = []
    extras: list[dict[str, Any]] = []
    embeddings: dict[tuple[str, str], np.ndarray] = {}
    pooled_predictions: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    warnings_out: list[str] = []
    for spec in specs:
        with open_embedder(spec, device=args.device, batch_size=args.batch_size, window_seconds=args.window_seconds,
                           hop_seconds=args.hop_seconds, autocast_dtype=args.autocast_dtype,
                           decode_workers=args.decode_workers, cache_dir=False if args.no_cache else args.cache_dir,
                           show_progress=not args.quiet) as embedder:
            _evaluate_model(spec, embedder, args, datasets, splits, results, extras, embeddings, pooled_predictions,
                            warnings_out, say)

    summary = headroom_summary(results, names, list(task_records.values()))
    payload = {
        "models": [spec.to_dict() for spec in specs],
        "tasks": list(task_records.values()),
        "results": results,
        "summary": {"mean_auroc_over_tasks_with_headroom": summary},
        "retrieval_zero_shot": extras,
        "leakage_warnings": warnings_out,
        # Per model: "checked", "not checked" (with the reason: never to be read as "no leakage") or "not applicable".
        "leakage_checks": {spec.name: leakage_summary(results, spec.name) for spec in specs},
        "settings": _recorded_settings(args),
        "wall_time_s": round(time.time() - started, 1),
    }
    write_json(output / "results.json", payload)
    labels = {spec.name: spec.label for spec in specs}
    table = markdown_table(results, names, list(task_records.values()), labels)
    retrieval_table = _retrieval_markdown(extras)
    baselines = [spec for spec in specs if spec.baseline]
    baseline_text = ("Baselines (marked \"(baseline)\"): " + "; ".join(
        f"{spec.name}: {BASELINE_DESCRIPTIONS[spec.kind]}" for spec in baselines) + ".\n\n") if baselines else ""
    (output / "results.md").write_text(
        "# Linear-probe comparison\n\nMean ± std over seeds/folds (patient-grouped splits); best per row in bold. "
        "Pooled scores with bootstrap CIs are in results.json. The last row averages each model's AUROC over the "
        "classification tasks with headroom (`headroom` yes) that every model was scored on.\n\n"
        + baseline_text + table
        + (("\n## Retrieval and zero-shot\n\n" + RETRIEVAL_NOTE + retrieval_table) if retrieval_table else "")
        + ("\n## Leakage warnings\n\n" + "\n".join(f"- {w}" for w in warnings_out) + "\n" if warnings_out else ""),
        encoding="utf-8",
    )
    # Model-card metadata only for real model folders (logmel-stats and random weights have no model card).
    carded = [spec.name for spec in specs if spec.kind in ("model", "start")]
    write_model_index(output / "model_index.yaml", carded, results, task_records)
    if args.update_model_cards:
        for spec in specs:
            if spec.kind == "model" and update_model_card(spec.folder, spec.name, results, task_records, table):
                say(f"Evaluation written into the model card {Path(spec.folder) / 'README.md'}.")
    if args.plots:
        _write_plots(output, results, task_records, datasets, embeddings, pooled_predictions, args.projection)
    say("\n" + table)
    for message in warnings_out:
        say(message)
    say(f"Results written to {output.resolve()} ({payload['wall_time_s']} s).")
    return payload


RETRIEVAL_NOTE = (
    "Audio and text projections are compared by cosine through each folder's readout (`readout` column): `cosine` "
    "for InfoNCE-trained heads; for CKA-trained heads a map fitted on the alignment training pairs "
    "(`procrustes` or `ridge`, in `alignment/readout.json`), since CKA leaves rotations and shifts of either "
    "projection free. CKA-trained heads without a readout are reported as not valid.\n\n"
)
def _recorded_settings(args: EvalArguments) -> dict[str, Any]:
    """The settings as results.json records them: folders relative to the working directory where possible."""
    settings = asdict(args)
    for key in ("output_dir", "dev_pack", "data_root", "cache_dir"):
        if settings.get(key):
            settings[key] = local_display_path(settings[key])
    return settings


BASELINE_DESCRIPTIONS = {
    "logmel-stats": "per-mel-bin mean and std of the reference log-mel spectrogram (no network)",
    "random": "the same architecture with random weights (seed 0)",
    "start": "the starting encoder the aligned model was trained from, frozen",
}


def _evaluate_model(spec: ModelSpec, embedder, args: EvalArguments, datasets: dict[str, TaskData], splits: dict,
                    results: list, extras: list, embeddings: dict, pooled_predictions: dict, warnings_out: list,
                    say) -> None:
    """Probe one column on every task (refusing tasks it was aligned on), appending to the shared records."""
    grid = [args.probe_c] if args.probe_c is not None else None
    model_name = spec.name
    # Only a real model folder can have been aligned on anything (and have alignment heads).
    model_dir = spec.folder if spec.kind in ("model", "start") else None
    trained = load_trained_recordings(model_dir) if model_dir is not None else None
    space = (AlignedSpace(model_dir, device=embedder.device)
             if model_dir is not None and args.retrieval and has_alignment_heads(model_dir) else None)
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
            warnings_out.append(message)
            say("!" * 100 + "\n" + message + "\n" + "!" * 100)
            if args.refuse_leakage:
                record["status"] = "refused (leakage)"
                results.append(record)
                continue
        features = embedder.embed_files(data.paths, desc=f"{model_name} / {task_name}")
        embeddings[(model_name, task_name)] = features
        probe = run_probe(features, data, splits[task_name], model_name=model_name, grid=grid,
                          bootstrap_samples=args.bootstrap_samples, confidence_level=args.confidence_level)
        record.update(probe.to_dict())
        results.append(record)
        if data.spec.kind == "classification":
            pooled_predictions.setdefault(task_name, {})[model_name] = (
                data.labels[probe.test_indices], probe.test_scores)
        say(f"{model_name:>24s} | {task_name:24s} {METRIC_LABELS.get(probe.metric)} {probe.mean:.3f} ± {probe.std:.3f}"
            f"  (pooled {probe.pooled[probe.metric]:.3f}, CI {probe.pooled.get(probe.metric + '_ci_low', float('nan')):.3f}"
            f"–{probe.pooled.get(probe.metric + '_ci_high', float('nan')):.3f})")
        if space is not None and data.spec.kind == "classification":
            extras.append(_retrieval_and_zero_shot(space, features, data, test_indices, model_name, leakage))


def _retrieval_and_zero_shot(space: AlignedSpace, features: np.ndarray, data: TaskData, test_indices: list[int],
                             model_name: str, leakage: dict) -> dict[str, Any]:
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


def _number(value: float | None, digits: int) -> str:
    """A table cell: the value, or "–" where it was not measured (trivial cut-off, skipped, undefined)."""
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _retrieval_markdown(extras: list[dict[str, Any]]) -> str:
    if not extras:
        return ""
    lines = ["| task | model | audio→report R@1/5/10 | report→audio R@1/5/10 | zero-shot AUROC | zero-shot acc. | "
             "readout |", "|---|---|---|---|---|---|---|"]
    for record in extras:
        readout = record.get("readout") or {}
        if readout.get("valid") is False:
            lines.append(f"| {record['task']} | {record['model']} | " + " | ".join([NOT_VALID_NO_READOUT] * 4)
                         + f" | none ({readout.get('alignment_loss')} heads) |")
            continue
        retrieval = record.get("retrieval", {})
        a2r = retrieval.get("audio_to_report", {})
        r2a = retrieval.get("report_to_audio", {})
        zero = record.get("zero_shot", {})
        lines.append(f"| {record['task']} | {record['model']} | "
                     + "/".join(_number(a2r.get(f"R@{k}"), 2) for k in (1, 5, 10)) + " | "
                     + "/".join(_number(r2a.get(f"R@{k}"), 2) for k in (1, 5, 10)) + " | "
                     + f"{_number(zero.get('roc_auc'), 3)} | {_number(zero.get('accuracy'), 3)} | "
                     + f"{readout.get('kind') or '–'} |")
    return "\n".join(lines) + "\n"


def _write_plots(output: Path, results, task_records, datasets, embeddings, pooled_predictions, projection) -> None:
    from .plots import plot_projection, plot_roc_curves, plot_score_bars

    folder = output / "plots"
    folder.mkdir(exist_ok=True)
    for metric in sorted({t["metric"] for t in task_records.values()}):
        table: dict[str, dict[str, dict[str, float]]] = {}
        for record in results:
            if record["metric"] == metric and record["status"] == "ok":
                table.setdefault(record["task"], {})[record["model"]] = {"mean": record["mean"], "std": record["std"]}
        if table:
            plot_score_bars(table, folder / f"{metric}_bars.png", METRIC_LABELS.get(metric, metric))
    for task_name, curves in pooled_predictions.items():
        plot_roc_curves(curves, folder / f"roc_{_safe(task_name)}.png", task_name, task_records[task_name]["classes"])
    for (model_name, task_name), features in embeddings.items():
        data = datasets[task_name]
        if len(features) >= 5:
            plot_projection(features, data.labels, data.classes,
                            folder / f"embedding_{_safe(task_name)}_{_safe(model_name)}.png",
                            f"{task_name} / {model_name}", projection)


__all__ = ["EvalArguments", "describe_tasks", "resolve_task_names", "run_evaluation"]
