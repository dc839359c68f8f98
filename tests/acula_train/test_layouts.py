"""Public datasets in their own layouts (acula_train.layouts), on the CirCor sample in the official layout."""

import csv
import hashlib
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from acula_train.layouts import LAYOUTS, DatasetLayout, load_layout, register_layout
from acula_train.layouts.checksums import verify_sha256sums
from acula_train.layouts.circor import murmur_at_site
from acula_train.layouts.prepare import main as prepare_main
from acula_train.layouts.splitting import grouped_split
from acula_train.manifest import load_manifest

pytestmark = pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")


@pytest.fixture(scope="module")
def circor(circor_sample):
    return load_layout("circor", circor_sample)


@pytest.fixture
def circor_copy(circor_sample, tmp_path):
    return Path(shutil.copytree(circor_sample, tmp_path / "circor"))


def test_circor_sample_reads_one_row_per_recording(circor, circor_sample):
    assert len(circor) == 47
    assert len({row["patient_id"] for row in circor.rows}) == 16
    assert all(path.is_file() and path.parent == circor_sample.resolve() / "training_data"
               for path in circor.audio_paths)
    assert {row["source_dataset"] for row in circor.rows} == {"CirCor2022"}
    assert all(row["sampling_rate"] == 4000 and row["duration_s"] > 1 for row in circor.rows)
    # every listed segmentation file is there
    assert all((circor_sample / row["segmentation"]).is_file() for row in circor.rows)


def test_additional_id_pair_is_one_group(circor):
    groups = {row["patient_id"]: row["group_id"] for row in circor.rows}
    assert groups["23625"] == groups["50379"]
    assert len(set(groups.values())) == 15
    # one side of the split for the whole child
    assert len({row["split"] for row in circor.rows if row["patient_id"] in ("23625", "50379")}) == 1


def test_murmur_is_read_at_the_recording_site(circor, circor_sample):
    table = {row["Patient ID"]: row for row in csv.DictReader(open(circor_sample / "training_data.csv"))}
    counted = Counter()
    for row in circor.rows:
        patient = table[row["patient_id"]]
        if patient["Murmur"] == "Present":
            expected = "here" if row["location"] in patient["Murmur locations"].split("+") else "elsewhere"
            assert row["systolic_murmur_timing"] == patient["Systolic murmur timing"]
        else:
            expected = patient["Murmur"].lower()
            assert row["systolic_murmur_timing"] is None  # "nan" is "not recorded"
        assert row["murmur_at_site"] == expected
        counted[expected] += 1
    assert set(counted) == {"here", "elsewhere", "absent", "unknown"}
    assert murmur_at_site("Present", "AV+MV", "PV") == "elsewhere"
    with pytest.raises(ValueError, match="Murmur value"):
        murmur_at_site("Maybe", None, "AV")


def test_split_is_deterministic_grouped_and_stratified(circor, circor_sample):
    again = load_layout("circor", circor_sample, verify_checksums=False, read_audio_info=False)
    assert [row["split"] for row in again.rows] == [row["split"] for row in circor.rows]
    assert {row["split"] for row in circor.rows} == {"train", "val", "test"}
    by_group = {}
    for row in circor.rows:
        assert by_group.setdefault(row["group_id"], row["split"]) == row["split"]
    # independent of row order, different with another seed
    groups = [f"g{i // 3}" for i in range(60)]
    strata = ["yes" if (i // 3) % 4 == 0 else "no" for i in range(60)]
    order = list(range(60))
    random.Random(1).shuffle(order)
    first = grouped_split(groups, strata, seed=0)
    shuffled = grouped_split([groups[i] for i in order], [strata[i] for i in order], seed=0)
    assert [first[i] for i in order] == shuffled
    assert grouped_split(groups, strata, seed=1) != first
    positives = Counter(side for side, stratum in zip(first, strata) if stratum == "yes")
    assert set(positives) == {"train", "val", "test"}


def test_checksums_name_changed_and_missing_files(circor_copy):
    wav = circor_copy / "training_data" / "23625_AV.wav"
    data = bytearray(wav.read_bytes())
    data[-1] ^= 1
    wav.write_bytes(bytes(data))
    (circor_copy / "training_data" / "23625_MV.tsv").unlink()
    with pytest.raises(ValueError) as error:
        load_layout("circor", circor_copy)
    assert "training_data/23625_AV.wav" in str(error.value) and "differs" in str(error.value)
    assert "training_data/23625_MV.tsv" in str(error.value) and "missing" in str(error.value)


def test_checksums_accept_text_copies_with_lf_line_ends(tmp_path):
    official = b"line one\r\nline two\r\n"
    (tmp_path / "a.txt").write_bytes(official.replace(b"\r\n", b"\n"))
    (tmp_path / "b.wav").write_bytes(b"RIFF....")
    (tmp_path / "SHA256SUMS.txt").write_text(
        f"{hashlib.sha256(official).hexdigest()} a.txt\n{hashlib.sha256(b'RIFF....').hexdigest()} b.wav\n")
    assert verify_sha256sums(tmp_path) == {"listed": 2, "checked": 2, "with_lf_line_ends": 1}
    # a binary file is never accepted by a line-end conversion
    crlf_sum = hashlib.sha256(b"RIFF....".replace(b".", b"\r\n")).hexdigest()
    (tmp_path / "b.wav").write_bytes(b"RIFF....".replace(b".", b"\n"))
    (tmp_path / "SHA256SUMS.txt").write_text(f"{crlf_sum} b.wav\n")
    with pytest.raises(ValueError, match="b.wav"):
        verify_sha256sums(tmp_path)


def test_every_missing_or_unreadable_file_is_named(circor_copy):
    data = circor_copy / "training_data"
    (data / "40840_AV.wav").unlink()  # listed by its patient's header
    (data / "49824_PV.wav").write_bytes(b"not a wav file")
    shutil.copy(data / "50007_AV.wav", data / "99999_AV.wav")  # listed by no header
    (data / "50047.txt").unlink()  # a patient of the table without a header
    with pytest.raises(ValueError) as error:
        load_layout("circor", circor_copy, verify_checksums=False)
    message = str(error.value)
    assert "problem(s)" in message  # the headerless patient's WAV files are named too: listed by no header
    for name in ("40840_AV.wav", "49824_PV.wav", "99999_AV.wav", "50047.txt"):
        assert name in message


def test_header_contradicting_the_table_is_an_error(circor_copy):
    header = circor_copy / "training_data" / "50379.txt"
    header.write_text(header.read_text().replace("#Murmur: Absent", "#Murmur: Present"))
    with pytest.raises(ValueError, match="50379.txt: murmur is 'Present' but training_data.csv says 'Absent'"):
        load_layout("circor", circor_copy, verify_checksums=False)


def test_prepare_writes_a_manifest_training_reads(circor_sample, tmp_path, capsys):
    output = prepare_main(["circor", str(circor_sample), "--output", str(tmp_path / "out" / "circor.csv")])
    assert "47 recordings" in capsys.readouterr().out
    manifest = load_manifest(output)
    assert len(manifest) == 47 and all(path.is_file() for path in manifest.audio_paths)
    assert not any(Path(row["file"]).is_absolute() for row in manifest.rows)
    assert not list(output.parent.glob("*.partial"))


def test_registry_names_layouts_and_takes_a_new_one(tmp_path):
    with pytest.raises(ValueError, match=r"acula reads \['circor'"):
        load_layout("no-such-dataset", tmp_path)
    with pytest.raises(ValueError, match="does not look like the circor layout; missing"):
        load_layout("circor", tmp_path)
    (tmp_path / "a.wav").write_bytes(b"")
    toy = register_layout(DatasetLayout(name="toy-test-layout", description="one file",
                                        read=lambda root: [{"file": "a.wav", "group_id": "p1"}]))
    try:
        assert load_layout("toy-test-layout", tmp_path).audio_paths == [(tmp_path / "a.wav").resolve()]
        with pytest.raises(ValueError, match="already registered"):
            register_layout(toy)
    finally:
        del LAYOUTS["toy-test-layout"]
