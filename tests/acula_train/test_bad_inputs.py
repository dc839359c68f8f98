"""Bad inputs, generated on the fly: each gets a clear error naming the file / item / row, or documented behaviour.

The table of inputs and behaviours is docs/bad_inputs.md. Library calls are tested directly (decode_audio,
AculaFeatureExtractor, load_manifest, build_reports), and the manifest-level failures also through
`train_acula.main`, which must stop before training, name the row or file, and write no output folder.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from modeling_acula.feature_extraction_acula import AculaFeatureExtractor
from acula_train.manifest import load_manifest
from modeling_acula.audio_utils import decode_audio
from acula_train.reports import build_reports
from tests.testing_utils import run_in_process, tiny_args

REPO = Path(__file__).resolve().parents[2]
MINI_PACK = REPO / "data" / "auscultation-mini" / "metadata.csv"
SR = 16000


@pytest.fixture(scope="module")
def extractor():
    return AculaFeatureExtractor()


def _tone(seconds: float, rate: int, frequency: float = 300.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def _features(extractor, audio, rate=SR, **kwargs) -> np.ndarray:
    return extractor(audio, sampling_rate=rate, return_tensors="np", **kwargs)["input_values"]


def _assert_valid_features(values: np.ndarray, num_clips: int = 1) -> None:
    assert values.shape == (num_clips, 1, 256, 64) and values.dtype == np.float32
    assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0


# ---------------------------------------------------------------------------------------------- audio files


def _write_truncated_flac(path: Path) -> None:
    soundfile.write(path.with_suffix(".full.flac"), _tone(3.0, SR), SR)
    data = path.with_suffix(".full.flac").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_nonfinite(path: Path, value: float) -> None:
    audio = _tone(1.0, SR)
    audio[100:103] = value
    soundfile.write(path, audio, SR, subtype="FLOAT")


BAD_FILES = {
    # name: (file name, writer, expected words of the message)
    "empty-file": ("empty.wav", lambda p: p.write_bytes(b""), "cannot read as audio"),
    "zero-samples": ("zero.wav", lambda p: soundfile.write(p, np.zeros(0, np.float32), SR), "zero samples"),
    "one-sample-192k": (
        "one.wav", lambda p: soundfile.write(p, np.array([0.5], np.float32), 192000), "nothing after resampling"),
    "truncated-flac": ("cut.flac", _write_truncated_flac, "truncated or corrupt"),
    "truncated-wav": (
        "cut.wav",
        lambda p: (soundfile.write(p, _tone(1.0, SR), SR), p.write_bytes(p.read_bytes()[:-5000])),
        "truncated"),
    "not-audio-text": ("notes.wav", lambda p: p.write_text("patient 12, lung, normal\n" * 40), "cannot read as audio"),
    "not-audio-bytes": ("noise.flac", lambda p: p.write_bytes(bytes(range(256)) * 20), "cannot read as audio"),
    "nan-samples": ("nan.wav", lambda p: _write_nonfinite(p, np.nan), "3 NaN or Inf"),
    "inf-samples": ("inf.wav", lambda p: _write_nonfinite(p, np.inf), "3 NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_audio_file_is_a_value_error_naming_the_file(tmp_path, extractor, case):
    name, write, problem = BAD_FILES[case]
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError, match=problem) as raised:
        decode_audio(path)
    assert str(path) in str(raised.value)
    # The extractor's file reader is the same audio path: the same refusal, naming the file.
    with pytest.raises(ValueError, match=problem) as raised:
        extractor.load_audio(path)
    assert str(path) in str(raised.value)


def test_one_sample_is_zero_padded_not_refused(tmp_path, extractor):
    soundfile.write(tmp_path / "one.wav", np.array([0.5], np.float32), SR)
    waveform = decode_audio(tmp_path / "one.wav")
    assert waveform.shape == (1,)
    values = _features(extractor, waveform)
    _assert_valid_features(values)
    # one click at t=0: only the first frames hold energy, the rest is at the 80 dB floor (0 after scaling)
    assert values[0, 0, 0].max() == 1.0 and values[0, 0, 10:].max() == 0.0


def test_silence_and_dc_give_documented_spectrograms(tmp_path, extractor):
    soundfile.write(tmp_path / "silence.flac", np.zeros(2 * SR, np.int16), SR)
    soundfile.write(tmp_path / "dc.wav", np.full(2 * SR, 0.5, np.float32), SR, subtype="FLOAT")
    silence = _features(extractor, decode_audio(tmp_path / "silence.flac"))
    _assert_valid_features(silence)
    assert not silence.any()  # a constant clip is all zeros, never 0 / 0 = NaN
    assert not _features(extractor, _tone(2.0, SR, amplitude=1e-30)).any()  # below `amin`: silence too
    dc = _features(extractor, decode_audio(tmp_path / "dc.wav"))
    _assert_valid_features(dc)
    # a DC offset has no energy above f_min = 50 Hz: only the steps at the clip's edges show
    frames_with_energy = np.flatnonzero(dc[0, 0].max(axis=1) > 0)
    assert frames_with_energy.min() == 0 and set(frames_with_energy) <= set(range(3)) | set(range(60, 66))


def test_clipping_and_loud_float_audio(extractor):
    tone = _tone(3.0, SR, amplitude=0.3)
    # float samples beyond [-1, 1] are used as they are; the dB scale is relative to the clip's maximum
    np.testing.assert_allclose(_features(extractor, tone * 40), _features(extractor, tone), atol=1e-5)
    clipped = np.clip(tone * 40, -1.0, 1.0)
    values = _features(extractor, clipped)
    _assert_valid_features(values)
    # hard clipping adds odd harmonics (900 Hz, 1500 Hz, ...) that the clean tone does not have
    assert np.abs(values - _features(extractor, tone)).max() > 0.1
    with pytest.raises(ValueError, match="item 0 has finite float64 samples beyond the float32 range"):
        extractor(tone.astype(np.float64) * 1e300, sampling_rate=SR)


def test_stereo_and_six_channel_files_are_averaged(tmp_path, extractor):
    left, right = _tone(2.0, SR, 300.0), _tone(2.0, SR, 1200.0, amplitude=0.1)
    soundfile.write(tmp_path / "stereo.flac", np.stack([left, right], axis=1), SR, subtype="PCM_24")
    six = np.stack([left * (k + 1) / 6 for k in range(6)], axis=1)
    soundfile.write(tmp_path / "six.wav", six, SR, subtype="FLOAT")
    np.testing.assert_allclose(decode_audio(tmp_path / "stereo.flac"), (left + right) / 2, atol=1e-6)
    np.testing.assert_allclose(decode_audio(tmp_path / "six.wav"), six.mean(axis=1), atol=1e-6)
    mono = _features(extractor, (left + right) / 2)
    in_list = _features(extractor, [np.stack([left, right], axis=1), np.stack([left, right], axis=0), six])
    _assert_valid_features(in_list, 3)
    np.testing.assert_allclose(in_list[0], mono[0], atol=1e-6)
    np.testing.assert_allclose(in_list[1], mono[0], atol=1e-6)


def test_bare_frames_by_channels_array_is_refused_not_read_as_a_batch(extractor):
    stereo = np.stack([_tone(2.0, SR), _tone(2.0, SR)], axis=1)  # soundfile's (frames, channels)
    # Without the check this became 32,000 "recordings" of 2 samples each.
    with pytest.raises(ValueError, match=r"shape \(32000, 2\) looks like one multi-channel recording"):
        extractor(stereo, sampling_rate=SR)
    with pytest.raises(ValueError, match="multi-channel"):
        extractor(torch.from_numpy(np.stack([_tone(1.0, SR)] * 6, axis=1)), sampling_rate=SR)
    _assert_valid_features(_features(extractor, np.stack([_tone(2.0, SR)] * 3)), 3)  # a real (batch, samples) batch


@pytest.mark.parametrize("dtype", ["int16", "int32", "float64", "float16"])
def test_pcm_and_float_dtypes_match_float32(extractor, dtype):
    tone = _tone(3.0, SR, amplitude=0.5)
    if dtype.startswith("int"):
        scale = -np.iinfo(dtype).min
        array = np.round(tone * (scale - 1)).astype(dtype)
        reference = array.astype(np.float64) / scale
    else:
        array = tone.astype(dtype)
        reference = array.astype(np.float32)
    tolerance = 2e-3 if dtype == "float16" else 1e-5
    np.testing.assert_allclose(_features(extractor, array), _features(extractor, reference), atol=tolerance)


@pytest.mark.parametrize("dtype", ["int64", "uint8", "bool", "complex64", "object"])
def test_unsupported_dtypes_are_type_errors_naming_the_item(extractor, dtype):
    array = np.ones(SR, dtype=dtype)
    with pytest.raises(TypeError, match=f"Audio item 1 has dtype {np.dtype(dtype)}"):
        extractor([_tone(1.0, SR), array], sampling_rate=SR)


@pytest.mark.parametrize("rate", [2000, 4000, 8000, 11025, 22050, 44100, 48000, 96000, 192000])
def test_sampling_rates_from_2_to_192_khz(tmp_path, extractor, rate):
    soundfile.write(tmp_path / "tone.wav", _tone(1.0, rate), rate, subtype="FLOAT")
    waveform = decode_audio(tmp_path / "tone.wav")
    assert abs(waveform.size - SR) <= 1 and waveform.dtype == np.float32
    from_file = _features(extractor, waveform)
    from_array = _features(extractor, _tone(1.0, rate), rate=rate)
    _assert_valid_features(from_file)
    np.testing.assert_allclose(from_file, from_array, atol=1e-5)
    # the 300 Hz tone lands in the same mel bin at every rate (a wrong rate would move it)
    native = _features(extractor, _tone(1.0, SR))
    assert from_array[0, 0, 10].argmax() == native[0, 0, 10].argmax()


def test_invalid_sampling_rates_are_refused(extractor):
    for rate, words in [(None, "`sampling_rate` is required"), (0, "non-positive"), (-8000, "non-positive"),
                        (44100.5, "non-integer")]:
        with pytest.raises(ValueError, match=words):
            extractor(_tone(1.0, SR), sampling_rate=rate)


_LONG_RECORDING_SCRIPT = textwrap.dedent("""
    import json, resource
    import numpy as np
    from modeling_acula.feature_extraction_acula import AculaFeatureExtractor

    def peak_bytes():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux

    extractor = AculaFeatureExtractor(max_windows_per_chunk=8)
    window = extractor.num_samples
    waveform = 0.1 * np.random.default_rng(0).standard_normal(30 * 60 * 16000, dtype=np.float32)  # 30 minutes
    # One chunk's worth first: the baseline peak then holds the decoded waveform and one chunk's working memory.
    extractor(waveform[: 8 * window], sampling_rate=16000, sliding_window=True)
    before = peak_bytes()
    out = extractor(waveform, sampling_rate=16000, sliding_window=True, return_tensors="np")
    extra = peak_bytes() - before
    values, index = out["input_values"], out["recording_index"]
    differences = []
    for k in (0, values.shape[0] // 2, values.shape[0] - 1):  # each window equals its slice featurised alone
        alone = extractor(waveform[k * window : (k + 1) * window], sampling_rate=16000, return_tensors="np")
        differences.append(float(np.abs(alone["input_values"][0] - values[k]).max()))
    print(json.dumps({
        "extra_bytes": extra, "waveform_bytes": waveform.nbytes, "output_bytes": values.nbytes,
        "windows": values.shape[0], "finite": bool(np.isfinite(values).all()),
        "in_range": bool(values.min() >= 0 and values.max() <= 1), "index": sorted(set(index.tolist())),
        "max_window_difference": max(differences),
    }))
""")


def test_30_minute_recording_needs_no_memory_beyond_the_waveform():
    # A fresh process, so that the peak resident memory is this computation's alone.
    # glibc then maps large blocks on their own and unmaps them when freed, so the peak is live memory, not heap
    # fragmentation.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    result = subprocess.run([sys.executable, "-c", _LONG_RECORDING_SCRIPT], capture_output=True, text=True,
                            timeout=300, cwd=REPO, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(result.stdout.strip().splitlines()[-1])
    assert run["windows"] == 220  # ceil(30 * 60 * 16000 / 131000) sliding windows of one recording
    assert run["finite"] and run["in_range"] and run["index"] == [0]
    assert run["max_window_difference"] < 1e-6
    # Windows are views of the waveform, featurised 8 at a time: beyond one chunk's working memory, the whole
    # 30 minutes need only their 14 MB of output (collected, then concatenated). One more copy of the waveform
    # would add 115 MB, all windows in one batch over 2 GB.
    assert run["extra_bytes"] < 2 * run["output_bytes"] + 32 * 2**20, run


# ---------------------------------------------------------------------------------------------- manifests


@pytest.fixture
def rows() -> list[dict]:
    """Ten training rows of the shipped pack, with absolute audio paths (so a manifest can live anywhere)."""
    with open(MINI_PACK, newline="", encoding="utf-8") as handle:
        records = [row for row in csv.DictReader(handle) if row["suggested_split"] == "train"][:10]
    for row in records:
        row["file"] = str(MINI_PACK.parent / row["file"])
    return records


def _write_csv(path: Path, records: list[dict], columns: list[str] | None = None, encoding: str = "utf-8") -> Path:
    columns = columns or list(records[0])
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    return path


def test_missing_files_are_all_listed_with_their_lines(tmp_path, rows):
    rows[2]["file"] = str(tmp_path / "gone.flac")
    rows[7]["file"] = "relative/missing.wav"
    path = _write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(ValueError, match="2 audio file") as raised:
        load_manifest(path)
    message = str(raised.value)
    assert f"{path} line 4: {tmp_path / 'gone.flac'}" in message
    assert f"{path} line 9: {tmp_path / 'relative' / 'missing.wav'}" in message


def test_duplicate_rows_are_refused(tmp_path, rows):
    path = _write_csv(tmp_path / "m.csv", rows + [dict(rows[3])])
    with pytest.raises(ValueError, match=rf"1 duplicate audio path.*line 12 repeats .* of line 5"):
        load_manifest(path)


def test_missing_columns_and_cells(tmp_path, rows):
    columns = [name for name in rows[0] if name != "file"]
    with pytest.raises(ValueError, match=r"no audio column 'file'; columns are \['source_dataset'"):
        load_manifest(_write_csv(tmp_path / "a.csv", rows, columns))
    with pytest.raises(ValueError, match="no report column 'report'"):
        load_manifest(_write_csv(tmp_path / "b.csv", rows), report_column="report")
    short = tmp_path / "c.csv"
    short.write_text(f"file,modality\n{rows[0]['file']},lung\n{rows[1]['file']}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{short} line 3: only 1 of 2 fields; missing \['modality'\]"):
        load_manifest(short)
    rows[5]["file"] = ""
    with pytest.raises(ValueError, match=rf"no audio path in column 'file': .*d.csv line 7"):
        load_manifest(_write_csv(tmp_path / "d.csv", rows))
    (tmp_path / "e.csv").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_manifest(tmp_path / "e.csv")
    (tmp_path / "f.csv").write_text("file,modality\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has no rows"):
        load_manifest(tmp_path / "f.csv")


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_non_utf8_csv_names_the_byte_and_the_fix(tmp_path, rows, encoding):
    rows[1]["country"] = "Côte d'Ivoire"
    path = _write_csv(tmp_path / "m.csv", rows, encoding=encoding)
    with pytest.raises(ValueError, match=r"not valid utf-8 text .* at byte \d+.*pass its encoding") as raised:
        load_manifest(path)
    assert str(path) in str(raised.value)
    assert load_manifest(path, encoding=encoding).rows[1]["country"] == "Côte d'Ivoire"


def _with_reports(records: list[dict], bad: dict[int, str]) -> list[dict]:
    out = [dict(row, report="Lung sound recording; normal breath sounds.") for row in records]
    for index, text in bad.items():
        out[index]["report"] = text
    return out


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({2: "", 6: "   \t  "}, ["line 4: empty report", "line 8: empty report"]),
        ({1: "Error: 429 Too Many Requests (rate limit exceeded)"}, ["line 3: report looks like an error message"]),
        ({4: "I'm sorry, but as an AI I cannot write medical reports."}, ["line 6: report looks like an error"]),
        ({0: "Traceback (most recent call last):\n  File ..."}, ["line 2: report looks like an error"]),
    ],
    ids=["empty-and-whitespace", "rate-limit", "refusal", "traceback"],
)
def test_bad_report_column_lists_every_bad_row(tmp_path, rows, bad, expected):
    path = _write_csv(tmp_path / "m.csv", _with_reports(rows, bad))
    manifest = load_manifest(path, report_column="report")
    with pytest.raises(ValueError, match=f"{len(bad)} invalid report") as raised:
        build_reports(manifest)
    for words in expected:
        assert f"{path} {words}" in str(raised.value)


def test_row_without_any_report_field_is_refused(tmp_path, rows):
    from acula_train.reports import REPORT_FIELDS

    for name in REPORT_FIELDS:
        rows[3][name] = ""
    manifest = load_manifest(_write_csv(tmp_path / "m.csv", rows))
    # before the fix such a row silently became the bare report "Body sound recording."
    with pytest.raises(ValueError, match=r"rows without any report field .*m.csv line 5$"):
        build_reports(manifest)


# ------------------------------------------------------------------------------ the training script, end to end


@pytest.mark.parametrize("case", ["missing-file", "error-report", "empty-report", "corrupt-audio"])
def test_train_script_stops_before_training_naming_the_row(tmp_path, rows, case):
    extra: list[str] = []
    if case == "missing-file":
        rows[4]["file"] = str(tmp_path / "deleted.flac")
        expected = [f"line 6: {tmp_path / 'deleted.flac'}", "1 audio file(s) not found"]
    elif case == "corrupt-audio":
        _write_truncated_flac(tmp_path / "cut.flac")
        rows[4]["file"] = str(tmp_path / "cut.flac")
        expected = ["line 6:", str(tmp_path / "cut.flac"), "truncated or corrupt"]
    else:
        text = "Error: 503 Service Unavailable" if case == "error-report" else "  "
        rows = _with_reports(rows, {4: text})
        extra = ["--report_column", "report"]
        expected = ["line 6: " + ("report looks like an error message" if case == "error-report" else "empty report")]
    manifest = _write_csv(tmp_path / "m.csv", rows)
    output = tmp_path / "out"
    with pytest.raises(ValueError) as raised:
        run_in_process(tiny_args(output, tmp_path / "cache", "--manifest", str(manifest), "--split_column",
                                 "suggested_split", "--max_steps", "1", *extra))
    for words in expected:
        assert words in str(raised.value)
    assert str(manifest) in str(raised.value)
    assert not output.exists()  # no output folder, no checkpoints, no logs


def test_silent_recording_is_skipped_counted_and_listed(tmp_path, rows):
    soundfile.write(tmp_path / "silent.flac", np.zeros(3 * SR, np.int16), SR)
    rows[2]["file"] = str(tmp_path / "silent.flac")
    manifest = _write_csv(tmp_path / "m.csv", rows)
    output = run_in_process(tiny_args(tmp_path / "out", tmp_path / "cache", "--manifest", str(manifest),
                                      "--max_steps", "1", "--checkpointing_steps", "0"))
    skipped = [json.loads(line) for line in (output / "skipped_rows.jsonl").read_text().splitlines()]
    # named relative to the manifest's folder (the folder is published: no path of this machine)
    assert skipped == [{"row": "m.csv line 4", "file": "silent.flac",
                        "reason": "digitally silent over the model window (constant spectrogram)"}]
    summary = json.loads((output / "data_summary.json").read_text())
    assert summary["skipped"] == {"silent": 1} and summary["rows_used"] == 9
    assert str(tmp_path / "silent.flac") not in (output / "reports.jsonl").read_text()


def test_implausibly_low_sampling_rate_is_refused():
    """A rate in kHz instead of Hz would make soxr upsample a thousandfold; it is refused, naming the item."""
    with pytest.raises(ValueError, match=r"item 1 has an implausible sampling rate of 16 Hz"):
        AculaFeatureExtractor()([np.zeros(16000, np.float32)] * 2, sampling_rate=[16000, 16])
