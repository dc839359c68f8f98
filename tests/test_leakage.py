"""Leakage guard: evaluation recordings (and patients) stay out of alignment."""

import csv
import logging
import shutil

import pytest

from modeling_acula.leakage import apply_leakage_guard, find_overlap, recording_keys
from modeling_acula.manifest import load_manifest


@pytest.fixture(scope="module")
def manifest(dev_pack):
    return load_manifest(dev_pack / "metadata.csv")


def _write_exclude(path, files):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "group_id"])
        writer.writerows(files)
    return path


def test_val_rows_removed_by_split_column(manifest, caplog):
    with caplog.at_level(logging.INFO, logger="modeling_acula.leakage"):
        kept, report = apply_leakage_guard(manifest, split_column="suggested_split")
    n_val = sum(row["suggested_split"] == "val" for row in manifest.rows)
    assert n_val == 340
    assert len(kept) == 1990 - n_val == report.n_kept
    assert report.counts == {"split": n_val, "recording": 0, "group": 0}
    assert all(row["suggested_split"] == "train" for row in kept.rows)
    assert kept.row_numbers[0] == manifest.row_numbers[manifest.rows.index(kept.rows[0])]  # row numbers kept
    assert "340 of 1990 rows overlap evaluation data and were removed" in report.summary()
    assert "Leakage guard" in caplog.text


def test_no_rule_no_removal(manifest):
    kept, report = apply_leakage_guard(manifest)
    assert len(kept) == len(manifest) and report.n_flagged == 0
    with pytest.raises(ValueError, match="no split column 'split'"):
        apply_leakage_guard(manifest, split_column="split")


def test_exclude_manifest_by_path_and_group(manifest, dev_pack, tmp_path):
    kauh = [i for i, row in enumerate(manifest.rows) if row["source_dataset"] == "KAUH_lung_sounds"]
    first = manifest.rows[kauh[0]]
    patient_rows = [i for i in kauh if manifest.rows[i]["group_id"] == first["group_id"]]
    assert len(patient_rows) >= 3  # three stethoscope filters of one examination, at least
    # The exclude list names the recording by another (absolute) spelling of the same path.
    exclude = _write_exclude(
        tmp_path / "eval.csv", [[str(dev_pack / "audio" / ".." / first["file"]), first["group_id"]]]
    )
    kept, report = apply_leakage_guard(manifest, exclude_manifests=[exclude])
    assert report.counts["recording"] == 1
    assert report.counts["group"] == len(patient_rows)
    assert report.n_removed == len(patient_rows)
    assert first["group_id"] not in {row["group_id"] for row in kept.rows}
    assert str(exclude.resolve()) in report.summary()

    # Without a group column in the exclude list, only the recording itself goes.
    no_group = tmp_path / "nogroup.jsonl"
    no_group.write_text('{"file": "%s"}\n' % manifest.audio_paths[kauh[0]])
    kept, report = apply_leakage_guard(manifest, exclude_manifests=[no_group])
    assert report.n_removed == 1 and report.group_column is None


def test_allow_leakage_keeps_counts_and_warns(manifest):
    with pytest.warns(UserWarning, match="LEAKAGE ALLOWED: 340 of 1990"):
        kept, report = apply_leakage_guard(manifest, split_column="suggested_split", allow_leakage=True)
    assert len(kept) == len(manifest)
    assert report.counts["split"] == 340 and report.n_removed == 0
    assert "WARNING" in report.summary() and report.to_dict()["allow_leakage"] is True


def test_recording_keys_and_content_overlap(manifest, tmp_path):
    subset = manifest.select([0, 1, 2])
    copy = tmp_path / "renamed.flac"
    shutil.copy(subset.audio_paths[1], copy)
    other_csv = _write_exclude(tmp_path / "other.csv", [["renamed.flac", ""]])
    other = load_manifest(other_csv)
    assert not set(recording_keys(subset)) & set(recording_keys(other))
    assert find_overlap(subset, other, by_content=True)["recording"] == [1]
    _, report = apply_leakage_guard(subset, exclude_manifests=[other], by_content=True)
    assert report.counts["recording"] == 1

    everything = tmp_path / "all.csv"
    _write_exclude(everything, [[str(p), ""] for p in subset.audio_paths])
    with pytest.raises(ValueError, match="removed every row"):
        apply_leakage_guard(subset, exclude_manifests=[everything])


def test_split_rule_also_removes_other_rows_of_an_eval_patient(manifest, tmp_path):
    # One patient's recordings labelled both 'test' and 'train' in the same manifest: the 'train' ones are that
    # patient's data all the same and must stay out of alignment too.
    kauh = [i for i, row in enumerate(manifest.rows) if row["source_dataset"] == "KAUH_lung_sounds"]
    patient = manifest.rows[kauh[0]]["group_id"]
    same = [i for i in kauh if manifest.rows[i]["group_id"] == patient]
    others = [i for i in kauh if manifest.rows[i]["group_id"] != patient][:3]
    assert len(same) >= 3
    rows = manifest.to_records(absolute_paths=True)
    selected = [dict(rows[i], split="train") for i in same + others]
    selected[0]["split"] = "test"
    path = tmp_path / "mixed.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(selected[0]))
        writer.writeheader()
        writer.writerows(selected)
    kept, report = apply_leakage_guard(load_manifest(path), split_column="split")
    assert patient not in {row["group_id"] for row in kept.rows}
    assert len(kept) == len(others)
    assert report.counts == {"split": 1, "recording": 0, "group": len(same) - 1}
    assert report.group_column == "group_id"
    assert f"group rule: {len(same) - 1} other rows of a patient with rows in ['val', 'test'], by 'group_id'" in (
        report.summary())
    # Without a group column only the split rule applies, and the summary says the group rule is off.
    no_group = tmp_path / "nogroup.csv"
    with open(no_group, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "split"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(selected)
    kept, report = apply_leakage_guard(load_manifest(no_group), split_column="split")
    assert len(kept) == len(selected) - 1 and "group rule: off" in report.summary()
