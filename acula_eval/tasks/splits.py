"""Patient-grouped probe splits: the split policies a task declares and the train / test indices they give.

Every split keeps a patient (group) on one side. The policies are described by [`SplitPolicy`]; [`make_splits`] turns
a task's recordings into [`Split`]s with scikit-learn's grouped splitters (`StratifiedGroupKFold`, `GroupKFold`,
`GroupShuffleSplit`, `LeaveOneGroupOut`), the same for every model evaluated on the task.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .specs import TaskData

SPLIT_KINDS = ("column", "group_kfold", "group_shuffle", "leave_one_group_out", "transfer", "heldout_group_kfold")
DEFAULT_SEEDS = (0, 1, 2, 3, 4)


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



@dataclass
class Split:
    """Indices of one probe-training / test split."""

    name: str
    train: np.ndarray
    test: np.ndarray
    seed: int


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


def restrict_to_splits(data: TaskData, splits: Sequence[Split]) -> tuple[TaskData, list[Split]]:
    """Drop the recordings that are on no side of any split (e.g. the target domain's training rows of a transfer
    task), so that they are neither embedded nor counted; the split indices are renumbered to match."""
    used = np.unique(np.concatenate([np.concatenate([s.train, s.test]) for s in splits] or [np.array([], int)]))
    if len(used) == len(data):
        return data, list(splits)
    renumber = lambda part: np.searchsorted(used, part)
    return data.select(used), [replace(s, train=renumber(s.train), test=renumber(s.test)) for s in splits]
