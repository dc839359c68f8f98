"""What an output folder may say about the machine it was written on.

An output folder is made to be pushed to the Hub, so nothing in it may carry an absolute path of the training
machine (which names its folders, and often its user). Recordings are named by their path relative to the
manifest's folder, the manifest and other local files by their file name, a local starting encoder by its path
relative to the output folder's parent (a sibling folder, e.g. `outputs/start`) or else its folder name, and
caches not at all. Hub ids are kept as they are.

Checkpoints (`checkpoints/`, never uploaded) keep absolute paths: a resume compares them. So does the hidden
`.acula-local.json` ([`write_local_record`]; hidden files are never uploaded either): it says where the run's data
was on this machine, so that local tools (refitting a readout from `reports.jsonl`) still find the recordings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .model_card import hub_id_or_none

# Local-only record of an output folder (hidden: `push_to_hub` skips it): where the run's data was on this machine.
LOCAL_RECORD_FILE = ".acula-local.json"


def manifest_relative_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """
    How an output folder names a recording: its POSIX path relative to the manifest's folder, or, for a recording
    outside that folder, its file name only (a path climbing out of it would name the machine's folders).

    Args:
        path (`str` or `os.PathLike`): the recording (as the manifest resolved it).
        root (`str` or `os.PathLike`): the folder the manifest's relative paths resolve against
            (`Manifest.root`).
    """
    path, root = Path(path), Path(root)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def public_name(value: Any) -> str | None:
    """A Hub id as it is; a local path (absolute, relative or `~`) by its last component; `None` stays `None`."""
    if value is None or value == "":
        return None
    value = str(value)
    return hub_id_or_none(value) or Path(value).expanduser().name


def public_location(value: Any, base: str | os.PathLike | None = None) -> str | None:
    """
    A Hub id as it is; a local path relative to `base` when it lies inside it, else by its last component.

    Args:
        value (`Any`): a Hub id or local path (or `None`).
        base (`str` or `os.PathLike`, *optional*): e.g. the output folder's parent, so that a starting encoder in a
            sibling folder (`outputs/stage0/alignment` beside `outputs/acula`) is recorded as `stage0/alignment`.
    """
    if value is None or value == "":
        return None
    if hub_id_or_none(value):
        return str(value)
    path = Path(str(value)).expanduser().resolve()
    if base is not None:
        try:
            return path.relative_to(Path(base).expanduser().resolve()).as_posix()
        except ValueError:
            pass
    return path.name


def _scrub(value: Any) -> Any:
    """Any absolute path left in a JSON-able value, by its last component (a safety net for settings that name
    files but have no rule of their own)."""
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        return Path(value).expanduser().name
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items()}
    return value


def public_training_args(args: Mapping[str, Mapping[str, Any]], output_dir: str | os.PathLike) -> dict[str, Any]:
    """
    The argument dump of a run (`{"data": ..., "model": ..., "training": ...}`) as `training_args.json` records it:
    the manifest and `--exclude` lists by file name, a local `--init_from` / `--teacher` / `--rewrite_model`
    relative to the output folder's parent (or by folder name), `--output_dir` by its folder name, no cache folder.

    Args:
        args (`Mapping`): the three argument groups as dicts (`dataclasses.asdict`; the training group by
            `TrainingArguments.to_dict`, which masks tokens).
        output_dir (`str` or `os.PathLike`): the run's output folder.
    """
    output_dir = Path(output_dir)
    siblings = output_dir.expanduser().resolve().parent
    data, model, training = (dict(args.get(group) or {}) for group in ("data", "model", "training"))
    if "manifest" in data:
        data["manifest"] = public_name(data["manifest"])
    if "exclude" in data:
        data["exclude"] = [public_name(path) for path in data["exclude"] or []]
    if "cache_dir" in data:
        data["cache_dir"] = None  # where the caches were says nothing about the model
    for group, key in ((data, "rewrite_model"), (model, "init_from"), (model, "teacher")):
        if key in group:
            group[key] = public_location(group[key], siblings)
    if "output_dir" in training:
        training["output_dir"] = output_dir.name
    if training.get("resume_from_checkpoint") not in (None, "latest"):
        training["resume_from_checkpoint"] = public_name(training["resume_from_checkpoint"])
    public = {key: value for key, value in args.items() if key not in ("data", "model", "training")}
    public.update(data=data, model=model, training=training)
    return _scrub(public)


def public_teacher_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The teacher identity as `teacher.json` records it: a local teacher folder by its name (its `content_hash`
    identifies the weights); a Hub id as it is."""
    public = dict(identity)
    if public.get("name_or_path"):
        public["name_or_path"] = public_name(public["name_or_path"])
    return _scrub(public)


def scrub_config_paths(config: Any) -> None:
    """Replace, in place, the local paths that a model config would save (`_name_or_path` of a wrapped backbone's
    config, a local `teacher_name_or_path`) by their public names."""
    for current in (config, getattr(config, "audio_backbone_config", None)):
        if current is None:
            continue
        for attribute in ("_name_or_path", "teacher_name_or_path"):
            value = getattr(current, attribute, None)
            if value:
                setattr(current, attribute, public_name(value))


def public_row_label(manifest: Any, index: int) -> str:
    """Where a manifest row came from, with the manifest named by its file name: `metadata.csv line 12`."""
    return f"{Path(manifest.source).name} {manifest.row_label} {manifest.row_numbers[index]}"


def local_display_path(path: str | os.PathLike, start: str | os.PathLike | None = None) -> str:
    """
    A path as a results file kept in a repository records it: relative to `start` (default: the working directory)
    when both lie under the same top-level folder (`outputs/acula`, `../shared/data/auscultation-dev`), else
    absolute (a relative path climbing to `/` would name the machine's folders all the same).

    Args:
        path (`str` or `os.PathLike`): the path.
        start (`str` or `os.PathLike`, *optional*): the folder it is made relative to.
    """
    path = Path(path).expanduser().resolve()
    start = Path(start or os.getcwd()).expanduser().resolve()
    if os.path.commonpath([path, start]) == path.anchor:
        return str(path)
    return Path(os.path.relpath(path, start)).as_posix()


def write_local_record(folder: str | os.PathLike, manifest: Any) -> None:
    """
    Record, in the hidden `.acula-local.json` of an output folder (never uploaded), the absolute location of the
    run's manifest and of the folder its recordings' relative paths (`reports.jsonl`) resolve against.

    Args:
        folder (`str` or `os.PathLike`): the output folder (or its staging copy).
        manifest ([`~acula_train.manifest.Manifest`]): the alignment manifest.
    """
    from modeling_acula.file_utils import write_json_atomic

    write_json_atomic(Path(folder) / LOCAL_RECORD_FILE, {"manifest": str(Path(manifest.source).resolve()),
                                                         "data_root": str(Path(manifest.root).resolve())})


def recorded_data_root(folder: str | os.PathLike) -> Path | None:
    """The folder the recordings of an output folder's `reports.jsonl` resolve against on the machine that trained
    it ([`write_local_record`]); `None` for a folder without the record (e.g. downloaded from the Hub) or when that
    folder no longer exists."""
    record = Path(folder) / LOCAL_RECORD_FILE
    try:
        root = json.loads(record.read_text(encoding="utf-8")).get("data_root")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(root) if root and Path(root).is_dir() else None


__all__ = [
    "LOCAL_RECORD_FILE",
    "local_display_path",
    "manifest_relative_path",
    "public_location",
    "public_name",
    "public_row_label",
    "public_teacher_identity",
    "public_training_args",
    "recorded_data_root",
    "scrub_config_paths",
    "write_local_record",
]
