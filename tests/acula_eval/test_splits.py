"""Split policies: patient-grouped K-fold, shuffles, leave-one-group-out and the held-out K-fold on synthetic tasks."""

import numpy as np
import pytest

from acula_eval.probes import run_probe
from acula_eval.tasks import SplitPolicy, make_splits


def _synthetic(labels, groups, splits):
    from acula_eval.tasks import TaskData, get_task

    n = len(labels)
    return TaskData(spec=get_task("kauh_diagnosis"), paths=[f"/x/{i}.wav" for i in range(n)],
                    labels=np.asarray(labels), classes=["normal", "asthma", "heart_failure"][: max(labels) + 1],
                    groups=np.asarray(groups, dtype=object), known_groups=np.ones(n, bool), rows=[{}] * n,
                    split_values=np.asarray(splits, dtype=object))


def test_heldout_kfold_uses_fewer_folds_when_needed_and_refuses_impossible_ones():
    # Held-out side: 3 patients of class 0, 2 of class 1 (two recordings each); train side: 4 patients.
    labels = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1] + [0, 0, 1, 1] * 2
    groups = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"] + ["t1", "t1", "t2", "t2", "t3", "t3", "t4", "t4"]
    splits_column = ["val"] * 10 + ["train"] * 8
    data = _synthetic(labels, groups, splits_column)
    policy = SplitPolicy(kind="heldout_group_kfold", column="suggested_split", test_values=("val",), n_splits=5)
    with pytest.warns(UserWarning, match="2 held-out folds instead of 5"):
        splits = make_splits(data, policy, seeds=[0])
    assert len(splits) == 2 and sorted(np.concatenate([s.test for s in splits]).tolist()) == list(range(10))
    # A class with a single held-out patient cannot be in two test folds.
    lonely = _synthetic(labels[:8] + labels[10:], groups[:8] + groups[10:], splits_column[:8] + splits_column[10:])
    with pytest.raises(ValueError, match="holds every class in every fold"):
        make_splits(lonely, policy, seeds=[0])
    # A class absent from the held-out side altogether is named.
    absent = _synthetic(labels[:6] + labels[10:], groups[:6] + groups[10:], splits_column[:6] + splits_column[10:])
    with pytest.raises(ValueError, match="holds no recording of class"):
        make_splits(absent, policy, seeds=[0])


def test_new_split_policies_validate_their_fields():
    with pytest.raises(ValueError, match="domain_column, train_domains and test_domains"):
        SplitPolicy(kind="transfer", column="suggested_split", domain_column="source_dataset", train_domains=("a",))
    with pytest.raises(ValueError, match="on both sides"):
        SplitPolicy(kind="transfer", column="s", domain_column="d", train_domains=("a", "b"), test_domains=("b",))
    with pytest.raises(ValueError, match="split column"):
        SplitPolicy(kind="heldout_group_kfold")
    with pytest.raises(ValueError, match="n_splits >= 2"):
        SplitPolicy(kind="heldout_group_kfold", column="suggested_split", n_splits=1)


def test_group_shuffle_puts_every_class_on_both_sides_for_every_seed():
    from acula_eval.tasks import TaskData, get_task

    # Five classes, two patients each (one of them with a single patient for the rarest class would be impossible).
    labels = np.repeat(np.arange(5), 6)
    groups = np.array([f"p{i // 3}" for i in range(30)], dtype=object)  # 10 patients, 2 per class
    data = TaskData(spec=get_task("copd_severity"), paths=[f"/x/{i}.wav" for i in range(30)], labels=labels,
                    classes=[f"c{k}" for k in range(5)], groups=groups, known_groups=np.ones(30, bool), rows=[{}] * 30)
    policy = SplitPolicy(kind="group_shuffle", test_size=0.5)
    splits = make_splits(data, policy, seeds=range(5))
    assert len(splits) == 5
    for split in splits:
        for side in (split.train, split.test):
            assert set(labels[side]) == set(range(5))
    result = run_probe(np.random.default_rng(0).normal(size=(30, 4)), data, splits, bootstrap_samples=0)
    assert len(result.scores) == 5 and result.extra["scored_splits"] == 5
    # A class held by a single patient can never be on both sides: a clear error, not fewer seeds.
    lonely = TaskData(spec=data.spec, paths=data.paths, labels=np.r_[labels[:27], [5, 5, 5]],
                      classes=data.classes + ["c5"], groups=groups, known_groups=data.known_groups, rows=data.rows)
    with pytest.raises(ValueError, match="holds every class on both sides"):
        make_splits(lonely, policy, seeds=[0])


def test_group_kfold_uses_the_policy_folds_whatever_the_seed_count():
    from acula_eval.tasks import TaskData, get_task

    labels = np.arange(40) % 2
    groups = np.array([f"p{i // 2}" for i in range(40)], dtype=object)
    data = TaskData(spec=get_task("pascal_murmur"), paths=[f"/x/{i}.wav" for i in range(40)], labels=labels,
                    classes=["normal", "murmur"], groups=groups, known_groups=np.ones(40, bool), rows=[{}] * 40)
    for seeds in ([0], [0, 1, 2], range(5)):
        splits = make_splits(data, SplitPolicy(kind="group_kfold", n_splits=4), seeds=seeds)
        assert len(splits) == 4
        assert sorted(np.concatenate([s.test for s in splits]).tolist()) == list(range(40))
    same = [s.test.tolist() for s in make_splits(data, SplitPolicy(kind="group_kfold", n_splits=4), seeds=[0])]
    assert same == [s.test.tolist() for s in make_splits(data, SplitPolicy(kind="group_kfold", n_splits=4),
                                                         seeds=[0, 1, 2])]
