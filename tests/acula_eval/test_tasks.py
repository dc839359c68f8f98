"""The task registry, the dev-pack task families (basic, transfer, KAUH held-out) and the OPERA loaders on fake trees."""

import csv

import numpy as np
import pytest
import soundfile as sf

from acula_eval.tasks import (
    OPERA_TASK_IDS,
    TASKS,
    list_tasks,
    load_task,
    make_splits,
    restrict_to_splits,
)

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
    from acula_eval.runner import chosen_split_policy

    kfold = make_splits(data, chosen_split_policy(data, "kfold"), seeds=range(5))
    assert len(kfold) == 5
    assert sorted(np.concatenate([s.test for s in kfold]).tolist()) == list(range(len(data)))
    assert all(not set(data.groups[s.train]) & set(data.groups[s.test]) for s in kfold)


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


def test_opera_tasks_fail_clearly_without_data(tmp_path):
    with pytest.raises(ValueError, match="pass --data_root"):
        load_task("icbhi_copd")
    with pytest.raises(ValueError, match=r"ICBHI_Challenge_diagnosis.txt not found.*Expected layout"):
        load_task("icbhi_copd", data_root=tmp_path)
