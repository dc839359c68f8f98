"""Does a task's test side share recordings or patients with the data a model was aligned on?

An acula output folder lists its alignment recordings in `aligned_recordings.jsonl`: the sha256 of each file, its
path relative to the training manifest's folder and its patient (`group_id`). Test recordings are matched on the
hash, so the check holds wherever the data lives now (moved, mounted elsewhere, another machine), and patients on
`group_id`. The check uses `acula_train.leakage.find_overlap`, the function the training-side guard uses.

Where no such check is possible the result says "not checked", never "no leakage":

- a folder without the list (a model not trained by acula, or an older acula run that recorded only the absolute
  paths of its recordings in `reports.jsonl`): those paths (and the patients of a training manifest that is still
  where `data_summary.json` says) are still compared, and an overlap they find is leakage, but finding none proves
  nothing, since the same recordings may now live under another folder;
- a list with recordings whose file could not be read when it was written (no hash): an overlap is leakage,
  finding none is "not checked".

Baselines without trained weights (`logmel-stats`, random initialisations) were aligned on nothing: "not applicable".
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acula_train.leakage import (
    ALIGNED_RECORDINGS_FILE,
    SHA256_COLUMN,
    find_overlap,
    read_aligned_recordings,
)
from acula_train.manifest import Manifest, load_manifest

from .tasks import TaskData

# Values of a leakage record's "status".
LEAKED, NO_OVERLAP, NOT_CHECKED, NOT_APPLICABLE = "leaked", "no overlap", "not checked", "not applicable"
PATHS_ONLY = (f"no {ALIGNED_RECORDINGS_FILE} (the content hashes of the aligned recordings, which current "
              "train_acula.py runs write): the recordings are listed by absolute paths of the training machine, which "
              "miss the same recordings stored under another folder")


@dataclass
class TrainedRecordings:
    """
    What a model folder says it was aligned on.

    Args:
        manifest ([`Manifest`], *optional*): the aligned recordings (with `sha256` and / or `group_id` columns);
            `None` when the folder lists none.
        method (`str`, *optional*): `"sha256"` (the folder's `aligned_recordings.jsonl`: a complete check) or
            `"path"` (only the absolute paths an older run recorded: an overlap is leakage, none proves nothing).
        reason (`str`, *optional*): why a check is impossible or incomplete.
    """

    manifest: Manifest | None
    method: str | None = None
    reason: str | None = None

    def __len__(self) -> int:
        return 0 if self.manifest is None else len(self.manifest)


def _path_listing(folder: Path) -> Manifest | None:
    """The recordings an older acula folder lists by absolute path (`reports.jsonl`, `path`), with `group_id` from
    its training manifest when that is still where `data_summary.json` says."""
    reports = folder / "reports.jsonl"
    if not reports.is_file():
        return None
    paths = []
    with open(reports, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not record.get("path") or not os.path.isabs(record["path"]):
                # Current runs name recordings relative to their manifest (no absolute path): not a listing by path.
                return None
            paths.append(os.path.realpath(record["path"]))
    groups: dict[str, Any] = {}
    summary = folder / "data_summary.json"
    if summary.is_file():
        source = json.loads(summary.read_text(encoding="utf-8")).get("manifest")
        if source and Path(source).is_absolute() and Path(source).exists():
            manifest = load_manifest(source, check_files=False)
            for path, row in zip(manifest.audio_paths, manifest.rows):
                groups[os.path.realpath(path)] = row.get("group_id")
    rows = [{"file": path, "group_id": groups.get(path)} for path in paths]
    return Manifest(rows=rows, root=Path("/"), source=reports, audio_paths=[Path(p) for p in paths])


def load_trained_recordings(model_dir: str | os.PathLike) -> TrainedRecordings:
    """
    The recordings a model folder was aligned on.

    Args:
        model_dir (`str` or `os.PathLike`): a model folder.

    Returns:
        [`TrainedRecordings`]: from `aligned_recordings.jsonl` (matched by content), else from the absolute paths of
        an older run's `reports.jsonl` (matched by path, incomplete), else none, each with the reason a check is
        impossible or incomplete.
    """
    folder = Path(model_dir)
    listing = folder / ALIGNED_RECORDINGS_FILE
    if listing.is_file():
        manifest = read_aligned_recordings(listing)
        unhashed = sum(not row.get(SHA256_COLUMN) for row in manifest.rows)
        reason = (f"{unhashed} of {len(manifest)} aligned recordings have no content hash in {listing.name} (their "
                  "files could not be read when the folder was written)") if unhashed else None
        return TrainedRecordings(manifest, "sha256", reason)
    old = _path_listing(folder)
    if old is not None:
        return TrainedRecordings(old, "path", f"{folder.name} has {PATHS_ONLY}")
    return TrainedRecordings(None, None, (
        f"{folder.name} lists no aligned recordings ({ALIGNED_RECORDINGS_FILE}): not trained by acula, or written "
        "before it recorded them"))


def training_manifest(model_dir: str | os.PathLike) -> Manifest | None:
    """
    The recordings a model folder was aligned on (see [`load_trained_recordings`]), with `sha256` and `group_id`
    where recorded; `None` when the folder lists none.

    Args:
        model_dir (`str` or `os.PathLike`): a model folder.
    """
    return load_trained_recordings(model_dir).manifest


def not_applicable(reason: str) -> dict[str, Any]:
    """The leakage record of a column with no trained weights (nothing was aligned, so nothing can have leaked)."""
    return {"status": NOT_APPLICABLE, "checked": False, "leaked": False, "method": None, "reason": reason,
            "recordings": 0, "patients": 0, "patients_checked": False, "examples": []}


def check_leakage(trained: TrainedRecordings | Manifest | None, data: TaskData,
                  test_indices: Sequence[int]) -> dict[str, Any]:
    """
    Count the test recordings of a task that were aligned on (same file content, or same path for an older run) or
    whose patient was (same `group_id`).

    Args:
        trained ([`TrainedRecordings`] or [`Manifest`], *optional*): from [`load_trained_recordings`] (a bare
            [`Manifest`] is matched by content when it has a `sha256` column, else by path); `None` means unknown.
        data (`TaskData`): the task.
        test_indices (`Sequence[int]`): recordings on a test side of any split.

    Returns:
        `{"status", "checked", "leaked", "method", "reason", "recordings", "patients", "patients_checked",
        "examples"}`. `status` is `"leaked"`, `"no overlap"` or `"not checked"`; `leaked` is `None` when not
        checked (unknown, never "no leakage"); `reason` says why a check was impossible or incomplete.
    """
    if not isinstance(trained, TrainedRecordings):
        if trained is None:
            trained = TrainedRecordings(None, None, "the model folder lists no aligned recordings")
        else:
            by_content = SHA256_COLUMN in trained.columns
            trained = TrainedRecordings(trained, "sha256" if by_content else "path",
                                        None if by_content else f"the listing has {PATHS_ONLY}")
    if trained.manifest is None:
        return {"status": NOT_CHECKED, "checked": False, "leaked": None, "method": None, "reason": trained.reason,
                "recordings": 0, "patients": 0, "patients_checked": False, "examples": []}
    test_indices = list(test_indices)
    test = data.as_manifest(test_indices)
    by_content = trained.method == "sha256"
    overlap = find_overlap(test, trained.manifest, group_column="group_id", by_content=by_content,
                           by_path=not by_content)
    flagged = sorted(set(overlap["recording"]) | set(overlap["group"]))
    complete = by_content and trained.reason is None
    leaked = bool(flagged)
    status = LEAKED if leaked else (NO_OVERLAP if complete else NOT_CHECKED)
    reason = trained.reason
    if status == NOT_CHECKED:
        reason = f"{reason}; no overlap found, which proves nothing"
    return {
        "status": status,
        "checked": status != NOT_CHECKED,
        "leaked": leaked if status != NOT_CHECKED else None,
        "method": trained.method,
        "reason": reason,
        "recordings": len(overlap["recording"]),
        "patients": len({data.groups[test_indices[i]] for i in overlap["group"]}),
        "patients_checked": "group_id" in trained.manifest.columns and any(
            row.get("group_id") for row in trained.manifest.rows),
        "examples": [str(data.paths[test_indices[i]]) for i in flagged[:3]],
    }


__all__ = ["TrainedRecordings", "check_leakage", "load_trained_recordings", "not_applicable", "training_manifest"]
