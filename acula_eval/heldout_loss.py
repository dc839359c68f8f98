"""The alignment loss of a trained run on held-out (recording, report) pairs.

The training log records the loss on the batches the run trained on; whether the heads and the encoder learned
something that carries over to recordings they never saw is the same loss on pairs they never saw. Here those pairs
are the rows of a manifest's evaluation split (by default `val`, which the training leakage guard kept out of
alignment), paired with reports written exactly as training writes them ([`~acula_train.reports.build_reports`]:
the template of the run's `--report_fields`, or its `--report_column`, lower-cased where the run lower-cased) and the
run's teacher vectors
(reloaded from `teacher.json`, through the shared teacher cache). The trained heads project both sides
([`~acula_train.readout.pair_projections`], eval mode: no dropout), and the run's own loss module
(`alignment_head` of the saved `AculaForPreTraining`, InfoNCE with its learned temperature) scores batches of the
run's alignment batch size in manifest order. Batch-level losses depend on the batch size, so the batch is the
training one; the last, partial batch is left out, as training drops it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acula_train.dataset import pair_dataset, spectrogram_cache
from acula_train.manifest import Manifest, load_manifest
from acula_train.public_paths import LOCAL_RECORD_FILE, recorded_data_root
from acula_train.readout import load_alignment_model, pair_projections
from acula_train.reports import build_reports
from acula_train.teacher import load_teacher
from acula_train.teacher_cache import TeacherEmbeddingCache
from modeling_acula.feature_extraction_acula import AculaFeatureExtractor
from modeling_acula.file_utils import acula_cache_dir


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not readable ({error}): not a finished train_acula.py output folder.") from error


def training_batch_size(model_dir: str | os.PathLike) -> int:
    """The alignment batch of a finished run: the `alignment_batch_size` its training log records (every
    micro-batch of a step, on every process), else `per_device_train_batch_size x gradient_accumulation_steps`."""
    folder = Path(model_dir)
    log = folder / "logs" / "train_log.jsonl"
    if log.is_file():
        sizes = [json.loads(line).get("alignment_batch_size") for line in log.read_text().splitlines() if line]
        sizes = [size for size in sizes if size]
        if sizes:
            return int(max(sizes))  # an epoch's last step may be smaller
    training = _read_json(folder / "training_args.json").get("training", {})
    return int(training.get("per_device_train_batch_size", 24)) * int(training.get("gradient_accumulation_steps", 1))


def recorded_manifest(model_dir: str | os.PathLike) -> Path:
    """The manifest a run trained on, as its hidden local record names it."""
    record = Path(model_dir) / LOCAL_RECORD_FILE
    manifest = _read_json(record).get("manifest") if record.is_file() else None
    if not manifest:
        raise ValueError(f"{model_dir} records no training manifest ({LOCAL_RECORD_FILE}): pass the manifest.")
    return Path(manifest)


def heldout_rows(manifest: Manifest, split_column: str, splits: Sequence[str]) -> Manifest:
    """The rows of `manifest` whose `split_column` is one of `splits`, in manifest order.

    Raises:
        `ValueError`: when the column does not exist or no row is in those splits.
    """
    if split_column not in manifest.columns:
        raise ValueError(f"{manifest.source} has no split column {split_column!r} (columns: {manifest.columns}).")
    keep = [i for i, row in enumerate(manifest.rows) if str(row.get(split_column)) in set(splits)]
    if not keep:
        raise ValueError(f"{manifest.source} has no rows with {split_column} in {list(splits)}.")
    return manifest.select(keep)


def _trained_paths(folder: Path) -> set[str]:
    pairs = load_manifest(folder / "reports.jsonl", audio_column="path", report_column="report",
                          root=recorded_data_root(folder), check_files=False)
    return {os.path.realpath(path) for path in pairs.audio_paths}


def heldout_alignment_loss(
    model_dir: str | os.PathLike,
    manifest: str | os.PathLike | None = None,
    *,
    split_column: str = "split",
    splits: Sequence[str] = ("val",),
    batch_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """
    The run's alignment loss on held-out pairs: mean and standard deviation over batches of its training batch size.

    Args:
        model_dir (`str` or `os.PathLike`): a finished output folder of `train_acula.py` (its `alignment/` holds
            the heads and the loss module).
        manifest (`str` or `os.PathLike`, *optional*): the manifest holding the held-out rows (default: the run's
            own training manifest, from its local record).
        split_column (`str`, *optional*, defaults to `"split"`): the manifest's split column.
        splits (`Sequence[str]`, *optional*, defaults to `("val",)`): the held-out splits.
        batch_size (`int`, *optional*): pairs per loss batch (default: the run's alignment batch,
            [`training_batch_size`]); with fewer held-out pairs than that, one batch of all of them.
        cache_dir (`str` or `os.PathLike`, *optional*): the training caches (spectrograms, teacher vectors; default
            as for training).
        device (`str` or `torch.device`, *optional*): where the model and the teacher run (default: CUDA when
            available).
        show_progress (`bool`, *optional*, defaults to `True`): progress bars.

    Returns:
        `dict` with `alignment_loss` (its kind), `mean`, `std` (over batches; 0 for one batch), `batch_losses`,
        `batch_size`, `num_batches`, `num_pairs` (held-out rows used), `num_left_out` (the last partial batch),
        `num_silent` (skipped, as training skips them), `splits` and `reports` (how they were written).

    Raises:
        `ValueError`: when a held-out recording is one the run aligned on, or fewer than 2 pairs remain.
    """
    folder = Path(model_dir)
    data_args = _read_json(folder / "training_args.json").get("data", {})
    manifest_path = Path(manifest) if manifest is not None else recorded_manifest(folder)
    rows = heldout_rows(load_manifest(manifest_path, audio_column=data_args.get("audio_column") or "file",
                                      report_column=data_args.get("report_column")), split_column, splits)
    trained = _trained_paths(folder)
    seen = [rows.describe_row(i) for i, path in enumerate(rows.audio_paths) if os.path.realpath(path) in trained]
    if seen:
        raise ValueError(f"{len(seen)} held-out rows were aligned on by {folder} ({', '.join(seen[:5])}): their "
                         "loss is not a held-out loss.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    root = Path(cache_dir).expanduser() if cache_dir else acula_cache_dir()

    # Spectrograms as training computes and caches them; recordings silent over the window are skipped, as there.
    extractor = AculaFeatureExtractor.from_pretrained(folder)
    spectrograms = spectrogram_cache(root, extractor)
    probe = pair_dataset(rows, extractor, spectrograms, None)
    audible = [i for i in range(len(rows)) if not extractor.is_silent(probe[i]["input_values"])]
    num_silent = len(rows) - len(audible)
    rows = rows.select(audible)

    report_fields = data_args.get("report_fields") or None
    reports, report_stats = build_reports(rows, report_column=data_args.get("report_column"), fields=report_fields)
    if data_args.get("lowercase_reports"):
        reports = [report.lower() for report in reports]
    teacher = load_teacher(folder, device)
    vectors = TeacherEmbeddingCache(root / "teacher", teacher.identity).get_or_compute(
        reports, teacher, show_progress=show_progress)
    del teacher

    model = load_alignment_model(folder, device)
    batch_size = int(batch_size or training_batch_size(folder))
    audio, text = pair_projections(model, pair_dataset(rows, extractor, spectrograms, vectors),
                                   batch_size=min(batch_size, 64), device=device, show_progress=show_progress)
    if len(rows) < 2:
        raise ValueError(f"{len(rows)} held-out pair(s) in {list(splits)}: a batch-level loss needs at least 2.")
    size = min(batch_size, len(rows))
    num_batches = len(rows) // size
    losses = []
    with torch.no_grad():
        for start in range(0, num_batches * size, size):
            batch = slice(start, start + size)
            losses.append(float(model.alignment_head.loss_on_gathered(audio[batch].to(device),
                                                                      text[batch].to(device))))
    source = report_stats["source"]
    if data_args.get("rewrite_model"):  # an LLM rewrite is not repeated here: the held-out side keeps templates
        source += f" (the run rewrote its training reports with {data_args['rewrite_model']}; not repeated)"
    return {
        "alignment_loss": model.config.alignment_loss,
        "mean": float(np.mean(losses)),
        "std": float(np.std(losses)),
        "batch_losses": losses,
        "batch_size": size,
        "num_batches": num_batches,
        "num_pairs": len(rows),
        "num_left_out": len(rows) - num_batches * size,
        "num_silent": num_silent,
        "splits": list(splits),
        "reports": source + (", lower-cased" if data_args.get("lowercase_reports") else ""),
        "report_fields": report_fields,
    }


__all__ = ["heldout_alignment_loss", "heldout_rows", "recorded_manifest", "training_batch_size"]
