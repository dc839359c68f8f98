"""Tests of AculaFeatureExtractor against an independent numpy implementation of the reference recipe."""

from __future__ import annotations

import csv
import json
import math
import wave

import numpy as np
import pytest
import soundfile
import torch

from modeling_acula.audio_utils import cut_windows, decode_audio
from modeling_acula.feature_extraction_acula import AculaFeatureExtractor

SR = 16000
NUM_SAMPLES = 131000
# Max abs difference allowed between the extractor and the float64 numpy reference, on the [0, 1] scale of the
# output. compute_dtype="float64" agrees to ~1e-8 (float32 rounding of the input adds ~3e-7).
REFERENCE_ATOL = 1e-6
# With compute_dtype="float32" (the default), torch's float32 FFT is inexact in bins 70-80 dB below the clip's maximum: up to
# 1.8e-4 over 398 dev-pack recordings; 3e-4 of the 80 dB range is 0.024 dB.
FLOAT32_ATOL = 3e-4


# ---------------------------------------------------------------------------------------------------------------
# Independent numpy reference of the authors' librosa recipe (written from the formulas, no transformers / torch).


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    linear = hz / f_sp
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, linear)


def _mel_to_hz_slaney(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def numpy_slaney_mel_filters(sr=SR, n_fft=1024, n_mels=64, fmin=50.0, fmax=8000.0) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters on the Slaney mel scale with Slaney area normalisation."""
    fft_freqs = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    mel_points = _mel_to_hz_slaney(np.linspace(_hz_to_mel_slaney(fmin), _hz_to_mel_slaney(fmax), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (mel_points[2:] - mel_points[:-2]))[:, None]


def numpy_reference(waveform: np.ndarray, num_samples=NUM_SAMPLES, n_fft=1024, hop=512, top_db=80.0, amin=1e-10):
    """16 kHz mono waveform -> (frames, mels) spectrogram in [0, 1], all in float64 numpy."""
    y = np.asarray(waveform, dtype=np.float64)[:num_samples]
    y = np.pad(y, (0, num_samples - y.size))
    y = np.pad(y, (n_fft // 2, n_fft // 2))  # centred frames, zero ("constant") padding
    num_frames = 1 + (y.size - n_fft) // hop
    frames = np.stack([y[i * hop : i * hop + n_fft] for i in range(num_frames)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (frames, freq)
    mel = power @ numpy_slaney_mel_filters(n_fft=n_fft).T  # (frames, mels)
    db = 10 * np.log10(np.maximum(amin, mel)) - 10 * np.log10(max(amin, mel.max()))
    db = np.maximum(db, db.max() - top_db)
    return (db - db.min()) / (db.max() - db.min())


# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor() -> AculaFeatureExtractor:
    # float64: the exact reference path, compared with the numpy reference at REFERENCE_ATOL.
    return AculaFeatureExtractor(compute_dtype="float64")


@pytest.fixture(scope="module")
def dev_recordings(dev_pack) -> list[tuple[str, np.ndarray]]:
    """One recording per source dataset (heart, lung, cough, breath; short and long), read as float64."""
    with open(dev_pack / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen, seen = [], set()
    for row in rows:
        if row["source_dataset"] not in seen:
            seen.add(row["source_dataset"])
            chosen.append(row["file"])
    longest = max(rows, key=lambda row: float(row["duration_s"]))["file"]
    chosen.append(longest)
    recordings = []
    for name in chosen:
        data, rate = soundfile.read(dev_pack / name, dtype="float64")
        assert rate == SR
        recordings.append((name, data))
    return recordings


def _tone(freqs, seconds, rate, amplitude=0.3):
    t = np.arange(int(round(seconds * rate))) / rate
    return sum(amplitude * np.sin(2 * np.pi * f * t + k) for k, f in enumerate(freqs)).astype(np.float32)


def _features(extractor, audio, **kwargs) -> np.ndarray:
    kwargs.setdefault("sampling_rate", SR)
    return extractor(audio, **kwargs)["input_values"].numpy()


# ------------------------------------------------------------------------------------------- reference numbers


def test_numpy_filter_bank_matches_extractor_filters(extractor):
    _, filters = extractor._spectrogram_constants(torch.device("cpu"), torch.float64)
    expected = numpy_slaney_mel_filters()
    assert filters.shape == (64, 513)
    np.testing.assert_allclose(filters.numpy(), expected, rtol=1e-5, atol=1e-7)
    # Slaney area norm: every filter integrates to ~2 / bandwidth, not 1 (peak is not 1 either).
    assert not np.allclose(expected.max(axis=1), 1.0)


def test_matches_numpy_reference_on_dev_pack(extractor, dev_recordings):
    waveforms = [data.astype(np.float32) for _, data in dev_recordings]
    batched = _features(extractor, waveforms)
    assert batched.shape == (len(waveforms), 1, 256, 64)
    for (name, data), output in zip(dev_recordings, batched):
        reference = numpy_reference(data)
        diff = np.abs(output[0] - reference).max()
        assert diff < REFERENCE_ATOL, f"{name}: max abs diff {diff:.2e}"
    fast = _features(AculaFeatureExtractor(), waveforms)
    for (name, data), output in zip(dev_recordings, fast):
        diff = np.abs(output[0] - numpy_reference(data)).max()
        assert diff < FLOAT32_ATOL, f"{name} (float32): max abs diff {diff:.2e}"


@pytest.mark.parametrize(
    "waveform",
    [
        _tone([440.0], 2.0, SR),  # short: zero-padded
        _tone([100.0, 1000.0, 5000.0], 10.0, SR),  # long: cropped
        np.random.default_rng(0).normal(0, 0.1, NUM_SAMPLES).astype(np.float32),  # exactly num_samples
    ],
    ids=["tone-padded", "tones-cropped", "noise-exact"],
)
def test_matches_numpy_reference_on_synthetic(extractor, waveform):
    output = _features(extractor, waveform)[0, 0]
    assert np.abs(output - numpy_reference(waveform)).max() < REFERENCE_ATOL
    assert output.min() == 0.0 and output.max() == pytest.approx(1.0)


def test_top_db_clips_the_dynamic_range(extractor):
    # A loud tone then near-silence: without clipping at max - 80 dB the quiet part would reach far below.
    waveform = np.concatenate([_tone([1000.0], 1.0, SR), 1e-7 * _tone([1000.0], 1.0, SR)])
    output = _features(extractor, waveform)[0, 0]
    quiet_frames = output[40:60]
    np.testing.assert_array_equal(quiet_frames, 0.0)  # everything below max - 80 dB is the floor
    unclipped = AculaFeatureExtractor(top_db=None)
    assert np.abs(_features(unclipped, waveform)[0, 0] - output).max() > 0.1


# ---------------------------------------------------------------------------------------------- input handling


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_resampled_input_matches_native_16k(extractor, rate):
    freqs = [150.0, 440.0, 1250.0, 2900.0, 3600.0]  # below 4 kHz so that 8 kHz input can hold them
    native = _features(extractor, _tone(freqs, 6.0, SR))
    resampled = _features(extractor, _tone(freqs, 6.0, rate), sampling_rate=rate)
    diff = np.abs(native - resampled)
    assert diff.mean() < 1e-3, diff.mean()
    assert np.quantile(diff, 0.99) < 5e-3


def test_stereo_is_averaged_in_either_layout(extractor):
    left, right = _tone([300.0], 3.0, SR), _tone([2000.0], 3.0, SR, amplitude=0.1)
    mono = _features(extractor, (left + right) / 2)
    frames_channels = np.stack([left, right], axis=1)  # soundfile layout
    channels_frames = torch.from_numpy(np.stack([left, right], axis=0))  # torchaudio layout
    both = _features(extractor, [frames_channels, channels_frames])
    np.testing.assert_allclose(both[0], mono[0], atol=1e-6)
    np.testing.assert_allclose(both[1], mono[0], atol=1e-6)
    assert np.abs(_features(extractor, left) - mono).max() > 0.05  # averaging actually changed something


def test_integer_pcm_is_scaled(extractor):
    waveform = _tone([700.0], 2.0, SR)
    as_int16 = np.round(waveform * 32767).astype(np.int16)
    as_int32 = as_int16.astype(np.int32) * 65536
    expected = _features(extractor, as_int16.astype(np.float32) / 32768)
    np.testing.assert_allclose(_features(extractor, as_int16), expected, atol=1e-6)
    np.testing.assert_allclose(_features(extractor, as_int32), expected, atol=1e-6)
    np.testing.assert_allclose(_features(extractor, waveform.astype(np.float64)), _features(extractor, waveform))


def test_batched_equals_unbatched(extractor):
    rng = np.random.default_rng(1)
    items = [
        _tone([200.0], 1.0, SR),
        rng.normal(0, 0.05, 150_000).astype(np.float32),
        torch.from_numpy(_tone([900.0, 2500.0], 4.0, SR)),
        list(_tone([60.0], 0.5, SR)),  # plain list of floats
    ]
    batched = extractor(items, sampling_rate=SR)["input_values"]
    assert batched.shape == (4, 1, 256, 64) and batched.dtype == torch.float32
    for index, item in enumerate(items):
        single = _features(extractor, item)
        assert single.shape == (1, 1, 256, 64)
        np.testing.assert_allclose(batched[index].numpy(), single[0], atol=1e-6)
    # A 2-D (batch, samples) array is a batch, and small chunks give the same numbers.
    array = np.stack([items[0], items[0][::-1].copy()])
    chunked = AculaFeatureExtractor(max_windows_per_chunk=1, compute_dtype="float64")
    np.testing.assert_allclose(_features(chunked, array), _features(extractor, list(array)), atol=1e-6)
    numpy_out = extractor(items, sampling_rate=SR, return_tensors="np")["input_values"]
    assert isinstance(numpy_out, np.ndarray) and numpy_out.dtype == np.float32
    np.testing.assert_allclose(numpy_out, batched.numpy())


def test_per_item_sampling_rates(extractor):
    tone = [440.0, 1500.0]
    mixed = _features(extractor, [_tone(tone, 3.0, 48000), _tone(tone, 3.0, SR)], sampling_rate=[48000, SR])
    assert np.abs(mixed[0] - mixed[1]).mean() < 5e-3


def test_silent_and_constant_clips_are_all_zero(extractor):
    outputs = _features(extractor, [np.zeros(SR, np.float32), np.full(2 * SR, 0.25, np.float32)])
    assert np.isfinite(outputs).all()
    np.testing.assert_array_equal(outputs[0], 0.0)
    assert outputs[1].min() == 0.0 and outputs[1].max() <= 1.0  # a DC step is not silent but must stay finite


@pytest.mark.parametrize(
    ("audio", "kwargs", "message"),
    [
        (np.zeros(SR, np.float32), {"sampling_rate": None}, "sampling_rate"),
        ([np.zeros(SR), np.array([0.0, np.nan, 1.0])], {}, "item 1 contains 1 NaN or Inf"),
        ([np.zeros(SR), np.zeros(SR), np.array([0.0, np.inf])], {}, "item 2 contains 1 NaN or Inf"),
        ([], {}, "Empty audio input"),
        ([np.zeros(SR), np.zeros(0)], {}, "item 1 is empty"),
        ([np.zeros(SR), np.zeros((2, 3, SR))], {}, "item 1 has 3 dimensions"),
        (np.zeros((2, 2, SR)), {}, "item 0"),
        ([np.zeros(SR), np.zeros(SR)], {"sampling_rate": [SR, 0]}, "item 1 has a non-positive"),
        (np.zeros(SR), {"sampling_rate": -8000}, "item 0 has a non-positive"),
        ([np.zeros(SR)], {"sampling_rate": [SR, SR]}, "2 sampling rates for 1 audio items"),
    ],
    ids=["no-rate", "nan", "inf", "empty-list", "zero-length", "rank3-item", "rank3-batch", "zero-rate",
         "negative-rate", "rate-count"],
)
def test_invalid_input_raises_value_error_naming_the_item(extractor, audio, kwargs, message):
    kwargs = {"sampling_rate": SR, **kwargs}
    with pytest.raises(ValueError, match=message):
        extractor(audio, **kwargs)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.complex64, np.bool_])
def test_unsupported_dtype_raises_type_error(extractor, dtype):
    with pytest.raises(TypeError, match="item 1 has dtype"):
        extractor([np.zeros(SR, np.float32), np.zeros(SR, dtype=dtype)], sampling_rate=SR)


# ---------------------------------------------------------------------------------------------- sliding window


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.5, 1), (2.0, 1), (2.5, 2), (3.0, 2), (3.25, 3), (5.0, 4)],
)
def test_number_of_windows(seconds, expected):
    extractor = AculaFeatureExtractor(window_seconds=2.0, hop_seconds=1.0)
    output = extractor(np.ones(int(seconds * SR), np.float32), sampling_rate=SR)
    assert output["input_values"].shape == (expected, 1, 256, 64)
    assert output["recording_index"].tolist() == [0] * expected


def test_windows_equal_crop_pad_of_their_slice():
    windowed = AculaFeatureExtractor(window_seconds=2.0, hop_seconds=1.5, max_windows_per_chunk=2)
    plain = AculaFeatureExtractor()
    rng = np.random.default_rng(2)
    recordings = [rng.normal(0, 0.1, int(4.2 * SR)).astype(np.float32), _tone([300.0], 1.0, SR)]
    output = windowed(recordings, sampling_rate=SR)
    index = output["recording_index"]
    assert index.dtype == torch.long and index.tolist() == [0, 0, 0, 1]  # 4.2 s: starts 0, 1.5, 3.0 s
    window, hop = 2 * SR, int(1.5 * SR)
    slices = [recordings[0][k * hop : k * hop + window] for k in range(3)] + [recordings[1]]
    expected = _features(plain, slices)
    np.testing.assert_allclose(output["input_values"].numpy(), expected, atol=1e-6)
    # The last window of recording 0 is partial (1.2 s) and zero-padded like any short clip.
    assert slices[2].size < window
    # The windows are those of `audio_utils.cut_windows`, the one window cutter (also used by the evaluation).
    cut = cut_windows(recordings[0], window, hop) + cut_windows(recordings[1], window, hop)
    assert [len(piece) for piece in cut] == [len(piece) for piece in slices]
    np.testing.assert_array_equal(output["input_values"].numpy(), _features(windowed, cut, sliding_window=False))


def test_sliding_window_per_call_and_default_window():
    extractor = AculaFeatureExtractor()
    long = _tone([500.0], 20.0, SR)
    assert "recording_index" not in extractor(long, sampling_rate=SR)
    # Default window = the model's input (131000 samples), non-overlapping: 320000 samples -> 3 windows.
    assert extractor(long, sampling_rate=SR, sliding_window=True)["input_values"].shape[0] == 3
    per_call = extractor(long, sampling_rate=SR, window_seconds=4.0, hop_seconds=4.0)
    assert per_call["input_values"].shape[0] == 5
    configured = AculaFeatureExtractor(window_seconds=4.0)
    assert configured(long, sampling_rate=SR, sliding_window=False)["input_values"].shape[0] == 1


def test_window_longer_than_model_input_is_rejected():
    with pytest.raises(ValueError, match="longer than the model's input"):
        AculaFeatureExtractor(window_seconds=10.0)
    with pytest.raises(ValueError, match="longer than the model's input"):
        AculaFeatureExtractor()(np.zeros(SR, np.float32), sampling_rate=SR, window_seconds=9.0)


# ------------------------------------------------------------------------------------------ settings and files


def test_shape_attributes():
    extractor = AculaFeatureExtractor()
    assert extractor.num_frames == 256 and extractor.num_mel_bins == 64
    assert extractor.spectrogram_size == (256, 64)
    assert extractor.feature_size == 64 and extractor.padding_value == 0.0
    assert extractor.return_attention_mask is False
    small = AculaFeatureExtractor(num_samples=16000, hop_length=256, num_mel_bins=32, f_max=4000.0)
    assert small.num_frames == 63
    assert small(np.ones(SR, np.float32), sampling_rate=SR)["input_values"].shape == (1, 1, 63, 32)


def test_save_pretrained_round_trips_every_constant(tmp_path):
    settings = {
        "sampling_rate": 22050,
        "num_mel_bins": 40,
        "n_fft": 512,
        "hop_length": 256,
        "f_min": 20.0,
        "f_max": 10000.0,
        "num_samples": 44100,
        "top_db": 60.0,
        "amin": 1e-8,
        "window_seconds": 1.5,
        "hop_seconds": 0.5,
        "max_windows_per_chunk": 7,
        "resample_quality": "VHQ",
        "compute_dtype": "float32",
    }
    extractor = AculaFeatureExtractor(**settings)
    extractor(np.zeros(1000, np.float32), sampling_rate=22050)  # fills the tensor cache, which must not be saved
    extractor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    for key, value in {**settings, "feature_size": 40, "padding_value": 0.0, "return_attention_mask": False}.items():
        assert saved[key] == value, key
    assert saved["feature_extractor_type"] == "AculaFeatureExtractor"
    assert not any(key.startswith("_") for key in saved)
    reloaded = AculaFeatureExtractor.from_pretrained(tmp_path)
    for key in settings:
        assert getattr(reloaded, key) == settings[key], key
    assert reloaded.to_dict() == extractor.to_dict()
    defaults = AculaFeatureExtractor().to_dict()
    for key, value in {"sampling_rate": 16000, "num_mel_bins": 64, "n_fft": 1024, "hop_length": 512, "f_min": 50.0,
                       "f_max": 8000.0, "num_samples": 131000, "top_db": 80.0, "amin": 1e-10,
                       "window_seconds": None, "hop_seconds": None}.items():
        assert defaults[key] == value, key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"f_max": 9000.0}, "f_max"),
        ({"feature_size": 80}, "feature_size"),
        ({"hop_length": 0}, "hop_length"),
        ({"amin": 0.0}, "amin"),
        ({"num_frames": 100}, "num_frames"),
        ({"compute_dtype": "float16"}, "compute_dtype"),
    ],
)
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AculaFeatureExtractor(**kwargs)


def test_constants_are_cached_per_device():
    from modeling_acula.feature_extraction_acula import _window_and_filters

    _window_and_filters.cache_clear()
    extractor = AculaFeatureExtractor()
    first = extractor._spectrogram_constants(torch.device("cpu"), torch.float32)
    extractor(np.ones(SR, np.float32), sampling_rate=SR)
    assert extractor._spectrogram_constants(torch.device("cpu"), torch.float32)[1] is first[1]
    assert _window_and_filters.cache_info().currsize == 1
    # A setting changed after construction gets its own filters, never the stale ones.
    extractor.f_max = 4000.0
    assert not torch.equal(extractor._spectrogram_constants(torch.device("cpu"), torch.float32)[1], first[1])
    # Nothing cached is part of the saved settings.
    assert set(extractor.to_dict()) == set(AculaFeatureExtractor().to_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(extractor):
    waveform = _tone([250.0, 3000.0], 5.0, SR)
    on_gpu = extractor(waveform, sampling_rate=SR, device="cuda")["input_values"]
    assert on_gpu.device.type == "cuda"
    np.testing.assert_allclose(on_gpu.cpu().numpy(), _features(extractor, waveform), atol=1e-4)


def test_load_audio(dev_pack, tmp_path, extractor):
    name = "audio/coswara/0Rlzhiz6bybk77wdLjxwy7yLDhg1_breathing-shallow.flac"
    waveform, rate = extractor.load_audio(dev_pack / name)
    expected, _ = soundfile.read(dev_pack / name, dtype="float32")
    assert rate == SR and waveform.dtype == np.float32 and waveform.ndim == 1
    np.testing.assert_array_equal(waveform, expected)

    stereo = np.stack([np.full(800, 0.5), np.full(800, -0.25)], axis=1)
    soundfile.write(tmp_path / "stereo.wav", stereo, SR, subtype="FLOAT")
    mono, rate = extractor.load_audio(tmp_path / "stereo.wav")
    assert rate == SR and mono.shape == (800,)
    np.testing.assert_allclose(mono, 0.125)

    # Another rate is resampled as the extractor resamples a waveform: one audio path, the same features.
    soundfile.write(tmp_path / "stereo-8k.wav", stereo, 8000, subtype="FLOAT")
    mono, rate = extractor.load_audio(tmp_path / "stereo-8k.wav")
    assert rate == SR and mono.shape == (1600,) and mono.dtype == np.float32
    np.testing.assert_array_equal(mono, decode_audio(tmp_path / "stereo-8k.wav", SR, extractor.resample_quality))
    np.testing.assert_array_equal(_features(extractor, mono), _features(extractor, [stereo], sampling_rate=8000))

    garbage = tmp_path / "not-audio.flac"
    garbage.write_bytes(b"definitely not a flac file")
    with pytest.raises(ValueError, match="not-audio.flac"):
        extractor.load_audio(garbage)
    with pytest.raises(ValueError, match="missing.wav"):
        extractor.load_audio(tmp_path / "missing.wav")
    with wave.open(str(tmp_path / "empty.wav"), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SR)
    with pytest.raises(ValueError, match="empty.wav"):
        extractor.load_audio(tmp_path / "empty.wav")


def test_padding_value_fills_the_end_but_not_the_centre_padding():
    # End padding uses `padding_value`; the STFT's centre padding stays zeros, as librosa's constant mode.
    waveform = _tone([300.0], 1.0, SR)
    extractor = AculaFeatureExtractor(padding_value=0.01, compute_dtype="float64")
    padded = np.full(NUM_SAMPLES, 0.01, dtype=np.float32)
    padded[: waveform.size] = waveform
    output = _features(extractor, waveform)[0, 0]
    assert np.abs(output - numpy_reference(padded)).max() < REFERENCE_ATOL
    assert np.abs(output - _features(AculaFeatureExtractor(compute_dtype="float64"), waveform)[0, 0]).max() > 1e-2


def test_results_stay_independent_across_calls_and_threads():
    """The CPU buffers are kept from call to call (per thread, shared by instances): no call's or thread's state leaks
    into another's result, and a pickled extractor computes the same."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    from modeling_acula.feature_extraction_acula import _CPU_BUFFERS

    _CPU_BUFFERS.buffers.clear()  # so that the first call below makes them, under inference mode
    extractor = AculaFeatureExtractor()
    rng = np.random.default_rng(0)
    first_audio = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (131000, 50000, 200000)]
    with torch.inference_mode():  # a first call under inference mode must not break later calls outside it
        first = extractor(first_audio, sampling_rate=16000, sliding_window=True)["input_values"].clone()
    kept = extractor(first_audio, sampling_rate=16000, sliding_window=True)["input_values"]
    extractor([rng.standard_normal(9000).astype(np.float32)] * 11, sampling_rate=16000)  # other sizes
    torch.testing.assert_close(kept, first, rtol=0, atol=0)
    fresh = AculaFeatureExtractor()(first_audio, sampling_rate=16000, sliding_window=True)["input_values"]
    torch.testing.assert_close(fresh, first, rtol=0, atol=0)
    batches = [[rng.standard_normal(131000).astype(np.float32) * scale] * 9 for scale in (0.01, 0.1, 1.0, 0.5)]
    expected = [AculaFeatureExtractor()(b, sampling_rate=16000)["input_values"] for b in batches]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda b: extractor(b, sampling_rate=16000)["input_values"], batches))
            for result, reference in zip(got, expected):
                torch.testing.assert_close(result, reference, rtol=0, atol=0)
    restored = pickle.loads(pickle.dumps(extractor))  # the cached filter bank is not pickled
    torch.testing.assert_close(restored(first_audio, sampling_rate=16000, sliding_window=True)["input_values"],
                               first, rtol=0, atol=0)
