"""Writing an evaluation: `results.json`, the Markdown comparison table and the model-card `model-index`.

Each of the three says, per model, whether its test recordings were checked against the recordings it was aligned
on ([`leakage_summary`]): "checked", "not checked" (with the reason) or "not applicable" (no trained weights).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modeling_acula.file_utils import write_json_atomic

from .retrieval import NOT_VALID_NO_READOUT

LOWER_IS_BETTER = {"mae", "mape"}
METRIC_LABELS = {"roc_auc": "AUROC", "mae": "MAE", "mape": "MAPE"}


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Atomic JSON write (a killed run never leaves half a file)."""
    write_json_atomic(path, payload)
    return Path(path)


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def _ci(record: Mapping[str, Any]) -> str:
    """A cell's pooled bootstrap interval, ` [low, high]`, or "" where there is none."""
    metric, pooled = record.get("metric"), record.get("pooled") or {}
    low, high = pooled.get(f"{metric}_ci_low"), pooled.get(f"{metric}_ci_high")
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return ""
    return f" [{low:.3f}, {high:.3f}]"


def _count(task: Mapping[str, Any]) -> str:
    """The `n` cell: recordings, or units (patients) and their recordings for a pooled task."""
    unit = task.get("unit", "recording")
    if unit == "recording" or task.get("num_units") is None:
        return str(task.get("num_recordings", ""))
    return f"{task['num_units']} {unit.replace('_id', '')}s ({task.get('num_recordings', '?')} rec.)"


def _headroom_task(task: Mapping[str, Any]) -> bool:
    return bool(task.get("headroom", True)) and task.get("kind", "classification") == "classification" \
        and task["metric"] == "roc_auc"


def headroom_summary(results: Sequence[Mapping[str, Any]], models: Sequence[str],
                     tasks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """
    The mean over the classification (AUROC) tasks with headroom of each model's per-task mean AUROC.

    `mean_auroc` averages, for every model, the same tasks: those with headroom that every model scored (a refused,
    failed or leaked cell takes its task out for all models, so the column means stay comparable); `own` gives each
    model's mean over all the headroom tasks it scored (leaked scores never count).

    Returns:
        `{"tasks_with_headroom": [...], "common_tasks": [...], "mean_auroc": {model: float | None},
        "own": {model: {"mean": float | None, "tasks": [...]}}}`.
    """
    eligible = [task["name"] for task in tasks if _headroom_task(task)]
    scored = {
        (r["task"], r["model"]): float(r["mean"]) for r in results
        if r["task"] in eligible and r.get("status", "ok") == "ok" and not r.get("leakage", {}).get("leaked")
        and r.get("mean") is not None and math.isfinite(r["mean"])
    }
    common = [task for task in eligible if all((task, model) in scored for model in models)]
    summary: dict[str, Any] = {"tasks_with_headroom": eligible, "common_tasks": common, "mean_auroc": {}, "own": {}}
    for model in models:
        summary["mean_auroc"][model] = (sum(scored[(t, model)] for t in common) / len(common)) if common else None
        own = [task for task in eligible if (task, model) in scored]
        summary["own"][model] = {"mean": (sum(scored[(t, model)] for t in own) / len(own)) if own else None,
                                 "tasks": own}
    return summary


def leakage_summary(results: Sequence[Mapping[str, Any]], model: str) -> dict[str, Any] | None:
    """
    One model's leakage check over its tasks (from the `leakage` record of each of its results).

    Returns:
        `None` when no result carries a leakage status, else `{"status", "method", "reason", "leaked_tasks",
        "unchecked_tasks"}`: `status` is `"not checked"` when the check was impossible on any task (`reason` says
        why; never read as "no leakage"), `"not applicable"` when the model has no trained weights, else
        `"checked"`.
    """
    records = [(r["task"], r["leakage"]) for r in results
               if r["model"] == model and isinstance(r.get("leakage"), Mapping) and r["leakage"].get("status")]
    if not records:
        return None
    statuses = [leakage["status"] for _, leakage in records]
    unchecked = [task for task, leakage in records if leakage["status"] == "not checked"]
    reasons = list(dict.fromkeys(str(leakage["reason"]) for _, leakage in records
                                 if leakage["status"] in ("not checked", "not applicable") and leakage.get("reason")))
    if all(status == "not applicable" for status in statuses):
        status = "not applicable"
    else:
        status = "not checked" if unchecked else "checked"
    methods = list(dict.fromkeys(leakage["method"] for _, leakage in records if leakage.get("method")))
    return {
        "status": status,
        "method": ", ".join(methods) or None,
        "reason": "; ".join(reasons) or None,
        "leaked_tasks": [task for task, leakage in records if leakage["status"] == "leaked"],
        "unchecked_tasks": unchecked if 0 < len(unchecked) < len(records) else [],
    }


def _leakage_cell(summary: Mapping[str, Any] | None) -> str:
    if summary is None:
        return "–"
    if summary["status"] == "not applicable":
        return "n/a (no trained weights)"
    if summary["status"] == "not checked":
        partial = summary["unchecked_tasks"]
        return "**not checked**" + (f" on {len(partial)} task(s)" if partial else "")
    leaked = summary["leaked_tasks"]
    found = f"leakage on {len(leaked)} task(s)" if leaked else "no overlap"
    return f"checked ({summary['method']}): {found}"


def markdown_table(results: Sequence[Mapping[str, Any]], models: Sequence[str], tasks: Sequence[Mapping[str, Any]],
                   labels: Mapping[str, str] | None = None) -> str:
    """
    One row per task, one column per model: mean ± std over seeds/folds and, in brackets, the bootstrap interval of
    the pooled score (test patients resampled), the best model of each row in bold (highest AUROC, lowest MAE);
    refused or failed cells say why. A `headroom` column says which tasks count in the
    last row, the mean AUROC over the tasks with headroom that every model scored ([`headroom_summary`]). Where the
    results carry leakage checks, a `leakage check` row before it says for each model whether its test recordings
    were checked against its aligned recordings, and a note under the table says why a check was impossible.

    Args:
        results (`Sequence[Mapping]`): probe records (`task`, `model`, `metric`, `mean`, `std`, or `status`).
        models (`Sequence[str]`): column order.
        tasks (`Sequence[Mapping]`): task records (`name`, `metric`, `num_recordings`, `headroom`, `kind`).
        labels (`Mapping[str, str]`, *optional*): column header per model (e.g. `"logmel-stats (baseline)"`).
    """
    labels = labels or {}
    by_cell = {(r["task"], r["model"]): r for r in results}
    header = "| task | metric | n | headroom | " + " | ".join(labels.get(m, m) for m in models) + " |"
    lines = [header, "|" + "---|" * (4 + len(models))]
    for task in tasks:
        name, metric = task["name"], task["metric"]
        cells = [by_cell.get((name, model)) for model in models]
        scored = [c["mean"] for c in cells if c is not None and c.get("status", "ok") == "ok"]
        best = (min(scored) if metric in LOWER_IS_BETTER else max(scored)) if scored else None
        texts = []
        for cell in cells:
            if cell is None:
                texts.append("–")
            elif cell.get("status", "ok") != "ok":
                texts.append(str(cell["status"]))
            else:
                text = _fmt(cell["mean"], cell["std"]) + _ci(cell)
                scored_splits, num_splits = cell.get("scored_splits"), cell.get("num_splits")
                if scored_splits == 0:  # no split could be scored on its own (e.g. one patient per fold)
                    text += " (pooled)"
                elif scored_splits is not None and num_splits is not None and scored_splits < num_splits:
                    text += f" ({scored_splits} of {num_splits} splits)"
                if len(scored) > 1 and math.isclose(cell["mean"], best):
                    text = f"**{text}**"
                if cell.get("leakage", {}).get("leaked"):
                    text += " ⚠ leakage"
                texts.append(text)
        headroom = "yes" if _headroom_task(task) else ("no" if task["metric"] == "roc_auc" else "–")
        lines.append(f"| {name} | {METRIC_LABELS.get(metric, metric)} | {_count(task)} | "
                     f"{headroom} | " + " | ".join(texts) + " |")
    leakage = {model: leakage_summary(results, model) for model in models}
    notes = []
    if any(value is not None for value in leakage.values()):
        lines.append("| leakage check | | | | " + " | ".join(_leakage_cell(leakage[m]) for m in models) + " |")
        notes = [f"Leakage not checked for {labels.get(m, m)}: {leakage[m]['reason']}." for m in models
                 if leakage[m] is not None and leakage[m]["status"] == "not checked"]
    summary = headroom_summary(results, models, tasks)
    if summary["tasks_with_headroom"]:
        means = [summary["mean_auroc"][m] for m in models]
        best = max((v for v in means if v is not None), default=None)
        cells = []
        for value in means:
            text = "–" if value is None else f"{value:.3f}"
            if value is not None and len(models) > 1 and math.isclose(value, best):
                text = f"**{text}**"
            cells.append(text)
        count = len(summary["common_tasks"])
        lines.append(f"| mean over tasks with headroom | AUROC | {count} of {len(summary['tasks_with_headroom'])} "
                     f"tasks | yes | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + ("\n" + "\n\n".join(notes) + "\n" if notes else "")


def model_index(model_name: str, results: Sequence[Mapping[str, Any]], tasks: Mapping[str, Mapping[str, Any]]) -> list:
    """The `model-index` entries (Hugging Face model-card metadata) of one model's scored probes; a score on a task
    whose test recordings the model was aligned on (leakage) is left out."""
    from huggingface_hub.repocard_data import eval_results_to_model_index

    entries = eval_results(model_name, results, tasks)
    return eval_results_to_model_index(model_name, entries) if entries else []


def update_model_card(model_dir: str | os.PathLike, model_name: str, results: Sequence[Mapping[str, Any]],
                      tasks: Mapping[str, Mapping[str, Any]], table: str) -> bool:
    """Write a model's probe scores into the card of its output folder (as train_acula.py wrote it): the
    `model-index` metadata (leaked scores left out) and the comparison table, baselines included, in its Evaluation
    section. Returns whether there was a card to update.

    Args:
        model_dir (`str` or `os.PathLike`): the evaluated folder.
        model_name (`str`): the model's column name in `results`.
        results (`Sequence[Mapping]`), tasks (`Mapping`): as `run_evaluation` collects them.
        table (`str`): the Markdown comparison table (results.md's).
    """
    from huggingface_hub import ModelCard

    card_path = Path(model_dir) / "README.md"
    if not card_path.is_file():
        return False
    card = ModelCard.load(card_path)
    entries = eval_results(model_name, results, tasks)
    card.data.eval_results = entries or None
    leakage = leakage_summary(results, model_name)
    if leakage is not None:  # "not checked" scores are published as such, never as free of leakage
        card.data.leakage_check = _leakage_metadata(leakage)
    card.data.model_name = card.data.model_name or model_name
    section = ("Linear probes on frozen embeddings (`eval_acula.py`, patient-grouped splits, mean ± std over "
               f"seeds/folds); this model is the column `{model_name}`, beside its baselines.\n\n{table}")
    head, marker, rest = card.text.partition("## Evaluation")
    if marker:
        following = rest.find("\n## ")
        card.text = head + marker + "\n\n" + section + ("\n" + rest[following:] if following >= 0 else "")
    else:
        card.text += "\n## Evaluation\n\n" + section
    card.save(card_path)
    return True


def eval_results(model_name: str, results: Sequence[Mapping[str, Any]], tasks: Mapping[str, Mapping[str, Any]]) -> list:
    """One model's scored probes as `huggingface_hub.EvalResult`s (leaked scores left out)."""
    from huggingface_hub import EvalResult

    entries = []
    for record in results:
        if record["model"] != model_name or record.get("status", "ok") != "ok":
            continue
        if record.get("leakage", {}).get("leaked"):  # allowed with --no_refuse_leakage: never model-card metadata
            continue
        task = tasks[record["task"]]
        entries.append(EvalResult(
            task_type="audio-classification" if task["kind"] == "classification" else "audio-regression",
            task_name=f"linear probe: {task['description']}",
            dataset_type=f"acula/{task['name']}",
            dataset_name=task["name"],
            dataset_split="test",
            metric_type=record["metric"],
            metric_name=f"{METRIC_LABELS.get(record['metric'], record['metric'])} (mean over {len(record['scores'])} "
                        "seeds/folds)",
            metric_value=round(record["mean"], 4),
            metric_args={"std": round(record["std"], 4)},
        ))
    return entries


def _leakage_metadata(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The model-card metadata form of [`leakage_summary`] (empty fields left out)."""
    return {key: value for key, value in summary.items() if value not in (None, [], "")}


def write_model_index(path: str | os.PathLike, models: Sequence[str], results: Sequence[Mapping[str, Any]],
                      tasks: Mapping[str, Mapping[str, Any]]) -> Path:
    """One YAML document per model (`model-index: [...]` and, where the results carry leakage checks,
    `leakage_check: {status, method, reason, ...}`), ready to paste into each model card's metadata."""
    import yaml

    documents = []
    for model in models:
        document: dict[str, Any] = {"model-index": model_index(model, results, tasks)}
        leakage = leakage_summary(results, model)
        if leakage is not None:
            document["leakage_check"] = _leakage_metadata(leakage)
        documents.append(document)
    Path(path).write_text(yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return Path(path)


# ---------------------------------------------------------------------------------------------------- results.md

BASELINE_DESCRIPTIONS = {
    "logmel-stats": "per-mel-bin mean and std of the reference log-mel spectrogram (no network)",
    "random": "the same architecture with random weights (seed 0)",
    "start": "the starting encoder the aligned model was trained from, frozen",
    "ceiling": "the supervised ceiling: a model folder trained with labels (marked \"(ceiling)\")",
}
RETRIEVAL_NOTE = (
    "Audio and text projections are compared by cosine through each folder's readout (`readout` column): `cosine` "
    "for InfoNCE-trained heads; for CKA-trained heads a map fitted on the alignment training pairs "
    "(`procrustes` or `ridge`, in `alignment/readout.json`), since CKA leaves rotations and shifts of either "
    "projection free. CKA-trained heads without a readout are reported as not valid.\n\n"
)


def _number(value: float | None, digits: int) -> str:
    """A table cell: the value, or "–" where it was not measured (trivial cut-off, skipped, undefined)."""
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def retrieval_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    """The retrieval and zero-shot table (recall@1/5/10 both ways, zero-shot AUROC and accuracy, readout)."""
    if not records:
        return ""
    lines = [("| task | model | audio→report R@1/5/10 | report→audio R@1/5/10 | zero-shot AUROC | zero-shot acc. | "
              "readout |"), "|---|---|---|---|---|---|---|"]
    for record in records:
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


def _signed(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.3f}"


def few_shot_markdown(results: Sequence[Mapping[str, Any]], models: Sequence[str], tasks: Sequence[Mapping[str, Any]],
                      labels: Mapping[str, str] | None = None) -> str:
    """
    The few-label table: for every binary task with few-label probes, one row per labelled-units-per-class size
    (mean ± std of the AUROC over the draws) and a last row with the full probe (mean ± std over seeds/folds).
    """
    labels = labels or {}
    by_cell = {(r["task"], r["model"]): r for r in results}
    lines = ["| task | labels per class | " + " | ".join(labels.get(m, m) for m in models) + " |",
             "|" + "---|" * (2 + len(models))]
    rows = 0
    for task in tasks:
        cells = [by_cell.get((task["name"], model)) for model in models]
        sizes = list(dict.fromkeys(size for cell in cells if cell and cell.get("few_shot") for size in cell["few_shot"]))
        if not sizes:
            continue
        for size in sizes:
            texts = []
            for cell in cells:
                entry = (cell or {}).get("few_shot", {}).get(size)
                if entry is None:
                    texts.append("–")
                elif "skipped" in entry:
                    texts.append("too few")
                else:
                    texts.append(_fmt(entry["mean"], entry["std"]))
            lines.append(f"| {task['name']} | {size} | " + " | ".join(texts) + " |")
            rows += 1
        full = [_fmt(c["mean"], c["std"]) if c and c.get("status", "ok") == "ok" else "–" for c in cells]
        lines.append(f"| {task['name']} | all | " + " | ".join(full) + " |")
    return "\n".join(lines) + "\n" if rows else ""


def paired_markdown(paired: Mapping[str, Any], models: Sequence[str], tasks: Sequence[Mapping[str, Any]],
                    labels: Mapping[str, str] | None = None) -> str:
    """
    The paired differences: one row per task, one column per model other than the reference, each cell the AUROC
    difference model - reference on the same test units with its paired bootstrap interval (test patients
    resampled, the same resample for both); a last row with the mean over the tasks with headroom.
    """
    labels = labels or {}
    reference = paired["reference"]
    compared = [m for m in models if m != reference]
    by_cell = {(r["task"], r["model"]): r for r in paired["tasks"]}
    settings = paired.get("settings", {})
    lines = [f"## aligned − frozen: paired differences against {labels.get(reference, reference)}", "",
             f"AUROC(column) − AUROC({reference}) on the same test units, with a "
             f"{settings.get('confidence_level', 0.95):.0%} paired bootstrap interval: "
             f"{settings.get('bootstrap_samples', '?')} resamples of the test patients (seed "
             f"{settings.get('seed', 0)}), the same resample for both models, both AUROCs recomputed on it. An "
             "interval above 0 means the column is better on these test patients. The mean row resamples the "
             "patients of all its tasks jointly.", "",
             "| task | " + " | ".join(labels.get(m, m) for m in compared) + " |", "|" + "---|" * (1 + len(compared))]
    for task in tasks:
        cells = [by_cell.get((task["name"], model)) for model in compared]
        if not any(cells):
            continue
        texts = ["–" if c is None else f"{_signed(c['difference'])} [{_signed(c['ci_low'])}, {_signed(c['ci_high'])}]"
                 + (" **↑**" if c["ci_low"] > 0 else " **↓**" if c["ci_high"] < 0 else "") for c in cells]
        lines.append(f"| {task['name']} | " + " | ".join(texts) + " |")
    means = paired.get("mean_over_tasks_with_headroom") or {}
    if means:
        count = len(next(iter(means.values()))["tasks"])
        texts = [f"{_signed(means[m]['mean_difference'])} [{_signed(means[m]['ci_low'])}, {_signed(means[m]['ci_high'])}]"
                 if m in means else "–" for m in compared]
        lines.append(f"| mean over {count} tasks with headroom | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(table: str, retrieval: Sequence[Mapping[str, Any]], baselines: Sequence[tuple[str, str]],
                     leakage_warnings: Sequence[str], few_shot: str = "", paired: str = "") -> str:
    """
    The text of `results.md`.

    Args:
        table (`str`): the comparison table ([`markdown_table`]).
        retrieval (`Sequence[Mapping]`): retrieval and zero-shot records ([`retrieval_markdown`]).
        baselines (`Sequence[tuple[str, str]]`): `(column name, kind)` of each baseline (and ceiling) column.
        leakage_warnings (`Sequence[str]`): one line per leaked (model, task).
        few_shot (`str`): the few-label table ([`few_shot_markdown`]), if any.
        paired (`str`): the paired-differences section ([`paired_markdown`]), if any.
    """
    baseline_text = ("Baselines (marked \"(baseline)\") and ceiling: " + "; ".join(
        f"{name}: {BASELINE_DESCRIPTIONS[kind]}" for name, kind in baselines) + ".\n\n") if baselines else ""
    retrieval_table = retrieval_markdown(retrieval)
    return (
        "# Linear-probe comparison\n\nMean ± std over seeds/folds (patient-grouped splits) and, in brackets, the "
        "95% bootstrap interval of the pooled score (test patients resampled; more in results.json); best per row "
        "in bold. The last row averages each model's AUROC over the "
        "classification tasks with headroom (`headroom` yes) that every model was scored on.\n\n"
        + baseline_text + table
        + ("\n" + paired if paired else "")
        + (("\n## Few labels\n\nProbes fitted on a few labelled units (recordings, or patients of a per-patient "
            "task) per class, drawn patient-aware (different patients where a class has enough) from the units every "
            "split trains on (each split's own training side for a K-fold over all patients); AUROC mean ± std over "
            "the draws (the same draws for every model), beside the full probe (`all`).\n\n" + few_shot)
           if few_shot else "")
        + (("\n## Retrieval and zero-shot\n\n" + RETRIEVAL_NOTE + retrieval_table) if retrieval_table else "")
        + ("\n## Leakage warnings\n\n" + "\n".join(f"- {w}" for w in leakage_warnings) + "\n"
           if leakage_warnings else "")
    )


__all__ = ["eval_results", "few_shot_markdown", "headroom_summary", "paired_markdown", "leakage_summary", "markdown_table", "model_index", "results_markdown",
           "retrieval_markdown", "update_model_card", "write_json", "write_model_index"]
