"""The CirCor tasks (per recording, per patient, systolic descriptors) and the cross-source heart tasks: labels, units,
held-out splits and the --circor requirement, on the CirCor sample (official layout) and on a fake manifest."""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import eval_acula
from acula_eval.tasks import TASKS, list_tasks, load_task, make_splits, restrict_to_splits

CIRCOR_TASKS = ("circor_murmur", "circor_murmur_patient", "circor_murmur_timing", "circor_murmur_grade",
                "circor_murmur_pitch", "circor_murmur_quality")
CROSS_TASKS = ("heart_circor_to_pascal", "heart_circor_to_yaseen", "heart_pascal_to_circor", "heart_yaseen_to_circor")


def test_circor_tasks_are_registered_documented_and_cite_the_dataset():
    assert {spec.name for spec in list_tasks("circor")} == set(CIRCOR_TASKS) | set(CROSS_TASKS)
    for name in CIRCOR_TASKS + CROSS_TASKS:
        spec = TASKS[name]
        assert "Oliveira" in spec.source and "IEEE JBHI 26(6), 2022" in spec.source and "ODC-By 1.0" in spec.source
        assert spec.notes and set(spec.label_descriptions) == set(spec.classes) and len(spec.classes) == 2
    assert TASKS["circor_murmur_patient"].pool_by == "patient_id"
    assert "elsewhere" in TASKS["circor_murmur"].notes and "unknown" in TASKS["circor_murmur"].notes.lower()
    assert "mean of the embeddings" in TASKS["circor_murmur_patient"].notes


def test_a_circor_task_without_circor_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("ACULA_CIRCOR", raising=False)
    with pytest.raises(ValueError, match="--circor"):
        load_task("circor_murmur")
    with pytest.raises(ValueError, match="training_data.csv"):
        load_task("circor_murmur", circor=tmp_path)
    with pytest.raises(ValueError, match="--circor"):
        eval_acula.main(["--models", "logmel-stats", "--tasks", "circor", "--output_dir", str(tmp_path / "out"),
                         "--quiet"])


def test_murmur_per_recording_on_the_sample(circor_sample, monkeypatch):
    monkeypatch.setenv("ACULA_CIRCOR", str(circor_sample))  # the default of LoadContext
    data = load_task("circor_murmur")
    sites = [row["murmur_at_site"] for row in data.rows]
    assert set(sites) == {"here", "absent"}  # elsewhere and unknown left out
    assert [data.classes[label] for label in data.labels] == ["present" if s == "here" else "absent" for s in sites]
    assert np.bincount(data.labels).tolist() == [13, 7] and not data.pooled
    # Only the patients alignment never sees (val + test) are read: train recordings never reach a probe.
    assert set(data.split_values) == {"val", "test"}
    # The child recorded in both campaigns (23625 = 50379) is one group.
    assert {str(data.groups[i]) for i, row in enumerate(data.rows) if row["patient_id"] in ("23625", "50379")} == {
        "circor_23625"}
    (split,) = {(tuple(s.train), tuple(s.test)) for s in make_splits(data)}  # the same split for every seed
    train, test = np.array(split[0]), np.array(split[1])
    assert set(data.split_values[train]) == {"val"} and set(data.split_values[test]) == {"test"}
    assert not set(data.groups[train]) & set(data.groups[test])


def test_murmur_per_patient_pools_every_recording_of_a_patient(circor_sample):
    data = load_task("circor_murmur_patient", circor=circor_sample)
    assert data.pooled and len(data) == 7  # the 9 val + test patients, 2 with an Unknown murmur
    by_patient = {row["patient_id"]: i for i, row in enumerate(data.rows)}
    assert set(by_patient) == {"23625", "40840", "50047", "50379", "78280", "84732", "85321"}
    murmur = by_patient["84732"]  # murmur heard at MV only: its other recordings are in the unit too
    assert data.classes[data.labels[murmur]] == "present"
    assert sorted(Path(p).name for p in data.recordings_of(murmur)) == sorted(
        p.name for p in (circor_sample / "training_data").glob("84732_*.wav"))
    assert "location" not in data.rows[murmur] and data.rows[murmur]["num_recordings"] == 2
    assert data.groups[by_patient["23625"]] == data.groups[by_patient["50379"]]
    # Every recording once; a unit's embedding is the mean of its recordings' vectors.
    paths = data.recording_paths()
    assert len(paths) == len(set(paths)) == sum(len(data.recordings_of(i)) for i in range(len(data)))
    vectors = np.arange(len(paths) * 2, dtype=np.float32).reshape(-1, 2)
    units = data.unit_embeddings(vectors)
    members = [paths.index(p) for p in data.recordings_of(murmur)]
    np.testing.assert_allclose(units[murmur], vectors[members].mean(0))
    # Leakage checks see every recording of a unit.
    assert len(data.as_manifest([murmur])) == 2
    # Splits and subsampling work on units.
    split = make_splits(data)[0]
    assert {data.rows[i]["split"] for i in split.test} == {"test"}
    small = data.select([0, 1])
    assert small.members == data.members[:2]


def _write_fake_circor(folder: Path, patients: int = 120) -> Path:
    """A manifest with the CirCor reader's columns over synthetic 4 kHz recordings: 2 sites per patient, half the
    patients with a murmur heard at the first site only; descriptors alternate."""
    rng = np.random.default_rng(0)
    rows = []
    timings, grades, pitches, qualities = (["Holosystolic", "Early-systolic", "Mid-systolic"],
                                           ["I/VI", "II/VI", "III/VI"], ["Low", "Medium", "High"],
                                           ["Harsh", "Blowing", "Musical"])
    for number in range(patients):
        murmur = "Present" if number % 2 else "Absent"
        split = ("test", "val", "train", "train", "train")[(number // 2) % 5]
        for site_number, site in enumerate(("AV", "MV")):
            path = folder / f"{1000 + number}_{site}.wav"
            sf.write(path, rng.normal(scale=0.1, size=4000 * 3).astype(np.float32), 4000)
            here = murmur == "Present" and site_number == 0
            rows.append({
                "file": path.name, "source_dataset": "CirCor2022", "modality": "heart", "location": site,
                "patient_id": str(1000 + number), "group_id": f"circor_{1000 + number}", "murmur": murmur,
                "murmur_at_site": "here" if here else ("elsewhere" if murmur == "Present" else "absent"),
                "systolic_murmur_timing": timings[(number // 2) % 3] if murmur == "Present" else "",
                "systolic_murmur_grading": grades[(number // 2) % 3] if murmur == "Present" else "",
                "systolic_murmur_pitch": pitches[(number // 2) % 3] if murmur == "Present" else "",
                "systolic_murmur_quality": qualities[(number // 2) % 3] if murmur == "Present" else "",
                "split": split,
            })
    manifest = folder / "circor.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def fake_circor(tmp_path_factory):
    return _write_fake_circor(tmp_path_factory.mktemp("fake-circor"))


@pytest.mark.parametrize("name, column, expected", [
    ("circor_murmur_timing", "systolic_murmur_timing",
     {"Holosystolic": "holosystolic", "Early-systolic": "early_systolic"}),
    ("circor_murmur_grade", "systolic_murmur_grading", {"I/VI": "grade_1", "II/VI": "grade_2_3", "III/VI": "grade_2_3"}),
    ("circor_murmur_pitch", "systolic_murmur_pitch", {"Low": "low", "Medium": "medium_high", "High": "medium_high"}),
    ("circor_murmur_quality", "systolic_murmur_quality", {"Harsh": "harsh", "Blowing": "blowing"}),
])
def test_descriptor_tasks_label_the_sites_where_the_murmur_is_heard(fake_circor, name, column, expected):
    data = load_task(name, circor=fake_circor)
    assert {row["murmur_at_site"] for row in data.rows} == {"here"}
    assert all(data.classes[label] == expected[row[column]] for label, row in zip(data.labels, data.rows))
    # Values outside the mapping (mid-systolic, musical) are left out.
    assert {row[column] for row in data.rows} == set(expected)
    # Only held-out (val + test) patients are read, and every one is tested exactly once.
    assert set(data.split_values) == {"val", "test"}
    splits = make_splits(data)
    tested = np.concatenate([s.test for s in splits])
    assert sorted(tested.tolist()) == list(range(len(data)))
    for split in splits:
        assert not set(data.groups[split.train]) & set(data.groups[split.test])


def test_a_circor_manifest_without_the_readers_columns_is_refused(tmp_path):
    manifest = tmp_path / "other.csv"
    sf.write(tmp_path / "a.wav", np.zeros(4000, dtype=np.float32), 4000)
    manifest.write_text("file,label\na.wav,x\n")
    with pytest.raises(ValueError, match="murmur_at_site"):
        load_task("circor_murmur", circor=manifest)


@pytest.mark.parametrize("name, fit, tested", [
    ("heart_circor_to_pascal", "CirCor2022", "PASCAL_CHSC2011"),
    ("heart_circor_to_yaseen", "CirCor2022", "Yaseen2018"),
    ("heart_pascal_to_circor", "PASCAL_CHSC2011", "CirCor2022"),
    ("heart_yaseen_to_circor", "Yaseen2018", "CirCor2022"),
])
def test_cross_source_tasks_test_only_held_out_rows_of_the_other_source(circor_sample, dev_pack, name, fit, tested):
    data = load_task(name, dev_pack=dev_pack, circor=circor_sample)
    data, splits = restrict_to_splits(data, make_splits(data))
    split = splits[0]
    assert all((s.train.tolist(), s.test.tolist()) == (split.train.tolist(), split.test.tolist()) for s in splits)
    assert {data.rows[i]["source_dataset"] for i in split.train} == {fit}
    assert {data.rows[i]["source_dataset"] for i in split.test} == {tested}
    held_out_value = "test" if tested == "CirCor2022" else "val"
    assert {data.rows[i]["source_split"] for i in split.test} == {held_out_value}
    for i in range(len(data)):
        row = data.rows[i]
        if row["source_dataset"] == "CirCor2022":  # here = abnormal, absent = normal; elsewhere / unknown left out
            assert data.classes[data.labels[i]] == {"here": "abnormal", "absent": "normal"}[row["murmur_at_site"]]


@pytest.mark.skipif(not os.environ.get("ACULA_CIRCOR"), reason="the full CirCor set ($ACULA_CIRCOR) is not here")
def test_the_counts_in_the_notes_are_those_of_the_full_set():
    murmur = load_task("circor_murmur")
    test = make_splits(murmur)[0].test
    assert np.bincount(murmur.labels[test]).tolist() == [479, 97] and len(murmur) == 1157
    patients = load_task("circor_murmur_patient")
    assert np.bincount(patients.labels).tolist() == [281, 74]
    timing = load_task("circor_murmur_timing")
    assert np.bincount(timing.labels).tolist() == [61, 110] and len(set(timing.groups)) == 60
