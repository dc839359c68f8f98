"""Declarative evaluation tasks: where the recordings come from, what the label is, who the patient is, how to split.

Two families:

- **dev-pack tasks** over the development pack (`--dev_pack`, else `$ACULA_DEV_PACK`, else
  `../shared/data/auscultation-dev`), built from its `metadata.csv`;
- **OPERA benchmark tasks** (T1-T19 of `../shared/ACULA.md`) over the original public datasets under `--data_root`.
  Each documents the layout it expects (`TaskSpec.layout`) and where the data comes from (`TaskSpec.source`), and
  fails with a message naming the missing file when the data is absent. The authors' own split files are numpy
  pickles, which acula never loads; where a task needs a published split it reads a small CSV instead (documented
  in the layout), and otherwise uses a patient-grouped split with fixed seeds.
"""

from __future__ import annotations

import csv
import functools
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from modeling_acula.file_utils import default_dev_pack
from acula_train.manifest import Manifest, load_manifest

SPLIT_KINDS = ("column", "group_kfold", "group_shuffle", "leave_one_group_out", "transfer", "heldout_group_kfold")
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".webm")


@dataclass(frozen=True)
class SplitPolicy:
    """
    How a task's recordings are split into probe-training and test sets; always by group (patient).

    Args:
        kind (`str`):
            - `"column"`: a split column, the same split for every seed (the probe seed differs);
            - `"group_kfold"`: stratified grouped K-fold over all recordings, `n_splits` folds, every recording
              tested once;
            - `"group_shuffle"`: a fresh grouped train/test draw per seed;
            - `"leave_one_group_out"`: one fold per patient (regression tasks);
            - `"transfer"`: train on some domains, test on others (e.g. fit a probe on PASCAL + HLS-CMDS, test it on
              Yaseen): the test side is the rows of `test_domains` whose split `column` is in `test_values`, the
              training side the rows of `train_domains` whose split column is in `train_values`; the domain of a
              row is its `domain_column` metadata value. The same split for every seed (the probe seed differs);
              rows on neither side are unused;
            - `"heldout_group_kfold"`: stratified grouped K-fold over the held-out side only: the rows whose split
              `column` is in `test_values` are cut into `n_splits` patient-grouped folds, each tested once, and the
              probe of each fold trains on every other row of the task (the rows whose split is in `train_values`
              plus the other held-out folds). Every fold holds every class; where `n_splits` folds cannot (a class
              with fewer held-out patients than folds), fewer folds are used (at least 2) with a warning.
              Recordings of the training side are never tested, so a model aligned on that side (e.g. the dev
              pack's `suggested_split == train`) can be evaluated without leakage.
        column (`str`, *optional*): split column for `"column"`, `"transfer"` and `"heldout_group_kfold"` (the
            loader's `split` value of each row).
        train_values (`tuple[str, ...]`): split-column values of the training side.
        test_values (`tuple[str, ...]`): split-column values of the test side.
        n_splits (`int`): folds for `"group_kfold"` and `"heldout_group_kfold"`.
        test_size (`float`): test fraction of the groups for `"group_shuffle"` (classification tasks draw it stratified
            by class, as the first of `round(1 / test_size)` stratified grouped folds).
        domain_column (`str`, *optional*): metadata column naming each row's domain, for `"transfer"`.
        train_domains (`tuple[str, ...]`): domains of the training side (`"transfer"`).
        test_domains (`tuple[str, ...]`): domains of the test side (`"transfer"`).
    """

    kind: str = "group_kfold"
    column: str | None = None
    train_values: tuple[str, ...] = ("train",)
    test_values: tuple[str, ...] = ("val", "test")
    n_splits: int = 5
    test_size: float = 0.2
    domain_column: str | None = None
    train_domains: tuple[str, ...] = ()
    test_domains: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"SplitPolicy.kind must be one of {SPLIT_KINDS}, got {self.kind!r}.")
        if self.kind in ("column", "transfer", "heldout_group_kfold") and not self.column:
            raise ValueError(f"SplitPolicy(kind={self.kind!r}) needs the name of the split column.")
        if self.kind == "transfer":
            if not (self.domain_column and self.train_domains and self.test_domains):
                raise ValueError("SplitPolicy(kind='transfer') needs domain_column, train_domains and test_domains.")
            if set(self.train_domains) & set(self.test_domains):
                both = sorted(set(self.train_domains) & set(self.test_domains))
                raise ValueError(f"SplitPolicy(kind='transfer'): domains {both} are on both sides.")
        if self.kind in ("group_kfold", "heldout_group_kfold") and self.n_splits < 2:
            raise ValueError(f"SplitPolicy(kind={self.kind!r}) needs n_splits >= 2, got {self.n_splits}.")


@dataclass(frozen=True)
class LoadContext:
    """Where loaders look for data."""

    dev_pack: Path | None = None
    data_root: Path | None = None


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
        family (`str`): `"dev_pack"` or `"opera"`.
        opera_id (`str`, *optional*): task number in the OPERA benchmark table (e.g. `"T10"`).
        source (`str`): dataset citation and address.
        layout (`str`): the files the loader expects under `--data_root` (OPERA tasks).
        notes (`str`): choices made (label definitions, exclusions).
        headroom (`bool`): whether the task can still separate encoders: `False` for tasks that even the log-mel
            statistics baseline (or a random encoder) nearly solves (AUROC >= 0.97 on the dev pack), which are kept
            but left out of the "mean over tasks with headroom" of a results table.
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
    """

    spec: TaskSpec
    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    groups: np.ndarray
    known_groups: np.ndarray
    rows: list[dict[str, Any]]
    split_values: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

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
        """The recordings (optionally a subset) as a [`Manifest`] with `group_id`, for `leakage.find_overlap`."""
        indices = range(len(self)) if indices is None else indices
        rows = [
            {"file": str(self.paths[i]), "group_id": str(self.groups[i]) if self.known_groups[i] else None}
            for i in indices
        ]
        return Manifest(rows=rows, root=Path("/"), source=Path(f"task:{self.spec.name}"),
                        audio_paths=[self.paths[i] for i in indices])


@dataclass
class Split:
    """Indices of one probe-training / test split."""

    name: str
    train: np.ndarray
    test: np.ndarray
    seed: int


# ---------------------------------------------------------------------------------------------------- registry

TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to the registry (names are unique)."""
    if spec.name in TASKS:
        raise ValueError(f"Task {spec.name!r} is already registered.")
    if spec.kind not in ("classification", "regression"):
        raise ValueError(f"Task {spec.name!r}: kind must be 'classification' or 'regression', got {spec.kind!r}.")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; available: {sorted(TASKS)} (see --list_tasks).")
    return TASKS[name]


def list_tasks(family: str | None = None) -> list[TaskSpec]:
    return [spec for spec in TASKS.values() if family is None or spec.family == family]


# ---------------------------------------------------------------------------------------------------- loading


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def load_task(
    spec: TaskSpec | str,
    *,
    dev_pack: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    max_recordings: int | None = None,
    seed: int = 0,
) -> TaskData:
    """
    Run a task's loader and turn its rows into [`TaskData`].

    Args:
        spec (`TaskSpec` or `str`): the task or its name.
        dev_pack (`str` or `os.PathLike`, *optional*): the dev pack folder (default: `$ACULA_DEV_PACK`, else
            `../shared/data/auscultation-dev` next to the repository).
        data_root (`str` or `os.PathLike`, *optional*): folder holding the public datasets of the OPERA tasks.
        max_recordings (`int`, *optional*): subsample to at most this many recordings (stratified).
        seed (`int`, *optional*, defaults to 0): seed of the subsampling.
    """
    spec = get_task(spec) if isinstance(spec, str) else spec
    context = LoadContext(
        dev_pack=Path(dev_pack) if dev_pack is not None else default_dev_pack(),
        data_root=Path(data_root) if data_root is not None else None,
    )
    raw_rows = spec.loader(context)
    paths, labels, groups, known, rows, splits = [], [], [], [], [], []
    for row in raw_rows:
        raw = row["target"] if "target" in row else row.get("label")
        if spec.kind == "classification":
            raw = _clean(raw)
            if raw is None:
                continue
            if spec.label_map is not None:
                if raw not in spec.label_map:
                    continue
                raw = spec.label_map[raw]
        else:
            try:
                raw = float(raw)
            except (TypeError, ValueError):
                continue
            if not np.isfinite(raw):
                continue
        path = Path(row["path"])
        group = _clean(row.get("group_id"))
        paths.append(path)
        labels.append(raw)
        known.append(group is not None)
        groups.append(group if group is not None else f"recording:{os.path.realpath(path)}")
        rows.append(row)
        splits.append(_clean(row.get("split")))
    if not paths:
        raise ValueError(f"Task {spec.name!r}: the loader found no usable recordings (after the label mapping).")
    if spec.kind == "classification":
        classes = list(spec.classes) if spec.classes else sorted(set(labels))
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise ValueError(f"Task {spec.name!r}: labels {unknown} are not among its classes {classes}.")
        label_array = np.array([classes.index(label) for label in labels], dtype=np.int64)
        present = sorted(set(label_array.tolist()))
        if len(present) < 2:
            raise ValueError(f"Task {spec.name!r}: only class {classes[present[0]]!r} is present; need two or more.")
    else:
        classes = []
        label_array = np.array(labels, dtype=np.float64)
    data = TaskData(
        spec=spec,
        paths=paths,
        labels=label_array,
        classes=classes,
        groups=np.array(groups, dtype=object),
        known_groups=np.array(known, dtype=bool),
        rows=rows,
        split_values=np.array(splits, dtype=object) if any(s is not None for s in splits) else None,
    )
    return data.subsample(max_recordings, seed) if max_recordings else data


# ---------------------------------------------------------------------------------------------------- splits


def _check_split(data: TaskData, split: Split, every_class: bool = False) -> None:
    """Both sides non-empty, no patient on both, two or more classes per side (with `every_class`: every class of the
    task on both sides)."""
    name = data.spec.name
    if len(split.train) == 0 or len(split.test) == 0:
        raise ValueError(f"Task {name!r}, split {split.name}: empty train ({len(split.train)}) or test "
                         f"({len(split.test)}) side.")
    overlap = set(data.groups[split.train]) & set(data.groups[split.test])
    if overlap:
        raise ValueError(f"Task {name!r}, split {split.name}: {len(overlap)} patient(s) on both sides.")
    if data.spec.kind == "classification":
        for side, indices in (("train", split.train), ("test", split.test)):
            if len(np.unique(data.labels[indices])) < 2:
                raise ValueError(f"Task {name!r}, split {split.name}: the {side} side holds a single class; use "
                                 "another split policy or more recordings.")
            missing = sorted(set(np.unique(data.labels).tolist()) - set(data.labels[indices].tolist()))
            if every_class and missing:
                raise ValueError(f"Task {name!r}, split {split.name}: the {side} side holds no recording of class(es) "
                                 f"{[data.classes[i] for i in missing]}.")


def make_splits(data: TaskData, policy: SplitPolicy | None = None, seeds: Sequence[int] = DEFAULT_SEEDS) -> list[Split]:
    """
    Patient-grouped probe splits, the same for every model evaluated on the task.

    Args:
        data (`TaskData`): the task's recordings.
        policy (`SplitPolicy`, *optional*): defaults to the task's own.
        seeds (`Sequence[int]`): one split per seed for `"group_shuffle"` (every class on both sides), `"column"` and
            `"transfer"` (the same split with a different probe seed); for `"group_kfold"` and
            `"heldout_group_kfold"` the first seed shuffles the folds and the seeds are cycled over them as probe
            seeds; `"leave_one_group_out"` ignores them.

    Returns:
        `list[Split]`.
    """
    from sklearn.model_selection import (
        GroupKFold,
        GroupShuffleSplit,
        LeaveOneGroupOut,
        StratifiedGroupKFold,
    )

    policy = policy or data.spec.split
    seeds = list(seeds)
    if not seeds:
        raise ValueError("make_splits needs at least one seed.")
    indices = np.arange(len(data))
    groups = data.groups.astype(str)
    classification = data.spec.kind == "classification"
    splits: list[Split] = []
    if policy.kind == "column":
        values = _split_column(data, policy)
        train = indices[np.isin(values, [v.lower() for v in policy.train_values])]
        test = indices[np.isin(values, [v.lower() for v in policy.test_values])]
        splits = [Split(f"{policy.column}-seed{seed}", train, test, seed) for seed in seeds]
    elif policy.kind == "transfer":
        values = _split_column(data, policy)
        domains = np.array([str(_clean(row.get(policy.domain_column)) or "") for row in data.rows])
        train = indices[np.isin(domains, policy.train_domains)
                        & np.isin(values, [v.lower() for v in policy.train_values])]
        test = indices[np.isin(domains, policy.test_domains)
                       & np.isin(values, [v.lower() for v in policy.test_values])]
        name = f"{'+'.join(policy.train_domains)}->{'+'.join(policy.test_domains)}"
        splits = [Split(f"{name}-seed{seed}", train, test, seed) for seed in seeds]
    elif policy.kind == "heldout_group_kfold":
        values = _split_column(data, policy)
        train_side = indices[np.isin(values, [v.lower() for v in policy.train_values])]
        held_out = indices[np.isin(values, [v.lower() for v in policy.test_values])]
        for fold, test in enumerate(_heldout_folds(data, held_out, policy, seeds[0])):
            train = np.sort(np.concatenate([train_side, np.setdiff1d(held_out, test)]))
            splits.append(Split(f"{policy.column}-fold{fold}", train, test, seeds[fold % len(seeds)]))
    elif policy.kind == "group_kfold":
        n_splits = min(policy.n_splits, len(np.unique(groups)))
        if n_splits < 2:
            raise ValueError(f"Task {data.spec.name!r}: grouped K-fold needs at least 2 patients (groups), found "
                             f"{len(np.unique(groups))}.")
        if classification:
            folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seeds[0])
        else:
            folds = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seeds[0])
        for fold, (train, test) in enumerate(folds.split(indices, data.labels, groups)):
            splits.append(Split(f"fold{fold}", train, test, seeds[fold % len(seeds)]))
    elif policy.kind == "group_shuffle":
        every_class = np.unique(data.labels) if classification else None
        for seed in seeds:
            if classification:
                # A stratified grouped draw: the first of round(1 / test_size) stratified grouped folds that holds
                # every class on both sides, so that every seed can be scored, also for rare classes.
                folds = StratifiedGroupKFold(n_splits=max(2, round(1 / policy.test_size)), shuffle=True,
                                             random_state=seed)
                with warnings.catch_warnings():  # "least populated class has fewer members than n_splits"
                    warnings.simplefilter("ignore", UserWarning)
                    candidates = list(folds.split(indices, data.labels, groups))
                complete = [
                    (train, test) for train, test in candidates
                    if all(np.array_equal(np.unique(data.labels[part]), every_class) for part in (train, test))
                ]
                if not complete:
                    raise ValueError(
                        f"Task {data.spec.name!r}, seed {seed}: no grouped {policy.test_size:.0%} test draw holds "
                        "every class on both sides; too few patients per class for this split policy."
                    )
                train, test = complete[0]
            else:
                draw = GroupShuffleSplit(n_splits=1, test_size=policy.test_size, random_state=seed)
                train, test = next(draw.split(indices, data.labels, groups))
            splits.append(Split(f"shuffle-seed{seed}", train, test, seed))
    else:
        for fold, (train, test) in enumerate(LeaveOneGroupOut().split(indices, data.labels, groups)):
            splits.append(Split(f"group{fold}", train, test, seeds[fold % len(seeds)]))
    for split in splits:
        if not (classification and policy.kind == "leave_one_group_out"):
            _check_split(data, split, every_class=policy.kind in ("transfer", "heldout_group_kfold"))
    return splits


def _split_column(data: TaskData, policy: SplitPolicy) -> np.ndarray:
    """The task's split column, lower-cased ("" where a row has none)."""
    if data.split_values is None:
        raise ValueError(f"Task {data.spec.name!r} has no split column {policy.column!r}; use a grouped policy.")
    return np.array([str(v).lower() if v is not None else "" for v in data.split_values])


def _heldout_folds(data: TaskData, held_out: np.ndarray, policy: SplitPolicy, seed: int) -> list[np.ndarray]:
    """Patient-grouped (and, for classification, stratified) folds over the held-out rows, each holding every class
    of the task; `policy.n_splits` folds, or fewer (down to 2, with a warning) where that is impossible."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    name = data.spec.name
    classification = data.spec.kind == "classification"
    if len(held_out) == 0:
        raise ValueError(f"Task {name!r}: no row has {policy.column!r} in {policy.test_values}; nothing to test.")
    labels, groups = data.labels[held_out], data.groups[held_out].astype(str)
    every_class = np.unique(data.labels) if classification else None
    if classification and not np.array_equal(np.unique(labels), every_class):
        missing = sorted(set(every_class.tolist()) - set(labels.tolist()))
        raise ValueError(f"Task {name!r}: the held-out side ({policy.column} in {policy.test_values}) holds no "
                         f"recording of class(es) {[data.classes[i] for i in missing]}.")
    for n_splits in range(min(policy.n_splits, len(np.unique(groups))), 1, -1):
        # Shuffled stratified grouped folds do not always give every fold every class; a few reshuffles (derived
        # from `seed`, so deterministic) are tried before fewer folds.
        for attempt in range(50 if classification else 1):
            if classification:
                splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + attempt)
            else:
                splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + attempt)
            with warnings.catch_warnings():  # "least populated class has fewer members than n_splits"
                warnings.simplefilter("ignore", UserWarning)
                folds = [held_out[test] for _, test in splitter.split(held_out, labels, groups)]
            if not classification or all(np.array_equal(np.unique(data.labels[f]), every_class) for f in folds):
                if n_splits < policy.n_splits:
                    warnings.warn(f"Task {name!r}: {n_splits} held-out folds instead of {policy.n_splits}: a class has "
                                  f"too few held-out patients for more folds that each hold every class.", stacklevel=3)
                return folds
    raise ValueError(f"Task {name!r}: no grouped K-fold (K >= 2) over the held-out side ({policy.column} in "
                     f"{policy.test_values}) holds every class in every fold; too few held-out patients per class.")


def restrict_to_splits(data: TaskData, splits: Sequence[Split]) -> tuple[TaskData, list[Split]]:
    """Drop the recordings that are on no side of any split (e.g. the target domain's training rows of a transfer
    task), so that they are neither embedded nor counted; the split indices are renumbered to match."""
    used = np.unique(np.concatenate([np.concatenate([s.train, s.test]) for s in splits] or [np.array([], int)]))
    if len(used) == len(data):
        return data, list(splits)
    renumber = lambda part: np.searchsorted(used, part)  # noqa: E731  (`used` is sorted and holds every index)
    return data.select(used), [replace(s, train=renumber(s.train), test=renumber(s.test)) for s in splits]


# ---------------------------------------------------------------------------------------------------- dev pack

DEV_PACK_SOURCE = (
    "auscultation-dev (../shared/data/auscultation-dev): PASCAL CHSC 2011, Yaseen 2018, HLS-CMDS, KAUH lung sounds, "
    "Coswara 2020-04-13; see its README.md for licences and citations."
)
SUGGESTED_SPLIT = SplitPolicy(kind="column", column="suggested_split", train_values=("train",), test_values=("val",))


@functools.lru_cache(maxsize=4)
def _load_dev_pack_manifest(metadata: str, mtime_ns: int) -> Manifest:
    return load_manifest(metadata)


def _dev_pack_manifest(context: LoadContext) -> Manifest:
    folder = context.dev_pack
    if folder is None or not (Path(folder) / "metadata.csv").is_file():
        raise ValueError(
            f"Dev-pack task: no metadata.csv in {folder}; pass --dev_pack (or set ACULA_DEV_PACK) pointing at the "
            "auscultation-dev folder."
        )
    metadata = (Path(folder) / "metadata.csv").resolve()
    # Loaded (and every file checked) once per process; loaders copy the rows they keep.
    return _load_dev_pack_manifest(str(metadata), metadata.stat().st_mtime_ns)


def dev_pack_loader(
    *, sources: Sequence[str] | None = None, modalities: Sequence[str] | None = None, label_column: str = "label"
) -> Callable[[LoadContext], list[dict[str, Any]]]:
    """A loader over the dev pack's rows of some sources / modalities, with `label` taken from `label_column`."""

    def load(context: LoadContext) -> list[dict[str, Any]]:
        manifest = _dev_pack_manifest(context)
        rows = []
        for path, row in zip(manifest.audio_paths, manifest.rows):
            if sources is not None and row.get("source_dataset") not in sources:
                continue
            if modalities is not None and row.get("modality") not in modalities:
                continue
            rows.append({**row, "path": path, "label": row.get(label_column), "split": row.get("suggested_split")})
        return rows

    return load


def _kauh_obstructive_label(diagnosis: str | None) -> str | None:
    """OPERA T10: healthy vs obstructive (asthma or COPD, also with a second diagnosis, as OPERA's file-name rule
    keeps them); other diseases (heart failure, pneumonia, fibrosis, effusion, BRON) are left out."""
    if diagnosis is None:
        return None
    parts = set(re.split(r"[+,;/ ]+", diagnosis.lower()))
    if diagnosis.lower() in ("normal", "n"):
        return "healthy"
    if parts & {"asthma", "copd"}:
        return "obstructive"
    return None


def _kauh_dev_loader(context: LoadContext) -> list[dict[str, Any]]:
    rows = dev_pack_loader(sources=["KAUH_lung_sounds"], label_column="diagnosis")(context)
    for row in rows:
        row["label"] = _kauh_obstructive_label(row.get("diagnosis"))
    return rows


register_task(TaskSpec(
    name="pascal_murmur",
    description="PASCAL CHSC 2011 heart sounds: murmur vs normal",
    loader=dev_pack_loader(sources=["PASCAL_CHSC2011"]),
    label_map={"normal": "normal", "murmur": "murmur"},
    classes=("normal", "murmur"),
    label_descriptions={"normal": "normal heart sounds", "murmur": "a heart murmur"},
    split=SUGGESTED_SPLIT,
    source=DEV_PACK_SOURCE,
    notes="extrastole, artifact and extrahls rows are left out; noisy sublabels are kept.",
))
register_task(TaskSpec(
    name="yaseen_valve",
    description="Yaseen 2018 heart sounds: normal / mitral regurgitation / mitral stenosis / mitral valve prolapse",
    loader=dev_pack_loader(sources=["Yaseen2018"]),
    classes=("normal", "mitral_regurgitation", "mitral_stenosis", "mitral_valve_prolapse"),
    label_descriptions={
        "normal": "normal heart sounds",
        "mitral_regurgitation": "mitral regurgitation",
        "mitral_stenosis": "mitral stenosis",
        "mitral_valve_prolapse": "mitral valve prolapse",
    },
    split=SUGGESTED_SPLIT,
    source=DEV_PACK_SOURCE,
    notes="four classes: the dev pack holds no aortic stenosis clips of the five-class original; Yaseen has no "
          "patient ids, so every recording is its own group. Saturated: logmel-stats reaches 0.999 AUROC (a random "
          "encoder 0.99), so it is left out of the mean over tasks with headroom.",
    headroom=False,
))
register_task(TaskSpec(
    name="kauh_obstructive",
    description="KAUH lung sounds: healthy vs obstructive (asthma + COPD), as OPERA T10",
    loader=_kauh_dev_loader,
    classes=("healthy", "obstructive"),
    label_descriptions={"healthy": "normal lung sounds of a healthy patient",
                        "obstructive": "an obstructive airway disease such as asthma or COPD"},
    split=SUGGESTED_SPLIT,
    source=DEV_PACK_SOURCE,
    notes="obstructive = diagnosis includes asthma or COPD (also combined with heart failure or lung fibrosis, as "
          "OPERA's rule keeps them); heart failure, pneumonia, fibrosis, effusion and BRON alone are left out.",
))
register_task(TaskSpec(
    name="kauh_abnormal",
    description="KAUH lung sounds: normal vs abnormal",
    loader=dev_pack_loader(sources=["KAUH_lung_sounds"]),
    classes=("normal", "abnormal"),
    label_descriptions={"normal": "normal lung sounds", "abnormal": "abnormal lung sounds"},
    split=SUGGESTED_SPLIT,
    source=DEV_PACK_SOURCE,
))
register_task(TaskSpec(
    name="modality",
    description="Body-sound modality across the dev pack: heart / lung / cough / breath / speech",
    loader=dev_pack_loader(label_column="modality"),
    classes=("heart", "lung", "cough", "breath", "speech"),
    label_descriptions={"heart": "heart sounds", "lung": "lung sounds", "cough": "a cough",
                        "breath": "breathing sounds", "speech": "speech"},
    split=SUGGESTED_SPLIT,
    source=DEV_PACK_SOURCE,
    notes="recordings without a patient id (Yaseen, HLS-CMDS) are their own groups. Saturated: logmel-stats reaches "
          "0.990 AUROC, so it is left out of the mean over tasks with headroom.",
    headroom=False,
))
register_task(TaskSpec(
    name="coswara_sex",
    description="Coswara cough (heavy + shallow): female vs male, as OPERA T9",
    loader=dev_pack_loader(sources=["Coswara_20200413"], modalities=["cough"], label_column="sex"),
    classes=("male", "female"),
    label_descriptions={"male": "a cough of a male participant", "female": "a cough of a female participant"},
    split=SplitPolicy(kind="group_kfold", n_splits=5),
    source=DEV_PACK_SOURCE,
    notes="grouped 5-fold by participant: the suggested val side holds only 3 female participants. Coswara COVID-19 "
          "status is not a task: the pack has no COVID-positive participant (healthy 324, exposed 25, "
          "non-COVID respiratory illness 20 recordings).",
))


# Tasks with headroom: cross-dataset transfer, and KAUH diseases tested on held-out patients only.

# Normal vs abnormal heart sound, per source. Only the listed labels are kept (an unknown label is left out, never
# guessed); the mapping is in the tasks' notes.
HEART_ABNORMAL_LABELS: dict[str, dict[str, str]] = {
    "PASCAL_CHSC2011": {"normal": "normal", "murmur": "abnormal", "extrastole": "abnormal", "extrahls": "abnormal"},
    "Yaseen2018": {"normal": "normal", "mitral_regurgitation": "abnormal", "mitral_stenosis": "abnormal",
                   "mitral_valve_prolapse": "abnormal"},
    "HLS-CMDS_manikin": {
        "normal": "normal", "early_systolic_murmur": "abnormal", "mid_systolic_murmur": "abnormal",
        "late_systolic_murmur": "abnormal", "late_diastolic_murmur": "abnormal", "s3": "abnormal", "s4": "abnormal",
        "atrial_fibrillation": "abnormal", "av_block": "abnormal", "tachycardia": "abnormal",
    },
}
_HEART_ABNORMAL_NOTES = (
    "normal vs abnormal per source: PASCAL normal (incl. noisynormal) vs murmur (incl. noisymurmur), extrastole and "
    "extrahls, artifact left out; HLS-CMDS heart rows (manikin) normal vs early/mid/late systolic murmur, late "
    "diastolic murmur, S3, S4, atrial fibrillation, AV block and tachycardia (every non-normal heart sound type of "
    "the manikin; its lung rows are left out); Yaseen normal vs mitral regurgitation, stenosis and valve prolapse. "
)
_HEART_ABNORMAL_DESCRIPTIONS = {
    "normal": "normal heart sounds",
    "abnormal": "abnormal heart sounds, such as a murmur, an extra heart sound or an arrhythmia",
}


def _heart_abnormal_loader(context: LoadContext) -> list[dict[str, Any]]:
    rows = dev_pack_loader(sources=list(HEART_ABNORMAL_LABELS), modalities=["heart"])(context)
    for row in rows:  # the recording's own label stays (reports); the task's class is its target
        row["target"] = HEART_ABNORMAL_LABELS[row["source_dataset"]].get(_clean(row.get("label")) or "")
    return rows


def _transfer_policy(train_domains: tuple[str, ...], test_domains: tuple[str, ...]) -> SplitPolicy:
    # Test side: the target's held-out rows only (models aligned on the dev pack's train rows can be evaluated);
    # probe-training side: every row of the fit sources (probing on aligned recordings is not leakage).
    return SplitPolicy(kind="transfer", column="suggested_split", domain_column="source_dataset",
                       train_domains=train_domains, test_domains=test_domains, train_values=("train", "val"),
                       test_values=("val",))


register_task(TaskSpec(
    name="heart_transfer_to_yaseen",
    description="Abnormal heart sound, cross-dataset: probe fitted on PASCAL + HLS-CMDS heart, tested on Yaseen",
    loader=_heart_abnormal_loader,
    classes=("normal", "abnormal"),
    label_descriptions=_HEART_ABNORMAL_DESCRIPTIONS,
    split=_transfer_policy(("PASCAL_CHSC2011", "HLS-CMDS_manikin"), ("Yaseen2018",)),
    source=DEV_PACK_SOURCE,
    notes=_HEART_ABNORMAL_NOTES + "Probe trained on all PASCAL and HLS-CMDS heart rows (train + val); tested on "
          "Yaseen's suggested_split == val rows only (109: 33 normal, 76 abnormal); Yaseen's train rows are unused. "
          "The same split for every seed. Different recording devices, sites and label sets on the two sides: "
          "only what the encoder represents of 'abnormal' in general carries over. Saturated nevertheless: "
          "logmel-stats reaches 0.983 AUROC (pooled 0.989, CI 0.972-0.998; Yaseen's normal and abnormal clips differ "
          "in plain spectral statistics), so it is left out of the mean over tasks with headroom; the reverse "
          "direction (heart_transfer_from_yaseen) is the hard one.",
    headroom=False,
))
register_task(TaskSpec(
    name="heart_transfer_from_yaseen",
    description="Abnormal heart sound, cross-dataset: probe fitted on Yaseen, tested on PASCAL + HLS-CMDS heart",
    loader=_heart_abnormal_loader,
    classes=("normal", "abnormal"),
    label_descriptions=_HEART_ABNORMAL_DESCRIPTIONS,
    split=_transfer_policy(("Yaseen2018",), ("PASCAL_CHSC2011", "HLS-CMDS_manikin")),
    source=DEV_PACK_SOURCE,
    notes=_HEART_ABNORMAL_NOTES + "Probe trained on all Yaseen rows (train + val); tested on the suggested_split "
          "== val rows of PASCAL (110 after leaving out artifact: 84 normal, 26 abnormal) and HLS-CMDS heart (8: 3 "
          "normal, 5 abnormal); their train rows are unused. The same split for every seed. logmel-stats scores "
          "0.463 AUROC (pooled CI 0.40-0.51): below chance, what a probe of Yaseen-specific spectral statistics "
          "does on PASCAL.",
))

_KAUH_HELD_OUT_NOTES = (
    "Diagnoses as recorded (pure diagnoses only: combined ones such as heart_failure+copd are left out). Tested on "
    "the suggested_split == val patients only, in 2 patient-grouped stratified folds (every fold holds every class; "
    "5 folds are impossible: the val side has 7 normal, 4 asthma and 2 heart-failure patients, and with 2 folds "
    "each fold's AUROC compares the most patients of one class with the other); each fold's probe trains on every "
    "other row of the task "
    "(all train-side patients + the other val folds), so models aligned on the train side are not refused. Every "
    "val recording is tested exactly once. Three stethoscope filter versions of each examination share a patient. "
    "`--split_policy kfold` gives a patient-grouped 5-fold over all patients instead (tests train-side patients: "
    "refused for models aligned on the dev pack). COPD vs normal is not a task: no COPD patient is on the val side "
    "(9 train-side COPD patients), so no leakage-free test exists in the dev pack."
)
# Every val patient tested once over 2 folds (the rarest class has 2 val patients), the probe trained on the rest.
KAUH_HELD_OUT_SPLIT = SplitPolicy(kind="heldout_group_kfold", column="suggested_split", train_values=("train",),
                                  test_values=("val",), n_splits=2)
_kauh_diagnosis_loader = dev_pack_loader(sources=["KAUH_lung_sounds"], label_column="diagnosis")
register_task(TaskSpec(
    name="kauh_asthma",
    description="KAUH lung sounds: asthma vs normal (held-out patients, grouped K-fold)",
    loader=_kauh_diagnosis_loader,
    label_map={"normal": "normal", "asthma": "asthma"},
    classes=("normal", "asthma"),
    label_descriptions={"normal": "normal lung sounds of a healthy patient", "asthma": "asthma"},
    split=KAUH_HELD_OUT_SPLIT,
    source=DEV_PACK_SOURCE,
    notes=_KAUH_HELD_OUT_NOTES + " Patients: normal 28 train + 7 val, asthma 28 train + 4 val (2 asthma "
          "patients per fold; at most 4 folds would be possible, with one asthma patient each).",
))
register_task(TaskSpec(
    name="kauh_heart_failure",
    description="KAUH lung sounds: heart failure vs normal (held-out patients, grouped K-fold)",
    loader=_kauh_diagnosis_loader,
    label_map={"normal": "normal", "heart_failure": "heart_failure"},
    classes=("normal", "heart_failure"),
    label_descriptions={"normal": "normal lung sounds of a healthy patient",
                        "heart_failure": "lung sounds of a patient with heart failure"},
    split=KAUH_HELD_OUT_SPLIT,
    source=DEV_PACK_SOURCE,
    notes=_KAUH_HELD_OUT_NOTES + " Patients: normal 28 train + 7 val, heart failure 16 train + 2 val (one "
          "heart-failure patient per fold: 2 folds is the most possible).",
))
register_task(TaskSpec(
    name="kauh_diagnosis",
    description="KAUH lung sounds: normal / asthma / heart failure, 3 classes (held-out patients, grouped K-fold)",
    loader=_kauh_diagnosis_loader,
    label_map={"normal": "normal", "asthma": "asthma", "heart_failure": "heart_failure"},
    classes=("normal", "asthma", "heart_failure"),
    label_descriptions={"normal": "normal lung sounds of a healthy patient", "asthma": "asthma",
                        "heart_failure": "lung sounds of a patient with heart failure"},
    split=KAUH_HELD_OUT_SPLIT,
    source=DEV_PACK_SOURCE,
    notes=_KAUH_HELD_OUT_NOTES + " Classes kept: those with patients on both sides (normal 28 + 7, asthma 28 + 4, "
          "heart failure 16 + 2); COPD (9 + 0), lung fibrosis (4 + 0), pneumonia (4 + 1), pleural effusion (2 + 0) "
          "and BRON (1 + 2) are left out. Macro one-vs-rest AUROC.",
))


# ---------------------------------------------------------------------------------------------------- OPERA tasks


def _require(path: Path, task: str, layout: str) -> Path:
    if not path.exists():
        raise ValueError(f"Task {task!r}: {path} not found. Expected layout under --data_root:\n{layout}")
    return path


def _data_root(context: LoadContext, task: str, layout: str) -> Path:
    if context.data_root is None:
        raise ValueError(f"Task {task!r} reads a public dataset: pass --data_root. Expected layout:\n{layout}")
    return _require(context.data_root, task, layout)


def _read_csv(path: Path, delimiter: str = ",", fieldnames: Sequence[str] | None = None) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [dict(row) for row in csv.DictReader(handle, delimiter=delimiter, fieldnames=fieldnames)]


def _split_table(path: Path, key: str) -> dict[str, str]:
    """Optional `<key>,split` CSV with the published split (converted from the authors' split files)."""
    if not path.is_file():
        return {}
    return {row[key]: row["split"].strip().lower() for row in _read_csv(path)}


def _published_or_grouped(test_values: tuple[str, ...] = ("test",)) -> SplitPolicy:
    return SplitPolicy(kind="column", column="split", train_values=("train", "val"), test_values=test_values)


# T1, T2: UK COVID-19 Vocal Audio Dataset
_COVIDUK_LAYOUT = """covidUK/
  participant_metadata.csv   columns participant_identifier, covid_test_result (Positive | Negative)
  audio_metadata.csv         columns participant_identifier, exhalation_file_name, cough_file_name
  audio_selected/<file name> the recordings named in audio_metadata.csv
  splits.csv                 columns file_name, split (train | val | test): OPERA's published split"""


def _coviduk_loader(modality: str, task: str) -> Callable[[LoadContext], list[dict[str, Any]]]:
    def load(context: LoadContext) -> list[dict[str, Any]]:
        root = _data_root(context, task, _COVIDUK_LAYOUT) / "covidUK"
        participants = {
            row["participant_identifier"]: row.get("covid_test_result")
            for row in _read_csv(_require(root / "participant_metadata.csv", task, _COVIDUK_LAYOUT))
        }
        splits = _split_table(_require(root / "splits.csv", task, _COVIDUK_LAYOUT), "file_name")
        rows = []
        for row in _read_csv(_require(root / "audio_metadata.csv", task, _COVIDUK_LAYOUT)):
            name = _clean(row.get(f"{modality}_file_name"))
            if name is None or name not in splits:
                continue  # OPERA evaluates only the files of its published split
            user = row["participant_identifier"]
            rows.append({"path": root / "audio_selected" / name, "label": participants.get(user), "group_id": user,
                         "split": splits[name], "modality": "cough" if modality == "cough" else "breath"})
        return rows

    return load


_COVID_LABELS = {"Negative": "negative", "Positive": "positive"}
_COVID_DESCRIPTIONS = {"negative": "a COVID-19 negative participant", "positive": "a COVID-19 positive participant"}
_COVIDUK_SOURCE = ("UK COVID-19 Vocal Audio Dataset (Budd et al., Sci. Data 2024; Coppock et al., Nat. Mach. Intell. "
                   "2024), distributed by the UK Health Security Agency on Zenodo (access on request).")
for _id, _modality in (("T1", "exhalation"), ("T2", "cough")):
    register_task(TaskSpec(
        name=f"covid_uk_{_modality}", description=f"UK COVID-19 Vocal Audio, {_modality}: COVID-19 positive vs negative",
        loader=_coviduk_loader(_modality, f"covid_uk_{_modality}"), label_map=_COVID_LABELS,
        classes=("negative", "positive"), label_descriptions=_COVID_DESCRIPTIONS, split=_published_or_grouped(),
        family="opera", opera_id=_id, source=_COVIDUK_SOURCE, layout=_COVIDUK_LAYOUT,
    ))

# T5, T6: COUGHVID
_COUGHVID_LAYOUT = """coughvid/
  metadata_compiled.csv      columns uuid, status (COVID-19 | healthy | symptomatic), gender (female | male)
  wav/<uuid>.wav             the recordings (converted from the original webm/ogg)
  splits.csv                 columns uuid, split (train | val | test): OPERA's published split"""
_COUGHVID_SOURCE = ("COUGHVID (Orlandic et al., Sci. Data 2021), https://zenodo.org/records/4498364 (CC BY 4.0).")


def _coughvid_loader(column: str, task: str) -> Callable[[LoadContext], list[dict[str, Any]]]:
    def load(context: LoadContext) -> list[dict[str, Any]]:
        root = _data_root(context, task, _COUGHVID_LAYOUT) / "coughvid"
        splits = _split_table(_require(root / "splits.csv", task, _COUGHVID_LAYOUT), "uuid")
        rows = []
        for row in _read_csv(_require(root / "metadata_compiled.csv", task, _COUGHVID_LAYOUT)):
            uuid = row["uuid"]
            if uuid not in splits:
                continue
            rows.append({"path": root / "wav" / f"{uuid}.wav", "label": row.get(column), "group_id": uuid,
                         "split": splits[uuid], "modality": "cough"})
        return rows

    return load


register_task(TaskSpec(
    name="coughvid_covid", description="COUGHVID cough: COVID-19 vs healthy", loader=_coughvid_loader("status", "coughvid_covid"),
    label_map={"healthy": "negative", "COVID-19": "positive"}, classes=("negative", "positive"),
    label_descriptions=_COVID_DESCRIPTIONS, split=_published_or_grouped(), family="opera", opera_id="T5",
    source=_COUGHVID_SOURCE, layout=_COUGHVID_LAYOUT, notes="symptomatic and unlabelled rows are left out.",
))
register_task(TaskSpec(
    name="coughvid_sex", description="COUGHVID cough: female vs male", loader=_coughvid_loader("gender", "coughvid_sex"),
    label_map={"male": "male", "female": "female"}, classes=("male", "female"),
    label_descriptions={"male": "a cough of a male participant", "female": "a cough of a female participant"},
    split=_published_or_grouped(), family="opera", opera_id="T6", source=_COUGHVID_SOURCE, layout=_COUGHVID_LAYOUT,
))

# T7: ICBHI 2017
_ICBHI_LAYOUT = """icbhi/
  ICBHI_Challenge_diagnosis.txt   tab-separated: patient id, diagnosis (COPD, Healthy, URTI, ...)
  ICBHI_challenge_train_test.txt  tab-separated: recording id (file name without .wav), train | test
  ICBHI_final_database/<recording id>.wav"""


def _icbhi_loader(context: LoadContext) -> list[dict[str, Any]]:
    task = "icbhi_copd"
    root = _data_root(context, task, _ICBHI_LAYOUT) / "icbhi"
    diagnosis = {r["patient"]: r["diagnosis"] for r in _read_csv(
        _require(root / "ICBHI_Challenge_diagnosis.txt", task, _ICBHI_LAYOUT), "\t", ["patient", "diagnosis"])}
    splits = {r["recording"]: r["split"] for r in _read_csv(
        _require(root / "ICBHI_challenge_train_test.txt", task, _ICBHI_LAYOUT), "\t", ["recording", "split"])}
    audio = _require(root / "ICBHI_final_database", task, _ICBHI_LAYOUT)
    rows = []
    for path in sorted(audio.glob("*.wav")):
        patient = path.stem.split("_")[0]
        rows.append({"path": path, "label": diagnosis.get(patient), "group_id": f"icbhi_{patient}",
                     "split": splits.get(path.stem), "modality": "lung", "diagnosis": diagnosis.get(patient)})
    return rows


register_task(TaskSpec(
    name="icbhi_copd", description="ICBHI 2017 respiratory sounds: COPD vs healthy", loader=_icbhi_loader,
    label_map={"Healthy": "healthy", "COPD": "copd"}, classes=("healthy", "copd"),
    label_descriptions={"healthy": "normal lung sounds of a healthy patient",
                        "copd": "chronic obstructive pulmonary disease"},
    split=_published_or_grouped(), family="opera", opera_id="T7",
    source="ICBHI 2017 Respiratory Sound Database (Rocha et al., 2019), https://bhichallenge.med.auth.gr/",
    layout=_ICBHI_LAYOUT, notes="official train/test split; other diagnoses are left out.",
))

# T8, T9: Coswara shallow cough
_COSWARA_LAYOUT = """Coswara-Data/
  combined_data.csv                     columns id, g (male | female), smoker (y | n | True | False)
  annotations/cough-shallow_labels.csv  optional: columns FILENAME (<id>_cough-shallow), QUALITY (0 = unusable)
  Extracted_data/<date>/<id>/cough-shallow.wav"""
_COSWARA_SOURCE = "Coswara (Bhattacharya et al., Sci. Data 2023), https://github.com/iiscleap/Coswara-Data (CC BY 4.0)."


def _coswara_loader(column: str, task: str) -> Callable[[LoadContext], list[dict[str, Any]]]:
    def load(context: LoadContext) -> list[dict[str, Any]]:
        root = _data_root(context, task, _COSWARA_LAYOUT) / "Coswara-Data"
        metadata = _read_csv(_require(root / "combined_data.csv", task, _COSWARA_LAYOUT))
        quality_file = root / "annotations" / "cough-shallow_labels.csv"
        unusable = set()
        if quality_file.is_file():
            for row in _read_csv(quality_file):
                values = list(row.values())
                if len(values) >= 2 and str(values[1]).strip() == "0":
                    unusable.add(str(values[0]).split("_")[0])
        files = {path.parent.name: path for path in _require(root / "Extracted_data", task, _COSWARA_LAYOUT)
                 .glob("*/*/cough-shallow.wav")}
        rows = []
        for row in metadata:
            participant = row["id"]
            if participant in unusable or participant not in files:
                continue
            rows.append({"path": files[participant], "label": row.get(column), "group_id": f"coswara_{participant}",
                         "modality": "cough", "sex": row.get("g")})
        return rows

    return load


register_task(TaskSpec(
    name="coswara_smoker", description="Coswara shallow cough: smoker vs non-smoker", loader=_coswara_loader("smoker", "coswara_smoker"),
    label_map={"y": "smoker", "True": "smoker", "TRUE": "smoker",
               "n": "non_smoker", "False": "non_smoker", "FALSE": "non_smoker"},
    classes=("non_smoker", "smoker"),
    label_descriptions={"non_smoker": "a cough of a non-smoker", "smoker": "a cough of a smoker"},
    split=SplitPolicy(kind="group_shuffle", test_size=0.2), family="opera", opera_id="T8",
    source=_COSWARA_SOURCE, layout=_COSWARA_LAYOUT, notes="grouped 80/20 shuffle per seed (OPERA: one stratified 80/20 draw).",
))
register_task(TaskSpec(
    name="coswara_sex_opera", description="Coswara shallow cough: female vs male (full dataset)",
    loader=_coswara_loader("g", "coswara_sex_opera"), label_map={"male": "male", "female": "female"},
    classes=("male", "female"),
    label_descriptions={"male": "a cough of a male participant", "female": "a cough of a female participant"},
    split=SplitPolicy(kind="group_shuffle", test_size=0.2), family="opera", opera_id="T9",
    source=_COSWARA_SOURCE, layout=_COSWARA_LAYOUT,
))

# T10: KAUH
_KAUH_LAYOUT = """KAUH/
  AudioFiles/<filter><P><patient>_<diagnosis>,<sounds>,<location>,<age>,<sex>.wav
      e.g. BP1_Asthma,I E W,P L L,63,M.wav (filter B/D/E = bell/diaphragm/extended)"""


def _kauh_opera_loader(context: LoadContext) -> list[dict[str, Any]]:
    task = "kauh_obstructive_opera"
    audio = _require(_data_root(context, task, _KAUH_LAYOUT) / "KAUH" / "AudioFiles", task, _KAUH_LAYOUT)
    rows = []
    for path in sorted(audio.glob("*.wav")):
        head = path.stem.split(",")[0]
        diagnosis = head.split("_")[-1]
        label = _kauh_obstructive_label("normal" if diagnosis == "N" else diagnosis.replace(" and ", "+"))
        # "BP100_N" -> "kauh_P100": the dev pack's id for the same patient, so leakage checks see the overlap.
        rows.append({"path": path, "label": label, "group_id": f"kauh_{head.split('_')[0][1:]}", "modality": "lung"})
    return rows


register_task(TaskSpec(
    name="kauh_obstructive_opera", description="KAUH lung sounds (full dataset): healthy vs obstructive",
    loader=_kauh_opera_loader, classes=("healthy", "obstructive"),
    label_descriptions={"healthy": "normal lung sounds of a healthy patient",
                        "obstructive": "an obstructive airway disease such as asthma or COPD"},
    split=SplitPolicy(kind="group_shuffle", test_size=0.2), family="opera", opera_id="T10",
    source="KAUH lung sounds (Fraiwan et al., Data in Brief 2021), Mendeley Data doi:10.17632/jwyy9np4gv (CC BY 4.0).",
    layout=_KAUH_LAYOUT, notes="OPERA-CE reaches 0.741 AUROC. Patient-grouped 80/20 per seed.",
))

# T11: RespiratoryDatabase@TR
_COPD_LAYOUT = """copd/
  Labels.csv                  columns patient id (e.g. H001), diagnosis ending in the severity digit (COPD0..COPD4)
  RespiratoryDatabase@TR/<patient id><...>.wav  (the first 4 characters of a file name are the patient id)"""


def _copd_loader(context: LoadContext) -> list[dict[str, Any]]:
    task = "copd_severity"
    root = _data_root(context, task, _COPD_LAYOUT) / "copd"
    labels = {}
    for row in _read_csv(_require(root / "Labels.csv", task, _COPD_LAYOUT)):
        values = list(row.values())
        labels[str(values[0]).strip()] = f"COPD{str(values[1]).strip()[-1]}"
    audio = _require(root / "RespiratoryDatabase@TR", task, _COPD_LAYOUT)
    return [{"path": p, "label": labels.get(p.name[:4]), "group_id": f"copd_{p.name[:4]}", "modality": "lung"}
            for p in sorted(audio.glob("*.wav"))]


register_task(TaskSpec(
    name="copd_severity", description="RespiratoryDatabase@TR: COPD severity, 5 classes (COPD0-COPD4)",
    loader=_copd_loader, classes=("COPD0", "COPD1", "COPD2", "COPD3", "COPD4"),
    label_descriptions={f"COPD{i}": f"COPD of severity {i}" for i in range(5)},
    split=SplitPolicy(kind="group_shuffle", test_size=0.2), family="opera", opera_id="T11",
    source="RespiratoryDatabase@TR (Altan et al.), Mendeley Data doi:10.17632/p9z4h98s6j.",
    layout=_COPD_LAYOUT, notes="OPERA-CE reaches 0.683 macro AUROC. Patient-grouped 80/20 per seed.",
))

# T13-T18: MMLung
_MMLUNG_LAYOUT = """mmlung/
  All_path.csv    (All_path.xlsx saved as CSV) columns Deep_Breath_file, O_Single_file (paths relative to mmlung/,
                  e.g. ./Trimmed_Data_from_phone/...), FVC, FEV1, FEV1/FVC; one row per participant
  Trimmed_Data_from_phone/...  the recordings"""
_MMLUNG_TARGETS = (("fvc", "FVC"), ("fev1", "FEV1"), ("fev1_fvc", "FEV1/FVC"))


def _mmlung_loader(column: str, target: str, task: str) -> Callable[[LoadContext], list[dict[str, Any]]]:
    def load(context: LoadContext) -> list[dict[str, Any]]:
        root = _data_root(context, task, _MMLUNG_LAYOUT) / "mmlung"
        rows = []
        for number, row in enumerate(_read_csv(_require(root / "All_path.csv", task, _MMLUNG_LAYOUT))):
            relative = _clean(row.get(column))
            if relative is None:
                continue
            rows.append({"path": (root / relative).resolve(), "label": row.get(target),
                         "group_id": f"mmlung_{row.get('ID') or row.get('participant') or number}", "modality": "breath"})
        return rows

    return load


_task_number = 13
for _column, _modality_name in (("Deep_Breath_file", "deep_breath"), ("O_Single_file", "vowel_o")):
    for _suffix, _target in _MMLUNG_TARGETS:
        _name = f"mmlung_{_modality_name}_{_suffix}"
        register_task(TaskSpec(
            name=_name, description=f"MMLung {_modality_name.replace('_', ' ')}: {_target} regression",
            loader=_mmlung_loader(_column, _target, _name), kind="regression", metric="mae",
            split=SplitPolicy(kind="leave_one_group_out"), family="opera", opera_id=f"T{_task_number}",
            source="MMLung (Mosuily et al., 2023); obtained from its authors, see OPERA's benchmark instructions.",
            layout=_MMLUNG_LAYOUT, notes="leave-one-subject-out; MAE in the target's unit (litres; ratio for FEV1/FVC).",
        ))
        _task_number += 1

# T19: NoseMic
_NOSEMIC_LAYOUT = """nosemic/
  audio/<participant>_<a>_<b>_<respiratory rate>.wav   (four underscore-separated fields, the last is the rate)"""


def _nosemic_loader(context: LoadContext) -> list[dict[str, Any]]:
    task = "nosemic_rr"
    audio = _require(_data_root(context, task, _NOSEMIC_LAYOUT) / "nosemic" / "audio", task, _NOSEMIC_LAYOUT)
    rows = []
    for path in sorted(p for p in audio.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        fields = path.stem.split("_")
        if len(fields) != 4:
            raise ValueError(f"Task {task!r}: {path.name} does not follow <participant>_<a>_<b>_<rate>.wav.\n"
                             f"{_NOSEMIC_LAYOUT}")
        rows.append({"path": path, "label": fields[3], "group_id": f"nosemic_{fields[0]}", "modality": "breath"})
    return rows


register_task(TaskSpec(
    name="nosemic_rr", description="NoseMic: respiratory rate regression", loader=_nosemic_loader, kind="regression",
    metric="mae", split=SplitPolicy(kind="leave_one_group_out"), family="opera", opera_id="T19",
    source="NoseMic (earable nose-microphone breathing, Chen et al.); see OPERA's benchmark instructions.",
    layout=_NOSEMIC_LAYOUT, notes="leave-one-subject-out; MAE in breaths per minute.",
))

OPERA_TASK_IDS = {spec.opera_id: spec.name for spec in TASKS.values() if spec.opera_id}

__all__ = [
    "DEFAULT_SEEDS",
    "OPERA_TASK_IDS",
    "TASKS",
    "LoadContext",
    "Split",
    "SplitPolicy",
    "TaskData",
    "TaskSpec",
    "get_task",
    "list_tasks",
    "load_task",
    "make_splits",
    "register_task",
    "restrict_to_splits",
]
