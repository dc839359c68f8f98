"""Evaluation: metric modules vs scikit-learn, bootstrap CIs, the task registry, dev-pack tasks and fake OPERA trees."""

import csv

import numpy as np
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    roc_auc_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from acula_eval.metrics import load_metric
from acula_eval.probes import run_probe
from acula_eval.tasks import (
    OPERA_TASK_IDS,
    TASKS,
    SplitPolicy,
    list_tasks,
    load_task,
    make_splits,
    restrict_to_splits,
)

# --- metrics ---------------------------------------------------------------------------------------------------


def test_roc_auc_module_matches_sklearn_binary_and_multiclass():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    scores = np.round(rng.random(80) + 0.3 * labels, 1)  # rounded: ties must count one half, as in sklearn
    result = load_metric("roc_auc", "binary").compute(references=labels.tolist(), prediction_scores=scores.tolist())
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)

    labels = np.arange(90) % 3
    probabilities = rng.dirichlet([1, 1, 1], 90)
    result = load_metric("roc_auc", "multiclass").compute(references=labels.tolist(),
                                                          prediction_scores=probabilities.tolist())
    expected = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    assert result["roc_auc"] == pytest.approx(expected, abs=1e-12)


def test_bootstrap_ci_contains_point_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 120)
    scores = rng.random(120) + 0.5 * labels
    metric = load_metric("roc_auc", "binary")
    first = metric.compute(references=labels.tolist(), prediction_scores=scores.tolist(), bootstrap_samples=300, seed=3)
    again = metric.compute(references=labels.tolist(), prediction_scores=scores.tolist(), bootstrap_samples=300, seed=3)
    assert first["roc_auc_ci_low"] < first["roc_auc"] < first["roc_auc_ci_high"]
    assert first == again
    assert first["bootstrap_samples_used"] == 300
    mae = load_metric("mae").compute(predictions=scores.tolist(), references=labels.astype(float).tolist(),
                                     bootstrap_samples=300)
    assert mae["mae_ci_low"] < mae["mae"] < mae["mae_ci_high"]


def test_regression_modules_match_sklearn():
    rng = np.random.default_rng(2)
    truth, predicted = rng.random(50) + 1.0, rng.random(50) + 1.0
    assert load_metric("mae").compute(predictions=predicted, references=truth)["mae"] == pytest.approx(
        mean_absolute_error(truth, predicted))
    assert load_metric("mape").compute(predictions=predicted, references=truth)["mape"] == pytest.approx(
        mean_absolute_percentage_error(truth, predicted))
    with pytest.raises(ValueError, match="reference"):
        load_metric("mape").compute(predictions=[1.0, 2.0], references=[0.0, 2.0])


def test_multiclass_auroc_refuses_missing_class():
    with pytest.raises(ValueError, match="every class"):
        load_metric("roc_auc", "multiclass").compute(references=[0, 1, 0, 1],
                                                     prediction_scores=[[0.5, 0.3, 0.2]] * 4)


# --- registry ----------------------------------------------------------------------------------------------------


def test_registry_covers_the_opera_table_and_documents_every_task():
    expected = {f"T{i}" for i in (1, 2, *range(5, 12), *range(13, 20))}
    assert set(OPERA_TASK_IDS) == expected
    for spec in TASKS.values():
        assert spec.description and spec.source, spec.name
        if spec.family == "opera":
            assert spec.layout, spec.name
        if spec.kind == "classification":
            assert spec.classes and set(spec.label_descriptions) == set(spec.classes), spec.name
        else:
            assert spec.metric == "mae" and spec.split.kind == "leave_one_group_out"
    assert {s.name for s in list_tasks("dev_pack")} >= {
        "pascal_murmur", "yaseen_valve", "kauh_obstructive", "kauh_abnormal", "modality", "coswara_sex",
        "heart_transfer_to_yaseen", "heart_transfer_from_yaseen", "kauh_asthma", "kauh_heart_failure",
        "kauh_diagnosis"}
    # Saturated tasks (logmel-stats >= 0.97 AUROC on the dev pack) are declared, not measured at run time.
    saturated = {s.name for s in TASKS.values() if not s.headroom}
    assert saturated == {"yaseen_valve", "modality", "heart_transfer_to_yaseen"}
    for spec in TASKS.values():
        assert spec.headroom or "Saturated" in spec.notes, spec.name


def test_dev_pack_tasks_labels_and_grouped_splits(dev_pack):
    murmur = load_task("pascal_murmur", dev_pack=dev_pack)
    assert np.bincount(murmur.labels).tolist() == [351, 129]  # extrastole / artifact / extrahls left out
    obstructive = load_task("kauh_obstructive", dev_pack=dev_pack)
    diagnoses = {row["diagnosis"] for row, label in zip(obstructive.rows, obstructive.labels) if label == 1}
    assert diagnoses == {"asthma", "copd", "heart_failure+copd", "asthma+lung_fibrosis"}
    assert {row["diagnosis"] for row, label in zip(obstructive.rows, obstructive.labels) if label == 0} == {"normal"}
    for data in (murmur, obstructive):
        splits = make_splits(data)
        assert len(splits) == 5
        for split in splits:
            assert set(data.split_values[split.test]) == {"val"}
            assert not set(data.groups[split.train]) & set(data.groups[split.test])
    sex = load_task("coswara_sex", dev_pack=dev_pack)
    folds = make_splits(sex)
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(len(sex)))  # k-fold: every recording tested exactly once
    small = sex.subsample(20, seed=0)
    assert len(small) <= 24 and len(set(small.labels.tolist())) == 2


# --- tasks with headroom: transfer and held-out K-fold -------------------------------------------------------------


@pytest.mark.parametrize("name, fit, tested", [
    ("heart_transfer_to_yaseen", {"PASCAL_CHSC2011", "HLS-CMDS_manikin"}, {"Yaseen2018"}),
    ("heart_transfer_from_yaseen", {"Yaseen2018"}, {"PASCAL_CHSC2011", "HLS-CMDS_manikin"}),
])
def test_transfer_tasks_fit_on_one_source_and_test_on_the_others_val_rows(dev_pack, name, fit, tested):
    data = load_task(name, dev_pack=dev_pack)
    assert {row["modality"] for row in data.rows} == {"heart"}  # HLS-CMDS lung rows are not heart sounds
    assert "artifact" not in {row["label"] for row in data.rows if row["source_dataset"] == "PASCAL_CHSC2011"}
    splits = make_splits(data, seeds=range(5))
    assert len(splits) == 5 and [s.seed for s in splits] == list(range(5))
    for split in splits:  # the same split for every seed
        assert split.train.tolist() == splits[0].train.tolist() and split.test.tolist() == splits[0].test.tolist()
    split = splits[0]
    train_rows, test_rows = [data.rows[i] for i in split.train], [data.rows[i] for i in split.test]
    assert {r["source_dataset"] for r in train_rows} == fit and {r["source_dataset"] for r in test_rows} == tested
    assert {r["suggested_split"] for r in test_rows} == {"val"}  # leakage-compatible with train-side alignment
    assert {r["suggested_split"] for r in train_rows} == {"train", "val"}  # every fit-source row
    assert not set(data.groups[split.train]) & set(data.groups[split.test])
    for side in (split.train, split.test):
        assert set(data.labels[side].tolist()) == {0, 1}
    expected = sum(1 for r in data.rows if r["source_dataset"] in tested and r["suggested_split"] == "val")
    assert len(split.test) == expected
    # The target's train rows are on no side: restrict_to_splits drops them and renumbers the splits.
    unused = len(data) - len(split.train) - len(split.test)
    assert unused == sum(1 for r in data.rows if r["source_dataset"] in tested and r["suggested_split"] == "train")
    small, renumbered = restrict_to_splits(data, splits)
    assert len(small) == len(data) - unused
    assert [small.paths[i] for i in renumbered[0].test] == [data.paths[i] for i in split.test]
    assert [small.paths[i] for i in renumbered[0].train] == [data.paths[i] for i in split.train]
    # Subsampling keeps recordings of every source, so neither side can vanish.
    sub = data.subsample(40, seed=0)
    sub_split = make_splits(sub, seeds=[0])[0]
    assert {sub.rows[i]["source_dataset"] for i in sub_split.test} == tested


def test_transfer_labels_per_source(dev_pack):
    data = load_task("heart_transfer_from_yaseen", dev_pack=dev_pack)
    pairs = {(r["source_dataset"], r["label"], data.classes[k]) for r, k in zip(data.rows, data.labels)}
    raw = {(source, label) for source, label, _ in pairs}
    assert ("PASCAL_CHSC2011", "extrastole", "abnormal") in pairs and ("HLS-CMDS_manikin", "s3", "abnormal") in pairs
    assert all(cls == "normal" for _, label, cls in pairs if label == "normal")
    assert all(cls == "abnormal" for _, label, cls in pairs if label != "normal")
    assert len({label for source, label in raw if source == "HLS-CMDS_manikin"}) == 10
    counts = np.bincount(data.labels, minlength=2)
    assert counts.tolist() == [351 + 150 + 9, 129 + 46 + 19 + 450 + 41]


@pytest.mark.parametrize("name, classes, folds", [
    ("kauh_asthma", 2, 2), ("kauh_heart_failure", 2, 2), ("kauh_diagnosis", 3, 2)])
def test_kauh_heldout_kfold_tests_every_val_row_once(dev_pack, name, classes, folds):
    data = load_task(name, dev_pack=dev_pack)
    assert len(data.classes) == classes
    assert {r["diagnosis"] for r in data.rows} == set(data.classes)  # pure diagnoses only
    splits = make_splits(data, seeds=range(5))
    assert len(splits) == folds
    val = np.flatnonzero(data.split_values == "val")
    tested = np.concatenate([s.test for s in splits])
    assert sorted(tested.tolist()) == val.tolist()  # every val recording tested exactly once, nothing else
    for split in splits:
        assert sorted(np.concatenate([split.train, split.test]).tolist()) == list(range(len(data)))  # all others train
        assert not set(data.groups[split.train]) & set(data.groups[split.test])
        for side in (split.train, split.test):
            assert set(data.labels[side].tolist()) == set(range(classes))
    # Same folds whatever the number of seeds.
    assert [s.test.tolist() for s in make_splits(data, seeds=[0])] == [s.test.tolist() for s in splits]
    # The plain patient-grouped 5-fold over all KAUH patients (--split_policy kfold) is still there.
    from acula_eval.runner import _policy

    kfold = make_splits(data, _policy(data, "kfold"), seeds=range(5))
    assert len(kfold) == 5
    assert sorted(np.concatenate([s.test for s in kfold]).tolist()) == list(range(len(data)))
    assert all(not set(data.groups[s.train]) & set(data.groups[s.test]) for s in kfold)


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


# --- fake OPERA trees --------------------------------------------------------------------------------------------


def _wav(path, seconds=0.3, rate=8000, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(seed).normal(0, 0.1, int(seconds * rate)).astype(np.float32), rate)
    return path


def _csv(path, header, rows, delimiter=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def opera_root(tmp_path_factory):
    """Small trees that follow each documented layout."""
    root = tmp_path_factory.mktemp("opera")
    # ICBHI
    icbhi = root / "icbhi"
    _csv(icbhi / "ICBHI_Challenge_diagnosis.txt", None,
         [[str(100 + p), "COPD" if p % 2 else "Healthy"] for p in range(8)] + [["200", "URTI"]], "\t")
    split_rows = []
    for p in list(range(8)) + [100]:
        patient = str(100 + p)
        for r in range(2):
            name = f"{patient}_{r}b1_Al_sc_Meditron"
            _wav(icbhi / "ICBHI_final_database" / f"{name}.wav", seed=p * 10 + r)
            split_rows.append([name, "train" if p < 5 else "test"])
    _csv(icbhi / "ICBHI_challenge_train_test.txt", None, split_rows, "\t")
    # KAUH
    diagnoses = ["N", "Asthma", "COPD", "heart failure", "N", "Asthma", "N", "Heart Failure + COPD", "pneumonia", "N"]
    for p, diagnosis in enumerate(diagnoses):
        for filt in "BDE":
            _wav(root / "KAUH" / "AudioFiles" / f"{filt}P{p + 1}_{diagnosis},I E W,P L L,63,M.wav", seed=p)
    # RespiratoryDatabase@TR
    # 40 patients (8 per severity): enough for a stratified 80/20 draw with every class on both sides (the real
    # database has 42).
    _csv(root / "copd" / "Labels.csv", ["Patient ID", "Diagnosis"], [[f"H{p:03d}", f"COPD{p % 5}"] for p in range(40)])
    for p in range(40):
        for channel in ("L1", "R1"):
            _wav(root / "copd" / "RespiratoryDatabase@TR" / f"H{p:03d}_{channel}.wav", seed=p)
    # NoseMic
    for user in range(4):
        for take in range(3):
            _wav(root / "nosemic" / "audio" / f"u{user}_s{take}_x_{12 + user + take}.wav", seed=user * 3 + take)
    # MMLung
    rows = []
    for user in range(5):
        _wav(root / "mmlung" / "Trimmed_Data_from_phone" / f"{user}_breath.wav", seed=user)
        _wav(root / "mmlung" / "Trimmed_Data_from_phone" / f"{user}_o.wav", seed=user + 50)
        rows.append([f"./Trimmed_Data_from_phone/{user}_breath.wav", f"./Trimmed_Data_from_phone/{user}_o.wav",
                     3.0 + user * 0.2, 2.5 + user * 0.1, 0.8])
    _csv(root / "mmlung" / "All_path.csv", ["Deep_Breath_file", "O_Single_file", "FVC", "FEV1", "FEV1/FVC"], rows)
    # COUGHVID
    rows, splits = [], []
    for number in range(12):
        uuid = f"uuid{number:02d}"
        _wav(root / "coughvid" / "wav" / f"{uuid}.wav", seed=number)
        rows.append([uuid, ["healthy", "COVID-19", "symptomatic"][number % 3], ["male", "female"][number % 2]])
        splits.append([uuid, "test" if number >= 8 else "train"])
    _csv(root / "coughvid" / "metadata_compiled.csv", ["uuid", "status", "gender"], rows)
    _csv(root / "coughvid" / "splits.csv", ["uuid", "split"], splits)
    # UK COVID-19
    participants, audio, splits = [], [], []
    for number in range(10):
        person = f"P{number}"
        participants.append([person, "Positive" if number % 2 else "Negative"])
        for modality in ("exhalation", "cough"):
            _wav(root / "covidUK" / "audio_selected" / f"{person}_{modality}.wav", seed=number)
            splits.append([f"{person}_{modality}.wav", "test" if number >= 6 else "train"])
        audio.append([person, f"{person}_exhalation.wav", f"{person}_cough.wav"])
    _csv(root / "covidUK" / "participant_metadata.csv", ["participant_identifier", "covid_test_result"], participants)
    _csv(root / "covidUK" / "audio_metadata.csv", ["participant_identifier", "exhalation_file_name", "cough_file_name"], audio)
    _csv(root / "covidUK" / "splits.csv", ["file_name", "split"], splits)
    # Coswara
    rows = []
    for number in range(12):
        person = f"id{number:02d}"
        _wav(root / "Coswara-Data" / "Extracted_data" / "20200501" / person / "cough-shallow.wav", seed=number)
        rows.append([person, ["male", "female"][number % 2], ["y", "n", "False"][number % 3]])
    _csv(root / "Coswara-Data" / "combined_data.csv", ["id", "g", "smoker"], rows)
    _csv(root / "Coswara-Data" / "annotations" / "cough-shallow_labels.csv", ["FILENAME", "QUALITY"],
         [["id11_cough-shallow", "0"]])
    return root


EXPECTED_OPERA = {  # task -> (recordings, classes or None)
    "icbhi_copd": (16, 2), "kauh_obstructive_opera": (24, 2), "copd_severity": (80, 5), "nosemic_rr": (12, None),
    "mmlung_deep_breath_fvc": (5, None), "mmlung_vowel_o_fev1_fvc": (5, None), "coughvid_covid": (8, 2),
    "coughvid_sex": (12, 2), "covid_uk_exhalation": (10, 2), "covid_uk_cough": (10, 2), "coswara_smoker": (11, 2),
    "coswara_sex_opera": (11, 2),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_OPERA))
def test_opera_loaders_on_fake_trees(opera_root, name):
    data = load_task(name, data_root=opera_root)
    count, classes = EXPECTED_OPERA[name]
    assert len(data) == count
    assert all(path.is_file() for path in data.paths)
    if classes:
        assert len(data.classes) == classes
    splits = make_splits(data, seeds=[0, 1])
    for split in splits:
        assert not set(data.groups[split.train]) & set(data.groups[split.test])
    if name == "icbhi_copd":  # the official split, by patient
        assert {data.rows[i]["split"] for i in splits[0].test} == {"test"}


def test_kauh_opera_rule_and_patient_groups(opera_root):
    data = load_task("kauh_obstructive_opera", data_root=opera_root)
    names = {p.name.split(",")[0].split("_", 1)[1] for p, label in zip(data.paths, data.labels) if label == 1}
    assert names == {"Asthma", "COPD", "Heart Failure + COPD"}
    assert len(set(data.groups)) == 8  # three filter versions of one examination share a patient
    # The dev pack names KAUH patients "kauh_P<n>": the same ids, so a leakage check sees a patient in both.
    assert set(data.groups) <= {f"kauh_P{n}" for n in range(1, 11)} and {"kauh_P1", "kauh_P10"} <= set(data.groups)


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


def test_leave_one_subject_out_regression_scores_every_subject():
    from acula_eval.tasks import TaskData, get_task

    # Subjects with one and with several recordings: each held-out subject is one split and one score.
    groups = np.array(["a", "a", "a", "b", "c", "d", "d", "e", "f", "g", "h", "i"], dtype=object)
    labels = np.linspace(10, 20, len(groups))
    data = TaskData(spec=get_task("nosemic_rr"), paths=[f"/x/{i}.wav" for i in range(len(groups))], labels=labels,
                    classes=[], groups=groups, known_groups=np.ones(len(groups), bool), rows=[{}] * len(groups))
    splits = make_splits(data, SplitPolicy(kind="leave_one_group_out"))
    features = np.c_[labels + np.random.default_rng(0).normal(0, 1.0, len(groups)), np.ones(len(groups))]
    result = run_probe(features, data, splits, bootstrap_samples=0)
    assert len(result.scores) == len(set(groups)) == result.extra["scored_splits"]


def test_bootstrap_resamples_patients_not_recordings():
    from acula_eval.probes import score_predictions

    rng = np.random.default_rng(0)
    # 12 patients with 10 near-identical recordings each: 12 independent observations, not 120.
    patient_label = np.arange(12) % 2
    patient_score = rng.normal(size=12) + 0.3 * patient_label
    labels, scores = np.repeat(patient_label, 10), np.repeat(patient_score, 10) + rng.normal(0, 1e-3, 120)
    groups = np.repeat([f"p{i}" for i in range(12)], 10)
    flat = score_predictions(labels, np.c_[1 - scores, scores], classification=True, bootstrap_samples=300)
    grouped = score_predictions(labels, np.c_[1 - scores, scores], classification=True, bootstrap_samples=300,
                                groups=groups)
    assert grouped["roc_auc"] == flat["roc_auc"]
    assert (grouped["roc_auc_ci_high"] - grouped["roc_auc_ci_low"]) > 1.5 * (flat["roc_auc_ci_high"] - flat["roc_auc_ci_low"])
    values = np.repeat(rng.normal(size=12), 10)
    flat = score_predictions(values, values + np.repeat(rng.normal(size=12), 10), classification=False,
                             bootstrap_samples=300)
    grouped = score_predictions(values, values + np.repeat(rng.normal(size=12), 10), classification=False,
                                bootstrap_samples=300, groups=groups)
    assert (grouped["mae_ci_high"] - grouped["mae_ci_low"]) > 1.5 * (flat["mae_ci_high"] - flat["mae_ci_low"])


def test_opera_tasks_fail_clearly_without_data(tmp_path):
    with pytest.raises(ValueError, match="pass --data_root"):
        load_task("icbhi_copd")
    with pytest.raises(ValueError, match=r"ICBHI_Challenge_diagnosis.txt not found.*Expected layout"):
        load_task("icbhi_copd", data_root=tmp_path)


def test_probe_separable_random_and_regression():
    rng = np.random.default_rng(0)
    from acula_eval.tasks import TaskData, get_task

    spec = get_task("pascal_murmur")
    labels = np.arange(60) % 2
    groups = np.array([f"g{i // 2}" for i in range(60)], dtype=object)
    data = TaskData(spec=spec, paths=[f"/x/{i}.wav" for i in range(60)], labels=labels, classes=["normal", "murmur"],
                    groups=groups, known_groups=np.ones(60, bool), rows=[{}] * 60)
    separable = rng.normal(size=(60, 8)) + 3.0 * labels[:, None]
    splits = make_splits(data, SplitPolicy(kind="group_kfold"), seeds=range(5))
    result = run_probe(separable, data, splits, bootstrap_samples=100)
    assert result.mean > 0.95 and result.pooled["roc_auc_ci_low"] > 0.8
    noise_features = rng.normal(size=(60, 8))
    noise = run_probe(noise_features, data, splits, bootstrap_samples=100)
    assert noise.pooled["roc_auc_ci_low"] < 0.5 < noise.pooled["roc_auc_ci_high"] + 0.2
    # each split's AUROC recomputed with scikit-learn alone (standardised logistic regression at the C the probe
    # chose), and the mean and population std over the five splits
    expected = []
    for split, strength in zip(splits, noise.extra["regularisation"]):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=strength, solver="newton-cholesky", max_iter=500))
        probe.fit(noise_features[split.train], labels[split.train])
        expected.append(roc_auc_score(labels[split.test], probe.predict_proba(noise_features[split.test])[:, 1]))
    np.testing.assert_allclose(noise.scores, expected, rtol=1e-6)
    assert noise.mean == pytest.approx(np.mean(expected)) and noise.std == pytest.approx(np.std(expected))
    assert noise.std > 0.01  # five different splits of noise do not score alike

    regression = TaskData(spec=get_task("nosemic_rr"), paths=[f"/x/{i}.wav" for i in range(30)],
                          labels=np.linspace(10, 20, 30), classes=[], groups=np.array([f"u{i % 6}" for i in range(30)],
                          dtype=object), known_groups=np.ones(30, bool), rows=[{}] * 30)
    features = np.c_[regression.labels + rng.normal(0, 0.1, 30), rng.normal(size=(30, 3))]
    result = run_probe(features, regression, make_splits(regression), bootstrap_samples=100)
    assert result.metric == "mae" and result.pooled["mae"] < 0.5 < np.abs(regression.labels - 15).mean()
    assert "mape" in result.pooled
