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
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .file_utils import file_sha256
from .manifest import Manifest, load_manifest

logger = logging.getLogger(__name__)

RULES = ("split", "recording", "group")


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
        if self.exclude_sources:
            lines.append(f"  recording rule: {counts['recording']} rows whose audio file is in an excluded manifest")
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


def recording_keys(manifest: Manifest, *, by_content: bool = False) -> list[str]:
    """
    One key per row that identifies its recording: the real absolute path (symlinks resolved), or with
    `by_content=True` the sha256 of the file (finds copies under other names; reads every file).

    Evaluation code uses the same keys to check that no evaluated recording was used for alignment,
    e.g. `set(recording_keys(train)) & set(recording_keys(test))`.

    Args:
        manifest ([`Manifest`]): the rows.
        by_content (`bool`, *optional*, defaults to `False`): key on file content instead of path.
    """
    if by_content:
        keys = []
        for i, path in enumerate(manifest.audio_paths):
            if not path.is_file():
                raise ValueError(f"{manifest.describe_row(i)}: {path} not found; cannot hash its content.")
            keys.append("sha256:" + file_sha256(path))
        return keys
    return [os.path.realpath(path) for path in manifest.audio_paths]


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
) -> dict[str, list[int]]:
    """
    Rows of `manifest` whose recording (key of [`recording_keys`]) or group is also in `other`.

    Args:
        manifest ([`Manifest`]): rows to check.
        other ([`Manifest`]): e.g. an evaluation manifest.
        group_column (`str`, *optional*, defaults to `"group_id"`): patient column; used only when both
            manifests have it. `None` turns the group rule off.
        by_content (`bool`, *optional*, defaults to `False`): also match recordings by file content.

    Returns:
        `{"recording": [...], "group": [...]}`: row indices into `manifest`.
    """
    other_keys = set(recording_keys(other))
    keys = recording_keys(manifest)
    recording = {i for i, key in enumerate(keys) if key in other_keys}
    if by_content:
        other_hashes = set(recording_keys(other, by_content=True))
        hashes = recording_keys(manifest, by_content=True)
        recording |= {i for i, key in enumerate(hashes) if key in other_hashes}
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
    by_content: bool = False,
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
        by_content (`bool`, *optional*, defaults to `False`): also match excluded recordings by file content.

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
