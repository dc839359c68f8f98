"""Does a task's test side share recordings or patients with the data a model was aligned on?

An acula output folder lists its alignment recordings in `reports.jsonl` (`path` per row) and names its manifest
in `data_summary.json`; the manifest supplies the patient (`group_id`) of each of those recordings. The check uses
`modeling_acula.leakage.find_overlap`, the function the training-side guard uses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..leakage import find_overlap
from ..manifest import Manifest, load_manifest
from .tasks import TaskData


def training_manifest(model_dir: str | os.PathLike) -> Manifest | None:
    """
    The recordings a model folder was aligned on, with `group_id` where the training manifest has it.

    Args:
        model_dir (`str` or `os.PathLike`): a model folder.

    Returns:
        [`Manifest`] of the trained recordings, or `None` when the folder lists none (e.g. a model not trained by
        acula): such models cannot be checked.
    """
    folder = Path(model_dir)
    reports = folder / "reports.jsonl"
    if not reports.is_file():
        return None
    paths = []
    with open(reports, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not record.get("path"):
                raise ValueError(f"{reports} line {number}: no 'path' of the trained recording.")
            paths.append(os.path.realpath(record["path"]))
    groups: dict[str, Any] = {}
    summary = folder / "data_summary.json"
    if summary.is_file():
        source = json.loads(summary.read_text(encoding="utf-8")).get("manifest")
        if source and Path(source).exists():
            manifest = load_manifest(source, check_files=False)
            for path, row in zip(manifest.audio_paths, manifest.rows):
                groups[os.path.realpath(path)] = row.get("group_id")
    rows = [{"file": path, "group_id": groups.get(path)} for path in paths]
    return Manifest(rows=rows, root=Path("/"), source=reports, audio_paths=[Path(p) for p in paths])


def check_leakage(trained: Manifest | None, data: TaskData, test_indices: Sequence[int]) -> dict[str, Any]:
    """
    Count the test recordings of a task that were aligned on (same file) or whose patient was (same `group_id`).

    Args:
        trained ([`Manifest`], *optional*): from [`training_manifest`]; `None` means unknown.
        data (`TaskData`): the task.
        test_indices (`Sequence[int]`): recordings on a test side of any split.

    Returns:
        `{"checked": bool, "recordings": n, "patients": n, "leaked": bool, "examples": [...]}`.
    """
    if trained is None:
        return {"checked": False, "recordings": 0, "patients": 0, "leaked": False, "examples": []}
    test_indices = list(test_indices)
    overlap = find_overlap(data.as_manifest(test_indices), trained, group_column="group_id")
    flagged = sorted(set(overlap["recording"]) | set(overlap["group"]))
    return {
        "checked": True,
        "recordings": len(overlap["recording"]),
        "patients": len({data.groups[test_indices[i]] for i in overlap["group"]}),
        "leaked": bool(flagged),
        "examples": [str(data.paths[test_indices[i]]) for i in flagged[:3]],
    }


__all__ = ["check_leakage", "training_manifest"]
