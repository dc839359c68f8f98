"""Manifest loading / validation and audio decoding, on the dev pack and on small generated files."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from acula_train.manifest import Manifest, load_manifest
from modeling_acula.audio_utils import decode_audio


def _write_wav(path: Path, seconds: float = 0.25, sr: int = 16000, channels: int = 1, subtype: str = "PCM_16"):
    t = np.arange(int(seconds * sr)) / sr
    audio = 0.3 * np.sin(2 * np.pi * 220 * t)
    if channels > 1:
        audio = np.stack([audio, 0.5 * audio], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr, subtype=subtype)
    return path


def _write_csv(path: Path, rows, fieldnames=None, encoding="utf-8"):
    fieldnames = fieldnames or list(rows[0])
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_dev_pack_loads_as_is(dev_pack):
    manifest = load_manifest(dev_pack / "metadata.csv")
    assert len(manifest) == 1990
    assert manifest.root == dev_pack.resolve()
    assert all(path.is_absolute() and path.is_file() for path in manifest.audio_paths)
    # Empty cells are None, never "" or "nan".
    assert manifest.rows[0]["sublabel"] is None
    assert not any(value in ("", "nan") for row in manifest.rows for value in row.values())
    assert manifest.describe_row(0).endswith("metadata.csv line 2")
    assert "suggested_split" in manifest.columns and "group_id" in manifest.columns


def test_select_keeps_row_numbers_and_to_records(dev_pack):
    manifest = load_manifest(dev_pack / "metadata.csv")
    subset = manifest.select([10, 3])
    assert len(subset) == 2
    assert subset.row_numbers == [12, 5]
    assert subset.audio_paths == [manifest.audio_paths[10], manifest.audio_paths[3]]
    records = subset.to_records(absolute_paths=True)
    assert records[0]["file"] == str(manifest.audio_paths[10])
    assert subset.to_records()[0]["file"] == manifest.rows[10]["file"]
    records[0]["label"] = "changed"
    assert subset.rows[0]["label"] != "changed"  # copies, not the rows themselves
    with pytest.raises(IndexError):
        manifest.select([5000])


def test_jsonl_and_datasets_folder(tmp_path):
    _write_wav(tmp_path / "audio" / "a.wav")
    _write_wav(tmp_path / "audio" / "b.wav")
    records = [{"file": "audio/a.wav", "label": "normal", "age": ""}, {"file": "audio/b.wav", "label": "murmur"}]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    manifest = load_manifest(jsonl)
    assert manifest.audio_paths == [(tmp_path / "audio" / n).resolve() for n in ("a.wav", "b.wav")]
    assert manifest.rows[0]["age"] is None
    assert manifest.describe_row(1).endswith("m.jsonl line 2")

    from datasets import Dataset

    folder = tmp_path / "ds"
    records = [{"file": "../audio/a.wav", "label": "normal"}, {"file": "../audio/b.wav", "label": "x"}]
    Dataset.from_list(records).save_to_disk(str(folder))
    from_disk = load_manifest(folder)
    assert from_disk.audio_paths == manifest.audio_paths  # relative to the dataset folder
    assert from_disk.describe_row(1).endswith("ds index 1")


def test_missing_audio_column_names_file(tmp_path):
    path = _write_csv(tmp_path / "m.csv", [{"audio": "a.wav", "label": "x"}])
    with pytest.raises(ValueError, match=r"m\.csv.*no audio column 'file'.*audio_column"):
        load_manifest(path)


def test_missing_files_are_all_listed(tmp_path):
    _write_wav(tmp_path / "ok.wav")
    rows = [{"file": "ok.wav"}, {"file": "gone1.wav"}, {"file": "ok2.wav"}, {"file": "sub/gone2.flac"}]
    _write_wav(tmp_path / "ok2.wav")
    path = _write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(ValueError) as info:
        load_manifest(path)
    message = str(info.value)
    assert "2 audio file(s) not found" in message
    assert "line 3" in message and "gone1.wav" in message
    assert "line 5" in message and "gone2.flac" in message
    assert load_manifest(path, check_files=False).audio_paths[1].name == "gone1.wav"


def test_duplicate_paths_empty_cells_and_ragged_rows(tmp_path):
    _write_wav(tmp_path / "a.wav")
    dup = _write_csv(tmp_path / "dup.csv", [{"file": "a.wav"}, {"file": "./a.wav"}])
    with pytest.raises(ValueError, match=r"duplicate audio path.*line 3 repeats .*a\.wav of line 2"):
        load_manifest(dup)
    empty_cell = _write_csv(tmp_path / "cell.csv", [{"file": "a.wav", "x": "1"}, {"file": "", "x": "2"}])
    with pytest.raises(ValueError, match=r"no audio path in column 'file'.*cell\.csv line 3"):
        load_manifest(empty_cell)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("file,label\na.wav,normal,extra\n")
    with pytest.raises(ValueError, match=r"ragged\.csv line 2: 3 fields, but the header has 2"):
        load_manifest(ragged)


def test_same_file_through_a_symlinked_folder_is_a_duplicate(tmp_path):
    _write_wav(tmp_path / "real" / "a.wav")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    # a relative path through the link and an absolute one through it (with a `..` detour): one recording
    dup = _write_csv(tmp_path / "dup.csv", [{"file": "real/a.wav"},
                                            {"file": str(tmp_path / "link" / ".." / "link" / "a.wav")}])
    with pytest.raises(ValueError, match=r"duplicate audio path.*line 3 repeats"):
        load_manifest(dup)
    single = _write_csv(tmp_path / "single.csv", [{"file": str(tmp_path / "link" / "a.wav")}])
    assert load_manifest(single).audio_paths == [(tmp_path / "real" / "a.wav").resolve()]


def test_empty_manifest(tmp_path):
    header_only = tmp_path / "h.csv"
    header_only.write_text("file,label\n")
    with pytest.raises(ValueError, match=r"h\.csv has no rows"):
        load_manifest(header_only)
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_manifest(blank)
    with pytest.raises(ValueError, match="unknown format"):
        load_manifest(_write_wav(tmp_path / "x.wav"))


def test_latin1_csv_needs_encoding(tmp_path):
    _write_wav(tmp_path / "a.wav")
    path = _write_csv(tmp_path / "m.csv", [{"file": "a.wav", "device": "Stéthoscope"}], encoding="latin-1")
    with pytest.raises(ValueError, match=r"m\.csv: not valid utf-8.*encoding='latin-1'"):
        load_manifest(path)
    manifest = load_manifest(path, encoding="latin-1")
    assert manifest.rows[0]["device"] == "Stéthoscope"


def test_manifest_lengths_must_agree(tmp_path):
    with pytest.raises(ValueError, match="same length"):
        Manifest(rows=[{"file": "a"}], root=tmp_path, source=tmp_path / "m.csv", row_numbers=[2, 3])


def test_decode_dev_pack_file(dev_pack):
    manifest = load_manifest(dev_pack / "metadata.csv")
    path = manifest.audio_paths[0]
    audio = decode_audio(path)
    reference, sr = sf.read(str(path), dtype="float32")
    assert sr == 16000 and audio.dtype == np.float32 and audio.ndim == 1
    np.testing.assert_array_equal(audio, reference)
    at_8k = decode_audio(path, target_sr=8000)
    assert abs(len(at_8k) - len(audio) // 2) <= 1


def test_decode_stereo_and_resample(tmp_path):
    path = _write_wav(tmp_path / "s.wav", seconds=0.5, sr=8000, channels=2)
    audio = decode_audio(path, 16000)
    assert audio.shape == (8000,) and audio.dtype == np.float32  # 0.5 s at 16 kHz
    # Mono is the mean of the channels (0.3 and 0.15 amplitude sines -> 0.225).
    assert 0.2 < np.abs(audio).max() < 0.25


def test_decode_errors_name_the_file(tmp_path):
    not_audio = tmp_path / "notes.flac"
    not_audio.write_text("this is not audio")
    with pytest.raises(ValueError, match=r"notes\.flac: cannot read as audio"):
        decode_audio(not_audio)

    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match=r"empty\.wav: the file has zero samples"):
        decode_audio(empty)

    full = _write_wav(tmp_path / "full.flac", seconds=1.0)
    data = full.read_bytes()
    cut_flac = tmp_path / "cut.flac"
    cut_flac.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.flac: truncated"):
        decode_audio(cut_flac)

    wav = _write_wav(tmp_path / "full.wav", seconds=1.0).read_bytes()
    cut_wav = tmp_path / "cut.wav"
    cut_wav.write_bytes(wav[: len(wav) // 2])
    with pytest.raises(ValueError, match=r"cut\.wav: truncated WAV"):
        decode_audio(cut_wav)

    bad = np.full(800, 0.1, dtype=np.float32)
    bad[10], bad[20] = np.nan, np.inf
    nan_wav = tmp_path / "nan.wav"
    sf.write(str(nan_wav), bad, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"nan\.wav: 2 NaN or Inf"):
        decode_audio(nan_wav)
