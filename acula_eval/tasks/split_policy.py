"""How a task's recordings are split ([`SplitPolicy`]): what a task declares ([`~acula_eval.tasks.specs.TaskSpec`]'s
`split`) and what [`~acula_eval.tasks.splits.make_splits`] follows. Its own module, so that the two know it and not
each other."""

from __future__ import annotations

from dataclasses import dataclass

SPLIT_KINDS = ("column", "group_kfold", "group_shuffle", "leave_one_group_out", "transfer", "heldout_group_kfold")


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


__all__ = ["SPLIT_KINDS", "SplitPolicy"]
