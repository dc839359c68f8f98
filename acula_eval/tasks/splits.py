"""Patient-grouped probe splits: the train / test indices that a task's split policy gives.

Every split keeps a patient (group) on one side. The policies are described by [`SplitPolicy`] (`split_policy.py`);
[`make_splits`] turns a task's recordings into [`Split`]s with scikit-learn's grouped splitters
(`StratifiedGroupKFold`, `GroupKFold`, `GroupShuffleSplit`, `LeaveOneGroupOut`), the same for every model evaluated
on the task.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, Self

import numpy as np

from .split_policy import SplitPolicy

DEFAULT_SEEDS = (0, 1, 2, 3, 4)


class TaskRecordings(Protocol):
    """What a split reads of a task's recordings: [`~acula_eval.tasks.specs.TaskData`] is one (named here by what it
    offers, so that this module need not know the task specs)."""

    spec: Any  # the task: its `name`, `kind` and default `split` policy
    labels: np.ndarray
    groups: np.ndarray
    classes: list[str]
    rows: list[dict[str, Any]]
    split_values: np.ndarray | None

    def __len__(self) -> int: ...

    def select(self, indices: Sequence[int]) -> Self: ...


@dataclass
class Split:
    """Indices of one probe-training / test split."""

    name: str
    train: np.ndarray
    test: np.ndarray
    seed: int


def _check_split(data: TaskRecordings, split: Split, every_class: bool = False) -> None:
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


def make_splits(data: TaskRecordings, policy: SplitPolicy | None = None,
                seeds: Sequence[int] = DEFAULT_SEEDS) -> list[Split]:
    """
    Patient-grouped probe splits, the same for every model evaluated on the task.

    Args:
        data (`TaskRecordings`): the task's recordings.
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
        domains = np.array([_text(row.get(policy.domain_column)) for row in data.rows])
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


def _text(value) -> str:
    """A metadata value as stripped text ("" where a row has none)."""
    return "" if value is None else str(value).strip()


def _split_column(data: TaskRecordings, policy: SplitPolicy) -> np.ndarray:
    """The task's split column, lower-cased ("" where a row has none)."""
    if data.split_values is None:
        raise ValueError(f"Task {data.spec.name!r} has no split column {policy.column!r}; use a grouped policy.")
    return np.array([str(v).lower() if v is not None else "" for v in data.split_values])


def _heldout_folds(data: TaskRecordings, held_out: np.ndarray, policy: SplitPolicy, seed: int) -> list[np.ndarray]:
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
                try:
                    folds = [held_out[test] for _, test in splitter.split(held_out, labels, groups)]
                except ValueError:  # every class has fewer members than folds: try fewer folds
                    break
            if not classification or all(np.array_equal(np.unique(data.labels[f]), every_class) for f in folds):
                if n_splits < policy.n_splits:
                    warnings.warn(f"Task {name!r}: {n_splits} held-out folds instead of {policy.n_splits}: a class has "
                                  f"too few held-out patients for more folds that each hold every class.", stacklevel=3)
                return folds
    raise ValueError(f"Task {name!r}: no grouped K-fold (K >= 2) over the held-out side ({policy.column} in "
                     f"{policy.test_values}) holds every class in every fold; too few held-out patients per class.")


def restrict_to_splits(data: TaskRecordings, splits: Sequence[Split]) -> tuple[TaskRecordings, list[Split]]:
    """Drop the recordings that are on no side of any split (e.g. the target domain's training rows of a transfer
    task), so that they are neither embedded nor counted; the split indices are renumbered to match."""
    used = np.unique(np.concatenate([np.concatenate([s.train, s.test]) for s in splits] or [np.array([], int)]))
    if len(used) == len(data):
        return data, list(splits)
    renumber = lambda part: np.searchsorted(used, part)
    return data.select(used), [replace(s, train=renumber(s.train), test=renumber(s.test)) for s in splits]
