"""Paired differences between two encoders (patient-level bootstrap) and the few-label probes."""

import numpy as np
import pytest

from acula_eval.paired import PairedTask, paired_bootstrap, paired_differences, paired_mean_bootstrap
from acula_eval.probes import distinct_splits, draw_few_shot, run_few_shot
from acula_eval.tasks import Split, SplitPolicy, TaskData, TaskSpec

# --- an independent, plain-numpy transcription of the paired bootstrap --------------------------------------------


def _auroc(labels, scores):
    """AUROC by counting pairs (no ranks): P(score of a positive > score of a negative) + half the ties."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return (greater + 0.5 * ties) / (len(positive) * len(negative))


def _reference_paired_interval(labels, model, reference, groups, samples, seed, level=0.95):
    names = sorted(set(str(g) for g in groups))
    members = {name: [i for i in range(len(groups)) if str(groups[i]) == name] for name in names}
    rng = np.random.default_rng(seed)
    differences = []
    for draw in rng.integers(0, len(names), (samples, len(names))):
        index = np.array([i for g in draw for i in members[names[g]]])
        if len(set(labels[index].tolist())) < 2:
            continue
        differences.append(_auroc(labels[index], model[index]) - _auroc(labels[index], reference[index]))
    alpha = (1 - level) / 2
    return _auroc(labels, model) - _auroc(labels, reference), np.quantile(differences, [alpha, 1 - alpha])


def _fixed_data(seed=0, patients=40, per_patient=3):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i:02d}" for i in range(patients)], per_patient)
    labels = np.repeat(rng.permutation(np.arange(patients) % 2), per_patient)
    better = labels + rng.normal(scale=0.8, size=len(labels))  # a real signal
    worse = labels + rng.normal(scale=3.0, size=len(labels))  # a weak one
    return labels, better, worse, groups


def test_paired_bootstrap_matches_an_independent_transcription():
    labels, better, worse, groups = _fixed_data()
    task = PairedTask("t", labels, better, worse, groups)
    result = paired_bootstrap(task, samples=1000, seed=3)
    point, (low, high) = _reference_paired_interval(labels, better, worse, groups, samples=1000, seed=3)
    assert result["difference"] == pytest.approx(point, abs=1e-12)
    assert result["ci_low"] == pytest.approx(low, abs=1e-12) and result["ci_high"] == pytest.approx(high, abs=1e-12)
    assert result["model_auroc"] == pytest.approx(_auroc(labels, better))
    assert result["num_test_groups"] == 40 and result["bootstrap_samples_used"] == 1000


def test_a_real_difference_is_above_zero_and_identical_models_give_exactly_zero():
    labels, better, worse, groups = _fixed_data(seed=1)
    real = paired_bootstrap(PairedTask("t", labels, better, worse, groups), samples=1000)
    assert real["ci_low"] > 0 and real["difference"] > real["ci_low"]
    reverse = paired_bootstrap(PairedTask("t", labels, worse, better, groups), samples=1000)
    assert reverse["ci_high"] < 0
    same = paired_bootstrap(PairedTask("t", labels, better, better.copy(), groups), samples=1000)
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0.0
    # Two-column probabilities (as probes give them) are the same as positive-class scores.
    probabilities = np.stack([1 - better, better], axis=1)
    assert paired_bootstrap(PairedTask("t", labels, probabilities, worse, groups), samples=200)["ci_low"] == \
        paired_bootstrap(PairedTask("t", labels, better, worse, groups), samples=200)["ci_low"]


def test_the_mean_over_tasks_resamples_shared_patients_jointly():
    labels, better, worse, groups = _fixed_data(seed=2)
    first = PairedTask("a", labels, better, worse, groups)
    second = PairedTask("b", labels[::-1], better[::-1], worse[::-1], groups[::-1])  # the same patients
    mean = paired_mean_bootstrap([first, second], samples=500)
    assert mean["mean_difference"] == pytest.approx(first.difference())
    assert mean["num_test_groups"] == 40 and mean["ci_low"] > 0
    # The same patients in both tasks, drawn jointly: the mean's resamples are those of one task alone (both tasks
    # see the same multiset of patients in every resample), so the interval is exactly the single task's joint one.
    alone = paired_mean_bootstrap([first], samples=500)
    assert mean["ci_low"] == pytest.approx(alone["ci_low"]) and mean["ci_high"] == pytest.approx(alone["ci_high"])
    identical = paired_mean_bootstrap([PairedTask("a", labels, better, better, groups)], samples=200)
    assert identical["mean_difference"] == identical["ci_low"] == identical["ci_high"] == 0.0


def test_paired_differences_compare_every_column_with_the_reference():
    labels, better, worse, groups = _fixed_data(seed=4)
    index = np.arange(len(labels))
    to_matrix = lambda s: np.stack([1 - s, s], axis=1)  # noqa: E731
    predictions = {"t": {"start": (index, to_matrix(worse)), "aligned": (index, to_matrix(better)),
                         "same": (index, to_matrix(worse))}}
    result = paired_differences(predictions, {"t": labels}, {"t": groups}, ["start", "aligned", "same"], "start",
                                headroom_tasks=["t"], samples=300)
    by_model = {r["model"]: r for r in result["tasks"]}
    assert set(by_model) == {"aligned", "same"} and result["reference"] == "start"
    assert by_model["aligned"]["ci_low"] > 0 and by_model["same"]["ci_low"] == by_model["same"]["ci_high"] == 0
    assert result["mean_over_tasks_with_headroom"]["aligned"]["mean_difference"] == pytest.approx(
        by_model["aligned"]["difference"])
    predictions["t"]["aligned"] = (index[1:], to_matrix(better)[1:])
    with pytest.raises(ValueError, match="different units"):
        paired_differences(predictions, {"t": labels}, {"t": groups}, ["start", "aligned"], "start")


# --- few labels ---------------------------------------------------------------------------------------------------


def _task(labels, groups, splits_column=None, classes=("a", "b")):
    spec = TaskSpec(name="toy", description="toy", loader=lambda context: [], classes=classes,
                    label_descriptions={c: c for c in classes}, split=SplitPolicy(kind="group_kfold"))
    n = len(labels)
    return TaskData(spec=spec, paths=[f"/x/{i}.wav" for i in range(n)], labels=np.asarray(labels),
                    classes=list(classes), groups=np.asarray(groups, dtype=object),
                    known_groups=np.ones(n, dtype=bool), rows=[{} for _ in range(n)],
                    split_values=None if splits_column is None else np.asarray(splits_column, dtype=object))


def test_few_shot_draws_take_k_units_per_class_from_different_patients():
    labels = np.array([0] * 30 + [1] * 30)
    groups = np.array([f"p{i // 3}" for i in range(60)])  # 10 patients per class, 3 recordings each
    candidates = np.arange(0, 60, 1)[np.arange(60) % 7 != 0]
    drawn, aware = draw_few_shot(labels, groups, candidates, 8, np.random.default_rng(0))
    assert aware and set(drawn) <= set(candidates.tolist())
    assert np.bincount(labels[drawn]).tolist() == [8, 8]
    for label in (0, 1):
        assert len(set(groups[drawn[labels[drawn] == label]])) == 8  # 8 different patients per class
    # Fewer patients than k: round-robin over the patients (each once before any twice), flagged as such.
    drawn, aware = draw_few_shot(labels, groups, np.arange(60), 16, np.random.default_rng(0))
    assert not aware and np.bincount(labels[drawn]).tolist() == [16, 16]
    counts = np.unique(groups[drawn], return_counts=True)[1]
    assert counts.max() - counts.min() <= 1
    assert draw_few_shot(labels, groups, np.arange(60), 31, np.random.default_rng(0)) is None
    # The draw depends on the seed only.
    again = draw_few_shot(labels, groups, candidates, 8, np.random.default_rng(0))[0]
    assert again.tolist() == draw_few_shot(labels, groups, candidates, 8, np.random.default_rng(0))[0].tolist()


def test_few_shot_probes_are_fitted_on_the_training_side_and_scored_on_the_test_side():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 60)
    groups = np.array([f"p{i // 2}" for i in range(120)], dtype=object)
    # A signal on the test side only would be invisible to a probe fitted on the training side.
    features = rng.normal(size=(120, 6))
    features[:, 0] += 3 * labels
    data = _task(labels, groups)
    train, test = np.arange(80), np.arange(80, 120)
    splits = [Split("s0", train, test, 0), Split("s1", train, test, 1)]  # one distinct split, two seeds
    assert len(distinct_splits(splits)) == 1
    result = run_few_shot(features, data, splits, [4, 8, 50], draws=5)
    assert result["4"]["draws"] == 5 and len(result["4"]["scores"]) == 5 and result["8"]["mean"] > 0.9
    assert result["50"] == {"per_class": 50, "skipped": "a class has fewer than 50 units on the probe-training "
                                                        "side (every split's training side)"}
    assert result["4"]["drawn_from"] == ["every split's training side"]
    assert run_few_shot(features, data, splits, [4], draws=5) == {"4": result["4"]}  # deterministic
    # The scores are those of the test side's features, and the probes learn from the training side's only: noise
    # there leaves nothing to learn.
    scrambled = features.copy()
    scrambled[test] = features[test][::-1]
    assert run_few_shot(scrambled, data, splits, [4], draws=5)["4"]["scores"] != result["4"]["scores"]
    noise = features.copy()
    noise[train] = rng.normal(size=(80, 6))
    assert run_few_shot(noise, data, splits, [8], draws=5)["8"]["mean"] < 0.8
    with pytest.raises(ValueError, match="binary"):
        run_few_shot(features, _task(np.arange(120) % 3, groups, classes=("a", "b", "c")), splits, [4])


def test_few_shot_draws_from_the_units_every_split_trains_on_or_per_split(monkeypatch):
    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 60)
    groups = np.array([f"p{i // 2}" for i in range(120)], dtype=object)
    features = rng.normal(size=(120, 4))
    features[:, 0] += 2 * labels
    data = _task(labels, groups)
    # Held-out K-fold: rows 0-59 train every fold's probe; the few labels come from them only, and every held-out
    # row is predicted once per draw.
    folds = [np.arange(60, 80), np.arange(80, 100), np.arange(100, 120)]
    heldout = [Split(f"f{i}", np.setdiff1d(np.arange(120), fold), fold, 0) for i, fold in enumerate(folds)]
    import acula_eval.probes as probes

    fitted_rows, original = [], probes.fit_probe
    tagged = np.concatenate([features, np.arange(120)[:, None]], axis=1)  # the last column names the row

    def recording_fit(train_features, *args, **kwargs):
        fitted_rows.append(train_features[:, -1].astype(int))
        return original(train_features, *args, **kwargs)

    monkeypatch.setattr(probes, "fit_probe", recording_fit)
    shared = run_few_shot(tagged, data, heldout, [8], draws=4)["8"]
    assert shared["drawn_from"] == ["every split's training side"]
    assert len(fitted_rows) == 4  # one probe per draw predicts every held-out row
    for rows in fitted_rows:  # from the rows every fold trains on; 8 different patients per class
        assert rows.max() < 60 and len(rows) == 16
        assert all(len(set(groups[rows[labels[rows] == k]])) == 8 for k in (0, 1))
    monkeypatch.setattr(probes, "fit_probe", original)
    assert len(shared["scores"]) == 4
    # A K-fold over all rows has no common training rows: each fold draws from its own training side.
    kfold = [Split(f"k{i}", np.setdiff1d(np.arange(120), fold), fold, 0)
             for i, fold in enumerate(np.array_split(np.arange(120), 3))]
    assert run_few_shot(features, data, kfold, [8], draws=2)["8"]["drawn_from"] == ["k0", "k1", "k2"]
