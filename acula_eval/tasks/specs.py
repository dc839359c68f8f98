"""What an evaluation task is ([`TaskSpec`]), where its loader looks ([`LoadContext`]) and the recordings it
yields, ready for probing ([`TaskData`])."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from acula_train.manifest import Manifest

from .split_policy import SplitPolicy


def clean_value(value: Any) -> str | None:
    """A metadata value as stripped text; `None` for a missing or blank one."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def default_circor() -> Path | None:
    """The CirCor DigiScope folder (holding `training_data.csv`) named by `$ACULA_CIRCOR`, if set."""
    value = os.environ.get("ACULA_CIRCOR")
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class LoadContext:
    """Where loaders look for data: the dev pack, the OPERA datasets' root and the CirCor DigiScope folder (the
    official layout, with `training_data.csv`; default `$ACULA_CIRCOR`)."""

    dev_pack: Path | None = None
    data_root: Path | None = None
    circor: Path | None = field(default_factory=default_circor)


@dataclass(frozen=True)
class TaskSpec:
    """
    One evaluation task.

    Args:
        name (`str`): registry key, e.g. `"pascal_murmur"`.
        description (`str`): one line for `--list_tasks` and the results table.
        loader (`Callable[[LoadContext], list[dict]]`): returns one dict per recording with at least `path` and
            `label` (raw value), optionally `group_id`, `split` and metadata columns (used for reports). A row's
            `target`, when present, is its raw value instead of `label` (so that the recording's own `label`
            metadata stays as it is in the reports, e.g. `murmur` where the task asks normal vs abnormal).
        kind (`str`): `"classification"` or `"regression"`.
        label_map (`Mapping[str, str]`, *optional*): raw label -> class name; rows whose raw label is not a key
            are left out (e.g. PASCAL's `artifact` rows in murmur vs normal). `None` keeps raw labels as classes.
        classes (`tuple[str, ...]`, *optional*): class order (the last one is the positive class of a binary task).
        label_descriptions (`Mapping[str, str]`, *optional*): class -> words for zero-shot prompts.
        split (`SplitPolicy`): default split policy.
        metric (`str`): `"roc_auc"` (classification) or `"mae"` (regression; MAPE is reported beside it).
        family (`str`): `"dev_pack"`, `"circor"` (needs `--circor`) or `"opera"`.
        opera_id (`str`, *optional*): task number in the OPERA benchmark table (e.g. `"T10"`).
        source (`str`): dataset citation and address.
        layout (`str`): the files the loader expects under `--data_root` (OPERA tasks).
        notes (`str`): choices made (label definitions, exclusions).
        headroom (`bool`): whether the task can still separate encoders: `False` for tasks that even the log-mel
            statistics baseline (or a random encoder) nearly solves (AUROC >= 0.97 on the dev pack), which are kept
            but left out of the "mean over tasks with headroom" of a results table.
        pool_by (`str`, *optional*): a row column (e.g. `"patient_id"`): the task's unit is then not a recording
            but the set of rows sharing that value (a patient), whose embedding is the mean of its recordings'
            embeddings; the rows of one unit must share the label (and the group). `None`: one recording per unit.
    """

    name: str
    description: str
    loader: Callable[[LoadContext], list[dict[str, Any]]]
    kind: str = "classification"
    label_map: Mapping[str, str] | None = None
    classes: tuple[str, ...] | None = None
    label_descriptions: Mapping[str, str] | None = None
    split: SplitPolicy = field(default_factory=SplitPolicy)
    metric: str = "roc_auc"
    family: str = "dev_pack"
    opera_id: str | None = None
    source: str = ""
    layout: str = ""
    notes: str = ""
    headroom: bool = True
    pool_by: str | None = None


@dataclass
class TaskData:
    """
    The recordings of one task, ready for probing.

    Args:
        spec (`TaskSpec`): the task.
        paths (`list[Path]`): audio files.
        labels (`np.ndarray`): class indices (int64) or targets (float64).
        classes (`list[str]`): class names (empty for regression).
        groups (`np.ndarray`): patient / participant id per recording (a recording without one is its own group).
        known_groups (`np.ndarray`): whether the group came from the data (False for such per-recording groups).
        rows (`list[dict]`): metadata per recording (for reports).
        split_values (`np.ndarray`, *optional*): the split column, when the task has one.
        members (`list[tuple[Path, ...]]`, *optional*): for a task whose unit is a patient (`TaskSpec.pool_by`), the
            recordings of each unit (then `paths[i]` is the first of them and `rows[i]` the values its recordings
            share); `None` when every unit is one recording. Embed [`recording_paths`] and turn the vectors into unit
            embeddings with [`unit_embeddings`].
    """

    spec: TaskSpec
    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    groups: np.ndarray
    known_groups: np.ndarray
    rows: list[dict[str, Any]]
    split_values: np.ndarray | None = None
    members: list[tuple[Path, ...]] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def pooled(self) -> bool:
        """Whether a unit is a set of recordings (a patient) rather than one recording."""
        return self.members is not None

    def recordings_of(self, index: int) -> tuple[Path, ...]:
        """The recordings of unit `index`."""
        return self.members[index] if self.members is not None else (self.paths[index],)

    def recording_paths(self) -> list[Path]:
        """Every recording of the task once, in unit order: the files to embed."""
        if self.members is None:
            return list(self.paths)
        return list(dict.fromkeys(path for members in self.members for path in members))

    def unit_embeddings(self, vectors: np.ndarray) -> np.ndarray:
        """
        One embedding per unit from the vectors of [`recording_paths`] (same order): a recording's own vector, or
        the mean of a pooled unit's recordings' vectors.
        """
        if len(vectors) != len(self.recording_paths()):
            raise ValueError(f"Task {self.spec.name!r}: {len(vectors)} vectors for {len(self.recording_paths())} "
                             "recordings.")
        if self.members is None:
            return vectors
        position = {path: i for i, path in enumerate(self.recording_paths())}
        return np.stack([vectors[[position[p] for p in members]].mean(axis=0) for members in self.members]).astype(
            vectors.dtype)

    def select(self, indices: Sequence[int]) -> TaskData:
        indices = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            paths=[self.paths[i] for i in indices],
            labels=self.labels[indices],
            groups=self.groups[indices],
            known_groups=self.known_groups[indices],
            rows=[self.rows[i] for i in indices],
            split_values=None if self.split_values is None else self.split_values[indices],
            members=None if self.members is None else [self.members[i] for i in indices],
        )

    def subsample(self, max_recordings: int, seed: int = 0) -> TaskData:
        """At most `max_recordings` recordings, drawn per (label, split) stratum so every class and split side
        keeps recordings (for quick runs and tests)."""
        if max_recordings is None or len(self) <= max_recordings:
            return self
        rng = np.random.default_rng(seed)
        label_key = self.labels if self.spec.kind == "classification" else np.zeros(len(self), dtype=int)
        split_key = self.split_values if self.split_values is not None else np.zeros(len(self), dtype=object)
        # A transfer task keeps recordings of every domain (source) too, or a side could lose all of its recordings.
        domain_column = self.spec.split.domain_column if self.spec.split.kind == "transfer" else None
        domain_key = [row.get(domain_column) if domain_column else None for row in self.rows]
        strata: dict[tuple, list[int]] = {}
        for i, key in enumerate(zip(label_key.tolist(), split_key.tolist(), domain_key)):
            strata.setdefault(key, []).append(i)
        chosen: list[int] = []
        for members in strata.values():
            share = max(2, round(max_recordings * len(members) / len(self)))
            chosen += rng.permutation(members)[:share].tolist()
        return self.select(sorted(chosen))

    def as_manifest(self, indices: Sequence[int] | None = None) -> Manifest:
        """The recordings of the units (optionally a subset; every recording of a pooled unit) as a [`Manifest`] with
        `group_id`, for `leakage.find_overlap`."""
        indices = range(len(self)) if indices is None else indices
        pairs = [(path, str(self.groups[i]) if self.known_groups[i] else None)
                 for i in indices for path in self.recordings_of(i)]
        rows = [{"file": str(path), "group_id": group} for path, group in pairs]
        return Manifest(rows=rows, root=Path("/"), source=Path(f"task:{self.spec.name}"),
                        audio_paths=[path for path, _ in pairs])
