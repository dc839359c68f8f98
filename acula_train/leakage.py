"""Keep evaluation recordings out of alignment training.

AcuLa writes reports from labels of datasets that are also evaluation tasks, so a recording (or a
patient) of an evaluation split that is used for alignment inflates every reported number. The guard
removes, before training:

- rows whose split column holds an evaluation split (`val`, `test` by default), and every other row of a patient
  / participant (`group_id`) that has a row in an evaluation split;
- rows whose recording is listed in any `--exclude` manifest, matched by resolved absolute path (and,
  optionally, by file content), and rows of the same patient / participant (`group_id`) when both
  manifests have that column.

With `allow_leakage=True` nothing is removed, but the rows are still counted and a warning is logged.

After training, the output folder lists every aligned recording in `aligned_recordings.jsonl`
([`write_aligned_recordings`]): the sha256 of its bytes, its path relative to the manifest's folder and its
`group_id`. The evaluator matches test recordings on that hash ([`read_aligned_recordings`] + [`find_overlap`]), so
the check holds wherever the data lives when the model is evaluated.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modeling_acula.file_utils import atomic_write, memoized_file_sha256
from .manifest import Manifest, load_manifest
from .public_paths import manifest_relative_path

logger = logging.getLogger(__name__)

RULES = ("split", "recording", "group")
# The list of aligned recordings in an output folder (one JSON object per line: sha256, path, group_id).
ALIGNED_RECORDINGS_FILE = "aligned_recordings.jsonl"
# A manifest column holding each recording's sha256 (e.g. an aligned-recordings list): used instead of the file.
SHA256_COLUMN = "sha256"


@dataclass
class LeakageReport:
    """
    What the leakage guard found and removed.

    Args:
        n_input (`int`): rows before the guard.
        n_kept (`int`): rows after the guard.
        flagged (`dict[str, list[int]]`): for each rule (`split`, `recording`, `group`), the indices (into
            the input manifest) of rows that match it; a row can match several rules.
        allow_leakage (`bool`): whether flagged rows were kept anyway.
        split_column (`str`, *optional*), eval_splits (`tuple[str, ...]`), exclude_sources (`list[str]`),
        group_column (`str`, *optional*): the settings used.
        group_scopes (`list[str]`): what the group rule looked at: `"split"` (patients with rows in an
            evaluation split) and / or `"exclude"` (patients in an excluded manifest).
    """

    n_input: int
    n_kept: int
    flagged: dict[str, list[int]] = field(default_factory=dict)
    allow_leakage: bool = False
    split_column: str | None = None
    eval_splits: tuple[str, ...] = ()
    exclude_sources: list[str] = field(default_factory=list)
    group_column: str | None = None
    group_scopes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Rows matched by each rule."""
        return {rule: len(self.flagged.get(rule, [])) for rule in RULES}

    @property
    def flagged_indices(self) -> list[int]:
        """Rows matched by at least one rule (sorted)."""
        return sorted({i for indices in self.flagged.values() for i in indices})

    @property
    def n_flagged(self) -> int:
        return len(self.flagged_indices)

    @property
    def n_removed(self) -> int:
        return self.n_input - self.n_kept

    def summary(self) -> str:
        """A human-readable summary, e.g. for the training log."""
        counts = self.counts
        action = "kept anyway (allow_leakage=True)" if self.allow_leakage else "removed"
        lines = [
            f"Leakage guard: {self.n_flagged} of {self.n_input} rows overlap evaluation data and were {action}; "
            f"{self.n_kept} rows used for alignment."
        ]
        if self.split_column is not None:
            lines.append(
                f"  split rule: {counts['split']} rows with {self.split_column!r} in {list(self.eval_splits)}"
            )
        else:
            lines.append("  split rule: off (no split column given)")
        if self.exclude_sources or counts["recording"]:
            where = ("an evaluation-split row's or an excluded manifest's" if self.exclude_sources
                     else "an evaluation-split row's")
            lines.append(f"  recording rule: {counts['recording']} rows whose audio file is (or has the same bytes as) "
                         f"{where}")
        else:
            lines.append("  recording rule: off (no excluded manifests)")
        scopes = {"split": f"with rows in {list(self.eval_splits)}", "exclude": "in an excluded manifest"}
        if self.group_scopes and self.group_column:
            where = " or ".join(scopes[scope] for scope in self.group_scopes)
            lines.append(f"  group rule: {counts['group']} other rows of a patient {where}, by {self.group_column!r}")
        elif self.split_column is not None or self.exclude_sources:
            lines.append("  group rule: off (a manifest lacks the group column)")
        else:
            lines.append("  group rule: off (no split column or excluded manifests)")
        if self.exclude_sources:
            lines.append("  excluded manifests: " + ", ".join(self.exclude_sources))
        if self.allow_leakage and self.n_flagged:
            lines.append("  WARNING: alignment uses evaluation recordings; evaluation numbers will be inflated.")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (for the run's metadata)."""
        return {
            "n_input": self.n_input,
            "n_kept": self.n_kept,
            "n_flagged": self.n_flagged,
            "counts": self.counts,
            "allow_leakage": self.allow_leakage,
            "split_column": self.split_column,
            "eval_splits": list(self.eval_splits),
            "exclude_sources": list(self.exclude_sources),
            "group_column": self.group_column,
        }


def recording_keys(manifest: Manifest, *, by_content: bool = False) -> list[str | None]:
    """
    One key per row that identifies its recording: the real absolute path (symlinks resolved), or with
    `by_content=True` the sha256 of the file (finds copies under other names and data moved elsewhere).

    With `by_content=True`, a manifest with a `sha256` column (an aligned-recordings list, see
    [`read_aligned_recordings`]) gives that column's hashes, and its rows without one give `None` (they match
    nothing); other manifests' files are read, once per process (hashes are kept by path, size and mtime).

    Evaluation code uses the same keys to check that no evaluated recording was used for alignment,
    e.g. `set(recording_keys(train)) & set(recording_keys(test))`.

    Args:
        manifest ([`Manifest`]): the rows.
        by_content (`bool`, *optional*, defaults to `False`): key on file content instead of path.
    """
    if not by_content:
        return [os.path.realpath(path) for path in manifest.audio_paths]
    if SHA256_COLUMN in manifest.columns:
        return [f"sha256:{row[SHA256_COLUMN]}" if row.get(SHA256_COLUMN) else None for row in manifest.rows]
    keys: list[str | None] = []
    for i, path in enumerate(manifest.audio_paths):
        if not path.is_file():
            raise ValueError(f"{manifest.describe_row(i)}: {path} not found; cannot hash its content.")
        keys.append("sha256:" + memoized_file_sha256(path))
    return keys


def _group_values(manifest: Manifest, column: str) -> list[str | None]:
    return [None if row.get(column) is None else str(row.get(column)).strip() or None for row in manifest.rows]


def _as_manifest(item: Manifest | str | os.PathLike, audio_column: str) -> Manifest:
    if isinstance(item, Manifest):
        return item
    # An exclude list names recordings; its files need not exist on this machine.
    return load_manifest(item, audio_column=audio_column, check_files=False)


def find_overlap(
    manifest: Manifest,
    other: Manifest,
    *,
    group_column: str | None = "group_id",
    by_content: bool = False,
    by_path: bool = True,
) -> dict[str, list[int]]:
    """
    Rows of `manifest` whose recording (key of [`recording_keys`]) or group is also in `other`.

    Args:
        manifest ([`Manifest`]): rows to check.
        other ([`Manifest`]): e.g. an evaluation manifest, or an aligned-recordings list.
        group_column (`str`, *optional*, defaults to `"group_id"`): patient column; used only when both
            manifests have it. `None` turns the group rule off.
        by_content (`bool`, *optional*, defaults to `False`): also match recordings by file content (sha256).
        by_path (`bool`, *optional*, defaults to `True`): match recordings by resolved path; turn off for a
            manifest whose paths do not point at its files (an aligned-recordings list names them relative to a
            manifest folder on another machine).

    Returns:
        `{"recording": [...], "group": [...]}`: row indices into `manifest`.
    """
    recording: set[int] = set()
    if by_path:
        other_keys = set(recording_keys(other))
        recording |= {i for i, key in enumerate(recording_keys(manifest)) if key in other_keys}
    if by_content:
        other_hashes = set(recording_keys(other, by_content=True)) - {None}
        hashes = recording_keys(manifest, by_content=True)
        recording |= {i for i, key in enumerate(hashes) if key is not None and key in other_hashes}
    group: list[int] = []
    if group_column and group_column in manifest.columns and group_column in other.columns:
        other_groups = {g for g in _group_values(other, group_column) if g is not None}
        group = [i for i, g in enumerate(_group_values(manifest, group_column)) if g is not None and g in other_groups]
    return {"recording": sorted(recording), "group": group}


def apply_leakage_guard(
    manifest: Manifest,
    *,
    split_column: str | None = None,
    eval_splits: Sequence[str] = ("val", "test"),
    exclude_manifests: Iterable[Manifest | str | os.PathLike] = (),
    allow_leakage: bool = False,
    group_column: str | None = "group_id",
    by_content: bool = True,
) -> tuple[Manifest, LeakageReport]:
    """
    Remove rows that belong to evaluation data before alignment training.

    Args:
        manifest ([`Manifest`]): the alignment manifest.
        split_column (`str`, *optional*): column naming each row's split (e.g. `"suggested_split"`); rows whose
            value is in `eval_splits` (case-insensitive) are removed, and so are all rows of their patients (by
            `group_column`, when the manifest has it), whatever split those rows are labelled. Must exist when
            given.
        eval_splits (`Sequence[str]`, *optional*, defaults to `("val", "test")`): evaluation split names.
        exclude_manifests (iterable of [`Manifest`] or paths): evaluation manifests; their recordings (and
            their patients, by `group_column`) are removed.
        allow_leakage (`bool`, *optional*, defaults to `False`): keep flagged rows, still counting them and
            warning loudly.
        group_column (`str`, *optional*, defaults to `"group_id"`): patient / participant column.
        by_content (`bool`, *optional*, defaults to `True`): also match recordings by file content (sha256): a
            row whose file has the same bytes as an evaluation-split row's, or as an excluded recording's, is
            removed under another name too (the dev pack holds such copies, e.g. KAUH `EP77_asthma.flac` in `train`
            is byte-identical to `EP76_normal.flac` in `val`). Costs one read of every file.

    Returns:
        `(kept_manifest, report)`: the manifest without flagged rows (row numbers kept) and a
        [`LeakageReport`].
    """
    if isinstance(eval_splits, str):
        eval_splits = (eval_splits,)
    eval_set = {str(split).strip().lower() for split in eval_splits}
    flagged: dict[str, list[int]] = {rule: [] for rule in RULES}
    if split_column is not None:
        if split_column not in manifest.columns:
            raise ValueError(
                f"manifest {manifest.source}: no split column {split_column!r}; columns are {manifest.columns}."
            )
        flagged["split"] = [
            i
            for i, row in enumerate(manifest.rows)
            if row.get(split_column) is not None and str(row[split_column]).strip().lower() in eval_set
        ]
    sources = []
    group_used: str | None = None
    group_scopes: list[str] = []
    recording: set[int] = set()
    group: set[int] = set()
    if split_column is not None and group_column and group_column in manifest.columns:
        # Other recordings of an evaluation-split patient are that patient's data, whatever split they are labelled.
        groups = _group_values(manifest, group_column)
        eval_groups = {groups[i] for i in flagged["split"] if groups[i] is not None}
        split_rows = set(flagged["split"])
        group.update(i for i, g in enumerate(groups) if g in eval_groups and i not in split_rows)
        group_used = group_column
        group_scopes.append("split")
    if split_column is not None and by_content and flagged["split"]:
        # Byte-identical copies of an evaluation recording under another name (or another patient id).
        hashes = recording_keys(manifest, by_content=True)
        split_rows = set(flagged["split"])
        eval_hashes = {hashes[i] for i in split_rows} - {None}
        recording.update(i for i, h in enumerate(hashes) if i not in split_rows and h in eval_hashes)
    for item in exclude_manifests:
        other = _as_manifest(item, manifest.audio_column)
        sources.append(str(other.source))
        overlap = find_overlap(manifest, other, group_column=group_column, by_content=by_content)
        recording.update(overlap["recording"])
        group.update(overlap["group"])
        if group_column and group_column in manifest.columns and group_column in other.columns:
            group_used = group_column
            if "exclude" not in group_scopes:
                group_scopes.append("exclude")
    flagged["recording"], flagged["group"] = sorted(recording), sorted(group)
    flagged_rows = {i for indices in flagged.values() for i in indices}
    keep = list(range(len(manifest))) if allow_leakage else [i for i in range(len(manifest)) if i not in flagged_rows]
    report = LeakageReport(
        n_input=len(manifest),
        n_kept=len(keep),
        flagged=flagged,
        allow_leakage=allow_leakage,
        split_column=split_column,
        eval_splits=tuple(eval_splits),
        exclude_sources=sources,
        group_column=group_used,
        group_scopes=group_scopes,
    )
    if allow_leakage and flagged_rows:
        message = (
            f"LEAKAGE ALLOWED: {len(flagged_rows)} of {len(manifest)} alignment rows belong to evaluation data "
            f"(split: {report.counts['split']}, recording: {report.counts['recording']}, group: "
            f"{report.counts['group']}); any evaluation on that data is no longer held out."
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        logger.warning(message)
    logger.info(report.summary())
    if not keep:
        raise ValueError(f"leakage guard removed every row of {manifest.source}:\n{report.summary()}")
    return manifest.select(keep), report


def aligned_recording_entries(manifest: Manifest, *, group_column: str | None = "group_id",
                              workers: int = 4) -> list[dict[str, Any]]:
    """
    One entry per row of an alignment manifest, for an output folder's `aligned_recordings.jsonl`: `sha256` (of the
    file's bytes, read in chunks; `None` for a file that can no longer be read, which is logged), `path` (relative to
    the manifest's folder; a recording outside it by its file name) and, when the manifest has that column, the
    patient's `group_id`.

    Args:
        manifest ([`Manifest`]): the rows that were aligned on.
        group_column (`str`, *optional*, defaults to `"group_id"`): patient column recorded with each entry.
        workers (`int`, *optional*, defaults to 4): threads reading files (hashlib releases the GIL).
    """
    def digest(path) -> str | None:
        try:  # through the guard's cache: a training run hashed these files once already, at its start
            return memoized_file_sha256(path)
        except OSError as error:  # the run's folder must still be written: this recording is reported unchecked
            logger.warning("cannot hash %s for %s: %s", path, ALIGNED_RECORDINGS_FILE, error)
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        hashes = list(pool.map(digest, manifest.audio_paths))
    with_groups = bool(group_column) and group_column in manifest.columns
    entries = []
    for row, path, sha256 in zip(manifest.rows, manifest.audio_paths, hashes):
        entry: dict[str, Any] = {SHA256_COLUMN: sha256, "path": manifest_relative_path(path, manifest.root)}
        if with_groups:
            value = row.get(group_column)
            entry[group_column] = None if value is None else str(value).strip() or None
        entries.append(entry)
    return entries


def write_aligned_recordings(path: str | os.PathLike, manifest: Manifest, **kwargs) -> list[dict[str, Any]]:
    """
    Write [`aligned_recording_entries`] of `manifest` as JSON lines to `path` (atomically).

    Returns:
        The entries written.
    """
    entries = aligned_recording_entries(manifest, **kwargs)

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(entry) + "\n" for entry in entries)

    atomic_write(path, write)
    return entries


def read_aligned_recordings(path: str | os.PathLike) -> Manifest:
    """
    An output folder's `aligned_recordings.jsonl` as a [`Manifest`] with a `sha256` column (and `group_id` when
    recorded), for [`find_overlap`] with `by_content=True, by_path=False`: its paths are relative to a manifest
    folder of the training machine, not files here.

    Raises:
        `ValueError`: a line that is not JSON or has no `sha256` field, naming the file and line.
    """
    path = Path(path)
    rows, numbers = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number}: not valid JSON ({error}).") from None
            if not isinstance(entry, dict) or SHA256_COLUMN not in entry:
                raise ValueError(f"{path} line {number}: no {SHA256_COLUMN!r} field of the aligned recording.")
            rows.append({"file": entry.get("path"), **entry})
            numbers.append(number)
    # The paths name files on the training machine: never resolved here (matching is by content).
    return Manifest(rows=rows, root=path.parent, source=path, audio_paths=[path.parent / str(r["file"]) for r in rows],
                    row_numbers=numbers, row_label="line")
