"""Merging acula manifests (acula_train.layouts.merge), on the CirCor sample's manifest and dev-pack rows."""

import csv
import re
from pathlib import Path

import pytest

from acula_train.layouts import load_layout
from acula_train.layouts.merge import main as merge_main
from acula_train.layouts.merge import merge_manifests, parse_input
from acula_train.layouts.prepare import write_manifest_csv
from acula_train.manifest import load_manifest
from acula_train.reports import build_reports

pytestmark = pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")

DEV_SOURCES = ("Yaseen2018", "KAUH_lung_sounds", "Coswara_20200413")


@pytest.fixture(scope="module")
def circor_csv(circor_sample, tmp_path_factory):
    """The CirCor sample as a prepared manifest (47 recordings, `split` column, `segmentation` paths)."""
    folder = tmp_path_factory.mktemp("circor")
    return write_manifest_csv(load_layout("circor", circor_sample), folder / "circor.csv")


@pytest.fixture(scope="module")
def dev_metadata(dev_pack):
    return load_manifest(dev_pack / "metadata.csv")


def _dev_subset(dev_metadata, indices, output: Path) -> Path:
    return write_manifest_csv(dev_metadata.select(indices), output)


@pytest.fixture(scope="module")
def dev_csv(dev_metadata, tmp_path_factory):
    """Six dev-pack rows (the first `train` and `val` row of three sources), one folder deeper than CirCor's."""
    indices = []
    for source in DEV_SOURCES:
        for side in ("train", "val"):
            indices.append(next(i for i, row in enumerate(dev_metadata.rows)
                                if row["source_dataset"] == source and row["suggested_split"] == side))
    return _dev_subset(dev_metadata, indices, tmp_path_factory.mktemp("dev") / "nested" / "dev.csv")


@pytest.fixture
def merged_csv(circor_csv, dev_csv, tmp_path):
    return merge_manifests([(circor_csv, "split"), (dev_csv, "suggested_split")], tmp_path / "out" / "deep" / "m.csv",
                           verbose=False)


def test_merge_keeps_every_row_its_file_and_its_split(circor_csv, dev_csv, merged_csv):
    circor, dev, merged = load_manifest(circor_csv), load_manifest(dev_csv), load_manifest(merged_csv)
    assert len(circor) == 47 and len(dev) == 6
    assert len(merged) == len(circor) + len(dev)
    # in input order, each audio path resolves to the input's file (written relative to the merged file)
    assert merged.audio_paths == circor.audio_paths + dev.audio_paths
    assert not any(Path(row["file"]).is_absolute() for row in merged.rows)
    assert not list(merged_csv.parent.glob("*.partial"))
    # the split comes from each input's own split column, in one `split` column
    assert [row["split"] for row in merged.rows] == ([row["split"] for row in circor.rows]
                                                     + [row["suggested_split"] for row in dev.rows])
    assert {row["split"] for row in merged.rows[47:]} == {"train", "val"}
    assert {row["split"] for row in merged.rows[:47]} == {"train", "val", "test"}
    # segmentation paths still name CirCor's annotation files
    for row, original in zip(merged.rows, circor.rows):
        target = (merged_csv.parent / row["segmentation"]).resolve()
        assert target == (circor_csv.parent / original["segmentation"]).resolve() and target.is_file()


def test_merged_columns_are_the_union_and_empty_cells_stay_empty(circor_csv, dev_csv, merged_csv):
    circor, dev, merged = load_manifest(circor_csv), load_manifest(dev_csv), load_manifest(merged_csv)
    new = [column for column in dev.columns if column not in circor.columns and column != "suggested_split"]
    assert merged.columns == circor.columns + new
    assert "suggested_split" not in merged.columns and "diagnosis" in new
    # a column one input lacks is empty for its rows; the other columns are the input's values
    assert all(row["murmur_at_site"] is None and row["segmentation"] is None for row in merged.rows[47:])
    assert all(row["diagnosis"] is None for row in merged.rows[:47])
    for row, original in zip(merged.rows[47:], dev.rows):
        assert {k: v for k, v in row.items() if k not in ("file", "split") and k in original} == \
               {k: v for k, v in original.items() if k not in ("file", "suggested_split")}
    with open(merged_csv, newline="", encoding="utf-8") as handle:
        cells = [cell for record in csv.reader(handle) for cell in record]
    assert "None" not in cells and "nan" not in cells


def test_reports_are_built_for_rows_of_both_sources(circor_csv, dev_csv, merged_csv):
    circor, dev, merged = load_manifest(circor_csv), load_manifest(dev_csv), load_manifest(merged_csv)
    murmur = next(i for i, row in enumerate(circor.rows) if row["murmur_at_site"] == "here")
    kauh = next(i for i, row in enumerate(dev.rows) if row["source_dataset"] == "KAUH_lung_sounds")
    reports, stats = build_reports(merged.select([murmur, 47 + kauh]))
    assert stats["source"] == "template"
    # the same report as the input's row: no field was lost or renamed on the way
    assert reports[0] == build_reports(circor.select([murmur]))[0][0]
    assert reports[1] == build_reports(dev.select([kauh]))[0][0]
    assert "murmur" in reports[0].lower() and "CirCor" in reports[0]
    assert reports[1].startswith("Lung sound recording")


def test_cli_with_a_default_split_and_a_summary(circor_csv, dev_csv, tmp_path, capsys):
    output = merge_main(["--output", str(tmp_path / "m.csv"), f"{circor_csv}:split", str(dev_csv),
                         "--default_split", "train"])
    merged = load_manifest(output)
    assert len(merged) == 53
    assert {row["split"] for row in merged.rows[47:]} == {"train"}
    # not named as the split column: the input's column is kept as it is
    assert [row["suggested_split"] for row in merged.rows[47:]] == [row["suggested_split"]
                                                                    for row in load_manifest(dev_csv).rows]
    out = capsys.readouterr().out
    assert f"{circor_csv}: 47 recordings, split column 'split'" in out
    assert f"{dev_csv}: 6 recordings, no split column, every row 'train'" in out
    assert "53 recordings from 2 manifests" in out
    # the merged train side: CirCor's 26 train recordings of 9 children plus the 6 dev rows of 6 patients or
    # recordings (Yaseen rows carry no patient id)
    patients = len({row["group_id"] for row in merged.rows if row["split"] == "train"} - {None})
    assert f"  train: {26 + 6} recordings, {patients} patients" in out


def test_parse_input_splits_off_the_column(circor_csv):
    assert parse_input("a/b.csv:suggested_split") == ("a/b.csv", "suggested_split")
    assert parse_input("a/b.csv") == ("a/b.csv", None)
    assert parse_input(str(circor_csv)) == (str(circor_csv), None)
    with pytest.raises(ValueError, match="PATH:SPLIT_COLUMN"):
        parse_input("a/b.csv:")


def test_a_missing_split_column_is_named_with_the_columns(circor_csv, dev_csv, tmp_path):
    output = tmp_path / "m.csv"
    with pytest.raises(ValueError) as error:
        merge_manifests([(circor_csv, "split"), (dev_csv, "split_name")], output)
    message = str(error.value)
    assert message.startswith(f"{dev_csv}: no split column 'split_name'") and "'suggested_split'" in message
    with pytest.raises(ValueError, match=re.escape(f"{dev_csv}: no split column named") + ".*--default_split"):
        merge_manifests([(circor_csv, "split"), (dev_csv, None)], output)
    # a `split` column that the merged split column would overwrite
    with pytest.raises(ValueError, match=re.escape(f"{circor_csv}: has a column 'split'")):
        merge_manifests([(circor_csv, None), (dev_csv, "suggested_split")], output, default_split="train")
    assert not output.exists()


def test_one_audio_file_in_two_inputs_is_an_error(circor_csv, dev_csv, dev_metadata, tmp_path):
    dev = load_manifest(dev_csv)
    # the same recording again, through another relative path (another folder), beside a new one
    other = next(i for i, row in enumerate(dev_metadata.rows) if row["source_dataset"] == "PASCAL_CHSC2011")
    again = dev_metadata.audio_paths.index(dev.audio_paths[0])
    second = _dev_subset(dev_metadata, [other, again], tmp_path / "a" / "b" / "again.csv")
    output = tmp_path / "m.csv"
    with pytest.raises(ValueError) as error:
        merge_manifests([(circor_csv, "split"), (dev_csv, "suggested_split"), (second, "suggested_split")], output)
    message = str(error.value)
    assert "1 audio file(s) are in two input manifests" in message
    assert f"{dev.audio_paths[0]}: in {dev_csv} and {second}" in message
    assert not output.exists()


def test_one_patient_in_two_inputs_is_an_error(circor_csv, dev_metadata, tmp_path):
    # two recordings of one Coswara participant, in two manifests
    rows = [i for i, row in enumerate(dev_metadata.rows) if row["source_dataset"] == "Coswara_20200413"]
    group = dev_metadata.rows[rows[0]]["group_id"]
    first, second = [i for i in rows if dev_metadata.rows[i]["group_id"] == group][:2]
    one = _dev_subset(dev_metadata, [first], tmp_path / "one.csv")
    two = _dev_subset(dev_metadata, [second], tmp_path / "two.csv")
    with pytest.raises(ValueError) as error:
        merge_manifests([(one, "suggested_split"), (circor_csv, "split"), (two, "suggested_split")],
                        tmp_path / "m.csv")
    message = str(error.value)
    assert "1 group_id value(s) are in two input manifests" in message
    assert f"{group!r}: in {one} and {two}" in message
    # the same patient within one input is that input's business, not a collision
    both = _dev_subset(dev_metadata, [first, second], tmp_path / "both.csv")
    assert len(load_manifest(merge_manifests([(both, "suggested_split"), (circor_csv, "split")],
                                             tmp_path / "ok.csv", verbose=False))) == 49


def test_fewer_than_two_inputs_is_an_error(circor_csv, tmp_path, capsys):
    with pytest.raises(ValueError, match=re.escape(f"at least two manifests; got 1: ['{circor_csv}']")):
        merge_manifests([(circor_csv, "split")], tmp_path / "m.csv")
    with pytest.raises(SystemExit) as stop:
        merge_main(["--output", str(tmp_path / "m.csv"), f"{circor_csv}:split"])
    assert stop.value.code == 2 and "at least two manifests" in capsys.readouterr().err
    assert not (tmp_path / "m.csv").exists()
