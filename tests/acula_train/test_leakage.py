"""Leakage guard: evaluation recordings (and patients) stay out of alignment."""

import csv
import logging
import shutil

import pytest

from acula_train.leakage import apply_leakage_guard, find_overlap, recording_keys
from acula_train.manifest import load_manifest


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
    with caplog.at_level(logging.INFO, logger="acula_train.leakage"):
        kept, report = apply_leakage_guard(manifest, split_column="suggested_split")
    n_val = sum(row["suggested_split"] == "val" for row in manifest.rows)
    assert n_val == 340
    # Two 'train' files of the pack are byte-identical to 'val' files under other names and patient ids.
    copies = {manifest.audio_paths[i].name for i in report.flagged["recording"]}
    assert copies == {"EP77_asthma.flac", "2XgDqzQkqLX9SbmSHfbqdRxSmRD2_cough-heavy.flac"}
    assert len(kept) == 1990 - n_val - 2 == report.n_kept
    assert report.counts == {"split": n_val, "recording": 2, "group": 0}
    assert all(row["suggested_split"] == "train" for row in kept.rows)
    assert kept.row_numbers[0] == manifest.row_numbers[manifest.rows.index(kept.rows[0])]  # row numbers kept
    assert "342 of 1990 rows overlap evaluation data and were removed" in report.summary()
    # Matching by path only (by_content=False) misses the copies.
    assert apply_leakage_guard(manifest, split_column="suggested_split", by_content=False)[1].counts["recording"] == 0
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
    # by path (by content, BP101_asthma.flac would go too: its bytes equal those of this first recording, BP100)
    kept, report = apply_leakage_guard(manifest, exclude_manifests=[exclude], by_content=False)
    assert report.counts["recording"] == 1
    assert report.counts["group"] == len(patient_rows)
    assert report.n_removed == len(patient_rows)
    assert first["group_id"] not in {row["group_id"] for row in kept.rows}
    assert str(exclude.resolve()) in report.summary()

    # Without a group column in the exclude list, only the recording itself goes.
    no_group = tmp_path / "nogroup.jsonl"
    no_group.write_text('{"file": "%s"}\n' % manifest.audio_paths[kauh[0]])
    kept, report = apply_leakage_guard(manifest, exclude_manifests=[no_group], by_content=False)
    assert report.n_removed == 1 and report.group_column is None
    assert apply_leakage_guard(manifest, exclude_manifests=[no_group])[1].n_removed == 2  # and its byte copy


def test_allow_leakage_keeps_counts_and_warns(manifest):
    with pytest.warns(UserWarning, match="LEAKAGE ALLOWED: 342 of 1990"):
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
    # the group rule alone (by content, a byte copy of the test row under the next patient's name would go too)
    kept, report = apply_leakage_guard(load_manifest(path), split_column="split", by_content=False)
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
    kept, report = apply_leakage_guard(load_manifest(no_group), split_column="split", by_content=False)
    assert len(kept) == len(selected) - 1 and "group rule: off" in report.summary()



# --- the evaluator's check against what a model was aligned on (aligned_recordings.jsonl) ------------------------


@pytest.fixture(scope="module")
def moved_run(manifest, dev_pack, tmp_path_factory):
    """A tiny run aligned on copies of ten PASCAL test-side recordings kept under another folder (with a manifest of
    their own, without patient ids), which was then moved away: only the recordings' content links the run to the
    dev pack the evaluator reads. Returns `(output folder, pascal_murmur task, its test indices, the ten)`."""
    from acula_eval.tasks import load_task, make_splits

    from tests.testing_utils import run_in_process, tiny_args

    root = tmp_path_factory.mktemp("moved")
    murmur = load_task("pascal_murmur", dev_pack=dev_pack)
    test = sorted({int(i) for split in make_splits(murmur) for i in split.test})
    chosen = test[:10]
    rows_by_path = dict(zip(map(str, manifest.audio_paths), manifest.rows))
    mounted = root / "mnt" / "pascal-val"
    (mounted / "audio").mkdir(parents=True)
    rows = []
    for i in chosen:
        source = murmur.paths[i]
        shutil.copy(source, mounted / "audio" / source.name)
        row = {k: v for k, v in rows_by_path[str(source)].items() if k not in ("group_id", "suggested_split")}
        rows.append({**row, "file": f"audio/{source.name}"})
    with open(mounted / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    output = run_in_process(tiny_args(root / "out", root / "cache", "--manifest", str(mounted / "metadata.csv"),
                                      "--max_steps", "1", "--checkpointing_steps", "0"))
    shutil.move(mounted, root / "elsewhere")
    return output, murmur, test, chosen


def test_leakage_check_matches_moved_data_by_content(moved_run, dev_pack):
    from acula_eval.leakage_check import check_leakage, training_manifest
    from acula_eval.tasks import load_task

    output, murmur, test, chosen = moved_run
    report = check_leakage(training_manifest(output), murmur, test)
    assert report["leaked"] is True and report["checked"] is True
    assert report["recordings"] == len(chosen) and report["status"] == "leaked" and report["method"] == "sha256"
    assert set(report["examples"]) <= {str(murmur.paths[i]) for i in chosen}
    yaseen = load_task("yaseen_valve", dev_pack=dev_pack)
    clean = check_leakage(training_manifest(output), yaseen, range(len(yaseen)))
    assert clean["status"] == "no overlap" and clean["checked"] is True and clean["leaked"] is False


def test_a_folder_without_content_hashes_is_not_checked_in_every_output(moved_run, dev_pack, tmp_path):
    import json

    import yaml

    import eval_acula
    from acula_eval.leakage_check import check_leakage, training_manifest

    output, murmur, test, _ = moved_run
    # As an older run wrote it: no aligned_recordings.jsonl, and reports.jsonl with (now stale) absolute paths.
    older = tmp_path / "older-run"
    shutil.copytree(output, older)
    (older / "aligned_recordings.jsonl").unlink(missing_ok=True)
    stale = tmp_path / "mnt" / "pascal-val"
    records = [json.loads(line) for line in (older / "reports.jsonl").read_text().splitlines()]
    (older / "reports.jsonl").write_text("".join(
        json.dumps({**record, "path": str(stale / record["file"])}) + "\n" for record in records))
    report = check_leakage(training_manifest(older), murmur, test)
    assert report["checked"] is False and report["leaked"] is None and report["status"] == "not checked"
    assert "aligned_recordings.jsonl" in report["reason"]

    payload = eval_acula.main(["--models", str(older), "logmel-stats", "--model_names", "older", "logmel",
                               "--tasks", "yaseen_valve", "--dev_pack", str(dev_pack), "--max_per_task", "20",
                               "--seeds", "0", "--probe_c", "0.1", "--bootstrap_samples", "20", "--quiet",
                               "--no_plots", "--no_retrieval", "--no_cache", "--output_dir", str(tmp_path / "eval")])
    by_model = {record["model"]: record for record in payload["results"]}
    assert by_model["older"]["status"] == "ok" and by_model["older"]["leakage"]["status"] == "not checked"
    assert by_model["older"]["leakage"]["leaked"] is None
    assert by_model["logmel"]["leakage"]["status"] == "not applicable"
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["leakage_checks"]["older"]["status"] == "not checked"
    assert "aligned_recordings.jsonl" in saved["leakage_checks"]["older"]["reason"]
    table = (tmp_path / "eval" / "results.md").read_text()
    # baseline columns (logmel-stats) come first, then the model
    assert "| leakage check | | | | n/a (no trained weights) | **not checked** |" in table
    assert "Leakage not checked for older: older-run has no aligned_recordings.jsonl" in table
    documents = [d for d in yaml.safe_load_all((tmp_path / "eval" / "model_index.yaml").read_text()) if d]
    (older_index,) = documents  # logmel-stats has no model card
    assert older_index["leakage_check"]["status"] == "not checked"
    assert "aligned_recordings.jsonl" in older_index["leakage_check"]["reason"]
