"""A deterministic patient-grouped train / val / test split, stratified by a per-patient label."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def grouped_split(groups: Sequence[str], strata: Sequence[str], *, seed: int = 0, folds: int = 5) -> list[str]:
    """
    `train` / `val` / `test` per row: every row of a group (patient) on one side, each side with about the same share
    of every stratum. The groups are cut into `folds` stratified folds (scikit-learn's `StratifiedGroupKFold`, fixed
    seed); the first fold is `test`, the second `val`, the rest `train` (60 / 20 / 20 with 5 folds).

    The result depends only on the rows' groups and strata (not on their order), so reading the same data twice
    gives the same split.

    Args:
        groups (`Sequence[str]`): group (patient) of each row.
        strata (`Sequence[str]`): stratum of each row (the same for all rows of a group, e.g. the patient's label).
        seed (`int`, *optional*, defaults to 0): the folds' shuffling seed.
        folds (`int`, *optional*, defaults to 5): number of folds (at least 3).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if folds < 3:
        raise ValueError(f"grouped_split needs at least 3 folds (test, val, train), got {folds}.")
    groups, strata = [str(g) for g in groups], [str(s) for s in strata]
    unique_groups = sorted(set(groups))
    if len(unique_groups) < folds:
        raise ValueError(f"grouped_split: {len(unique_groups)} groups cannot fill {folds} folds.")
    # Rows in a canonical order, so that the split does not depend on the order they were read in.
    order = sorted(range(len(groups)), key=lambda i: (groups[i], strata[i], i))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    sides = np.empty(len(groups), dtype=object)
    sorted_groups = np.array([groups[i] for i in order], dtype=object)
    sorted_strata = np.array([strata[i] for i in order], dtype=object)
    for fold, (_, test_index) in enumerate(splitter.split(np.zeros(len(order)), sorted_strata, sorted_groups)):
        name = "test" if fold == 0 else "val" if fold == 1 else "train"
        for position in test_index:
            sides[order[position]] = name
    return sides.tolist()
