"""eval_acula.py --dataset_name: one task from a `datasets` dataset (audio column, label column, a train and a test
split or a patient column for grouped K-fold)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import eval_acula
from acula_eval.tasks import load_task, make_splits
from acula_eval.tasks.hf_dataset import dataset_task

from tests.testing_utils import write_audiofolder

CLASSES = ("normal", "mitral_stenosis")
# The metadata.csv columns after file_name, in the order the error messages list them.
COLUMNS = ("diagnosis", "modality", "patient")


def heart_recordings(dev_pack: Path, per_class: int = 6) -> list[dict]:
    """`per_class` Yaseen recordings of each of two classes, alternating, with a patient per pair of recordings."""
    rows = list(csv.DictReader(open(dev_pack / "metadata.csv", encoding="utf-8")))
    chosen = {label: [r for r in rows if r["source_dataset"] == "Yaseen2018" and r["label"] == label][:per_class]
              for label in CLASSES}
    pairs = [row for group in zip(*chosen.values()) for row in group]
    return [{"source": dev_pack / row["file"], "diagnosis": row["label"], "modality": "heart",
             "patient": f"{row['label']}-{i // 4}"} for i, row in enumerate(pairs)]


def test_cli_evaluates_one_task_from_an_audiofolders_splits(dev_pack, tmp_path):
    recordings = heart_recordings(dev_pack)
    folder = write_audiofolder(tmp_path / "heart", {"train": recordings[:8], "test": recordings[8:]}, COLUMNS)
    payload = eval_acula.main(["--models", "logmel-stats", "--dataset_name", "audiofolder", "--data_dir", str(folder),
                               "--label_column_name", "diagnosis", "--audio_column_name", "audio",
                               "--train_split_name", "train", "--eval_split_name", "test",
                               "--dataset_task_name", "heart_murmur", "--bootstrap_samples", "20", "--seeds", "0",
                               "--cache_dir", str(tmp_path / "cache"), "--quiet", "--no_plots",
                               "--output_dir", str(tmp_path / "eval")])
    # only the dataset's task (no dev-pack task without --tasks), every recording used, split by the dataset's splits
    (task,) = payload["tasks"]
    assert task["name"] == "heart_murmur" and task["family"] == "datasets"
    assert task["num_recordings"] == len(recordings) and task["classes"] == sorted(CLASSES)
    assert task["split_policy"]["kind"] == "column" and list(task["split_policy"]["test_values"]) == ["test"]
    (result,) = payload["results"]
    assert result["task"] == "heart_murmur" and 0.0 <= result["mean"] <= 1.0
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["tasks"][0]["name"] == "heart_murmur"


def test_grouped_kfold_by_a_patient_column_of_a_saved_dataset(dev_pack, tmp_path):
    from datasets import Audio, Dataset

    recordings = heart_recordings(dev_pack)
    Dataset.from_dict({
        "recording": [str(row["source"]) for row in recordings],
        "diagnosis": [row["diagnosis"] for row in recordings],
        "subject": [row["patient"] for row in recordings],
    }).cast_column("recording", Audio()).save_to_disk(tmp_path / "saved")
    spec = dataset_task(str(tmp_path / "saved"), label_column="diagnosis", audio_column="recording",
                        patient_column="subject", n_splits=3, audio_dir=tmp_path / "audio")
    assert spec.name == "saved/diagnosis" and spec.split.kind == "group_kfold"
    data = load_task(spec)
    assert len(data) == len(recordings) and data.known_groups.all()
    assert sorted(set(data.groups)) == sorted({row["patient"] for row in recordings})
    splits = make_splits(data, seeds=[0])
    assert len(splits) == 3
    for split in splits:  # a patient never on both sides
        assert not set(data.groups[split.train]) & set(data.groups[split.test])
    # every recording tested once
    assert sorted(np.concatenate([split.test for split in splits]).tolist()) == list(range(len(recordings)))


def test_a_missing_label_column_is_named_with_the_columns_that_exist(dev_pack, tmp_path):
    folder = write_audiofolder(tmp_path / "heart", {"train": heart_recordings(dev_pack, 2)}, COLUMNS)
    with pytest.raises(ValueError, match=r"no column 'murmur' \(--label_column_name\).*\['audio', 'diagnosis', "
                                         r"'modality', 'patient'\]"):
        load_task(dataset_task("audiofolder", data_dir=str(folder), label_column="murmur",
                               audio_dir=tmp_path / "audio"))
    with pytest.raises(ValueError, match=r"no split 'test'.*\['train'\]"):
        load_task(dataset_task("audiofolder", data_dir=str(folder), label_column="diagnosis",
                               train_split_name="train", eval_split_name="test", audio_dir=tmp_path / "audio"))
    with pytest.raises(ValueError, match="--label_column_name"):
        eval_acula.main(["--models", "logmel-stats", "--dataset_name", "audiofolder", "--data_dir", str(folder),
                         "--output_dir", str(tmp_path / "eval")])
    with pytest.raises(ValueError, match="--data_dir applies with --dataset_name only"):
        eval_acula.main(["--models", "logmel-stats", "--data_dir", str(folder), "--output_dir", str(tmp_path / "e")])
