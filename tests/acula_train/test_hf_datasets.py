"""`datasets` in: an audiofolder, a CSV with an audio-path column and a save_to_disk folder become the manifest rows that
training reads (reports, leakage guard, audio through soundfile + soxr), and train_acula.py trains from them."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from acula_train.arguments import parse_args
from acula_train.hf_datasets import SPLIT_COLUMN, load_dataset_manifest
from acula_train.leakage import apply_leakage_guard
from acula_train.reports import build_reports
from modeling_acula.audio_utils import decode_audio

from tests.testing_utils import run_in_process, tiny_args, write_audiofolder

# 12 short (about 2 s) Yaseen heart-sound recordings of the dev pack: 10 to train on, 2 held out.
NUM_TRAIN, NUM_TEST = 10, 2
# The metadata.csv columns after file_name, in the order the error messages list them.
COLUMNS = ("modality", "diagnosis", "patient")


def yaseen_recordings(dev_pack: Path, count: int = NUM_TRAIN + NUM_TEST) -> list[dict]:
    """`count` Yaseen rows of the dev pack, the classes interleaved, each with a made-up patient (two recordings per
    patient): the metadata a dataset would carry."""
    rows = [row for row in csv.DictReader(open(dev_pack / "metadata.csv", encoding="utf-8"))
            if row["source_dataset"] == "Yaseen2018"]
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    chosen = [row for group in zip(*by_label.values()) for row in group][:count]
    return [{"source": dev_pack / row["file"], "modality": row["modality"], "diagnosis": row["diagnosis"],
             "patient": f"p{i // 2}"} for i, row in enumerate(chosen)]


def leaky_splits(recordings: list[dict]) -> dict[str, list[dict]]:
    """`train` (10 recordings: patients p0-p3 twice, p4 once, p9 once) and `test` (2: p4 and p5). Patient p4 is in
    both: the guard must remove p4's training recording."""
    splits = {"train": recordings[:NUM_TRAIN - 1] + [recordings[NUM_TRAIN]],
              "test": [dict(recordings[NUM_TRAIN - 1], patient="p4"), recordings[NUM_TRAIN + 1]]}
    splits["train"][-1] = dict(splits["train"][-1], patient="p9")
    return splits


@pytest.fixture
def audiofolder(tmp_path, dev_pack) -> Path:
    """`leaky_splits` as `train/` and `test/`, each with a metadata.csv (datasets' audiofolder layout)."""
    return write_audiofolder(tmp_path / "heart-sounds", leaky_splits(yaseen_recordings(dev_pack)), COLUMNS)


def test_audiofolder_rows_feed_reports_and_the_leakage_guard(audiofolder, tmp_path):
    manifest, held_out = load_dataset_manifest("audiofolder", data_dir=str(audiofolder), patient_column="patient",
                                               audio_dir=tmp_path / "audio")
    assert held_out == ("test",) and len(manifest) == NUM_TRAIN + NUM_TEST
    assert [row[SPLIT_COLUMN] for row in manifest.rows] == ["train"] * NUM_TRAIN + ["test"] * NUM_TEST
    # the files as they are (no copy), decoded by acula's one audio path
    assert all(path.parent.parent == audiofolder and path.is_file() for path in manifest.audio_paths)
    assert all(row["group_id"] == row["patient"] for row in manifest.rows)
    kept, report = apply_leakage_guard(manifest, split_column=SPLIT_COLUMN, eval_splits=held_out)
    # both test rows, and patient p4's training recording
    assert report.counts["split"] == NUM_TEST and report.counts["group"] == 1
    assert len(kept) == NUM_TRAIN - 1 and "p4" not in {row["patient"] for row in kept.rows}
    reports, stats = build_reports(kept)
    assert stats["source"] == "template" and len(reports) == len(kept)
    diagnosis = kept.rows[0]["diagnosis"].replace("_", " ")
    assert diagnosis in reports[0]


def test_csv_with_an_audio_path_column(tmp_path, dev_pack):
    recordings = yaseen_recordings(dev_pack, 4)
    (tmp_path / "data" / "audio").mkdir(parents=True)
    with open(tmp_path / "data" / "recordings.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "diagnosis", "modality"])
        for row in recordings:
            shutil.copy(row["source"], tmp_path / "data" / "audio" / row["source"].name)
            writer.writerow([f"audio/{row['source'].name}", row["diagnosis"], row["modality"]])
    manifest, held_out = load_dataset_manifest("csv", data_files=[str(tmp_path / "data" / "recordings.csv")],
                                               audio_column="path", audio_dir=tmp_path / "bytes")
    assert held_out == () and len(manifest) == 4
    # relative paths resolve against the CSV's folder, as a manifest's do
    assert [p.name for p in manifest.audio_paths] == [row["source"].name for row in recordings]
    assert all(p.parent == (tmp_path / "data" / "audio").resolve() for p in manifest.audio_paths)
    assert not (tmp_path / "bytes").exists()


def test_saved_dataset_with_embedded_bytes(tmp_path, dev_pack):
    from datasets import Audio, Dataset, DatasetDict

    recordings = yaseen_recordings(dev_pack, 4)

    def split(rows):
        dataset = Dataset.from_dict({"audio": [{"bytes": row["source"].read_bytes(), "path": row["source"].name}
                                               for row in rows],
                                     "diagnosis": [row["diagnosis"] for row in rows],
                                     "modality": [row["modality"] for row in rows]})
        return dataset.cast_column("audio", Audio())

    DatasetDict({"train": split(recordings[:3]), "validation": split(recordings[3:])}).save_to_disk(tmp_path / "saved")
    manifest, held_out = load_dataset_manifest(str(tmp_path / "saved"), audio_dir=tmp_path / "bytes")
    assert held_out == ("validation",) and [row[SPLIT_COLUMN] for row in manifest.rows] == ["train"] * 3 + [
        "validation"]
    for path, row in zip(manifest.audio_paths, recordings):
        # the embedded bytes were written once under audio_dir, and decode as the original file does
        assert path.is_relative_to((tmp_path / "bytes").resolve()) and path.name.endswith(row["source"].name)
        assert path.read_bytes() == row["source"].read_bytes()
        np.testing.assert_array_equal(decode_audio(path), decode_audio(row["source"]))
    again, _ = load_dataset_manifest(str(tmp_path / "saved"), audio_dir=tmp_path / "bytes")
    assert again.audio_paths == manifest.audio_paths  # same content, same files: the spectrogram cache hits


def test_a_missing_column_or_split_is_named_with_those_that_exist(audiofolder, tmp_path):
    with pytest.raises(ValueError, match=r"no column 'recording' \(--audio_column_name\).*\['audio', 'modality', "
                                         r"'diagnosis', 'patient'\]"):
        load_dataset_manifest("audiofolder", data_dir=str(audiofolder), audio_column="recording",
                              audio_dir=tmp_path / "audio")
    with pytest.raises(ValueError, match=r"no column 'subject' \(--patient_column_name\).*'patient'"):
        load_dataset_manifest("audiofolder", data_dir=str(audiofolder), patient_column="subject",
                              audio_dir=tmp_path / "audio")
    with pytest.raises(ValueError, match=r"no split 'validation' \(--eval_split_name\).*\['train', 'test'\]"):
        load_dataset_manifest("audiofolder", data_dir=str(audiofolder), eval_split_name="validation",
                              audio_dir=tmp_path / "audio")


def test_arguments_take_the_transformers_names_as_aliases(tmp_path):
    data_args, _, _ = parse_args(["--dataset_name", "audiofolder", "--data_dir", str(tmp_path),
                                  "--audio_column_name", "sound", "--report_column_name", "text"])
    assert (data_args.audio_column, data_args.report_column) == ("sound", "text")
    data_args, _, _ = parse_args(["--dataset_name", "audiofolder", "--data_dir", str(tmp_path)])
    assert data_args.audio_column == "audio" and data_args.manifest is None
    data_args, _, _ = parse_args(["--manifest", "m.csv"])
    assert data_args.audio_column == "file"
    for refused in (["--manifest", "m.csv", "--dataset_name", "audiofolder"], ["--data_dir", str(tmp_path)],
                    ["--dataset_name", "audiofolder", "--split_column", "split"]):
        with pytest.raises(SystemExit):
            parse_args(refused)


def test_train_acula_from_an_audiofolder(audiofolder, tmp_path):
    output = run_in_process(tiny_args(tmp_path / "out", tmp_path / "cache", "--dataset_name", "audiofolder",
                                      "--data_dir", str(audiofolder), "--audio_column_name", "audio",
                                      "--patient_column_name", "patient", "--max_steps", "1",
                                      "--checkpointing_steps", "0"))
    summary = json.loads((output / "data_summary.json").read_text())
    # every training row is used except the one of the held-out patient p4
    assert summary["rows_in_manifest"] == NUM_TRAIN + NUM_TEST and summary["rows_used"] == NUM_TRAIN - 1
    assert summary["manifest"] == "audiofolder"
    aligned = [json.loads(line) for line in (output / "aligned_recordings.jsonl").read_text().splitlines()]
    train_files = sorted(p.name for p in (audiofolder / "train").glob("*.flac"))
    assert len(aligned) == NUM_TRAIN - 1 and {Path(r["path"]).name for r in aligned} < set(train_files)
    assert "p4" not in {r["group_id"] for r in aligned}
    reports = [json.loads(line) for line in (output / "reports.jsonl").read_text().splitlines()]
    assert len(reports) == NUM_TRAIN - 1 and all("heart" in r["report"].lower() for r in reports)
    args = json.loads((output / "training_args.json").read_text())
    assert args["data"]["dataset_name"] == "audiofolder" and args["data"]["data_dir"] == audiofolder.name
