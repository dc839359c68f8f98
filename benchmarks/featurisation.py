"""Section 1: our batched feature extractor against the per-recording librosa reference."""

from __future__ import annotations

import numpy as np

from benchmarks import data
from benchmarks.harness import Check, Device, Results, Row, Target, measure_interleaved
from benchmarks.reference import SAMPLING_RATE, reference_from_file, reference_from_waveform
from modeling_acula import AculaFeatureExtractor
from modeling_acula.audio_utils import decode_audio, resample

SECTION = "featurisation"
# float64 matches librosa to ~3e-7 on the [0, 1] scale; a float32 FFT is off by up to ~2e-4 in bins 70-80 dB below
# the clip's maximum (see AculaFeatureExtractor's `compute_dtype`).
DEFAULT = "float32 (default)"
TOLERANCE = {DEFAULT: 1e-3, "float64": 1e-5}
BATCH = 64  # clips per extractor call


def _batched(extractor: AculaFeatureExtractor, waveforms: list[np.ndarray], rate: int, device: Device) -> np.ndarray:
    outputs = []
    for start in range(0, len(waveforms), BATCH):
        features = extractor(waveforms[start : start + BATCH], sampling_rate=rate, device=device.torch_device)
        outputs.append(features["input_values"][:, 0].cpu().numpy())
    return np.concatenate(outputs)


def _batched_from_files(extractor: AculaFeatureExtractor, paths: list, device: Device) -> np.ndarray:
    """Decode (and resample) each file, featurise in batches: what `acula_train.trainer.prepare_spectrograms` does."""
    outputs = []
    for start in range(0, len(paths), BATCH):
        waveforms = [decode_audio(path, extractor.sampling_rate) for path in paths[start : start + BATCH]]
        features = extractor(waveforms, sampling_rate=extractor.sampling_rate, device=device.torch_device)
        outputs.append(features["input_values"][:, 0].cpu().numpy())
    return np.concatenate(outputs)


def run(results: Results, size: dict[str, int], repeats: int, device: Device) -> None:
    clips = data.clips(size["feat_clips"])
    # The same clips at 44.1 kHz (made once, untimed), so that resampling is part of the timed work.
    clips_44k = [resample(clip, SAMPLING_RATE, 44100) for clip in clips]
    files = data.paths(data.subset(size["feat_files"]))
    extractors = {DEFAULT: AculaFeatureExtractor(), "float64": AculaFeatureExtractor(compute_dtype="float64")}
    outputs: dict[str, np.ndarray] = {}

    def keep(name, fn):
        def wrapped():
            outputs[name] = fn()
        return wrapped

    cases = {
        "waveforms 16 kHz": (clips, SAMPLING_RATE),
        "waveforms 44.1 kHz (resampling included)": (clips_44k, 44100),
    }
    for label, (waveforms, rate) in cases.items():
        fns = {"reference": keep("reference", lambda w=waveforms, r=rate: np.stack([reference_from_waveform(x, r) for x in w]))}
        for dtype, extractor in extractors.items():
            fns[dtype] = keep(dtype, lambda e=extractor, w=waveforms, r=rate: _batched(e, w, r, device))
        timings = measure_interleaved(fns, repeats, device=device, warm_each=True)
        ratios = _record(results, label, len(waveforms), timings, outputs, device)
        if rate == SAMPLING_RATE:
            needed = 50.0 if device.is_cuda else 4.0
            results.targets.append(Target(
                "featurisation from waveforms", f">= {needed:g}x the per-recording reference ({device.torch_device})",
                "; ".join(f"{ratio:.2f}x ({name})" for name, ratio in ratios.items()),
                ratios[DEFAULT] >= needed,
            ))

    fns = {"reference": keep("reference", lambda: np.stack([reference_from_file(path) for path in files]))}
    for dtype, extractor in extractors.items():
        fns[dtype] = keep(dtype, lambda e=extractor: _batched_from_files(e, files, device))
    timings = measure_interleaved(fns, repeats, device=device, warm_each=True)
    _record(results, "dev-pack files (decode included)", len(files), timings, outputs, device)
    results.note(
        SECTION,
        "Reference: librosa per recording (load + melspectrogram + power_to_db + min-max), as the authors' data "
        f"loader does. Ours: `AculaFeatureExtractor` on batches of {BATCH}, computed on `{device.torch_device}`; "
        "files are decoded with soundfile (+ soxr) one by one in both. Dev-pack files are 16 kHz FLAC, so the "
        "44.1 kHz waveform case is the one that times resampling. Paths are interleaved and each timed call follows "
        "an untimed call of the same path (`warm_each`), so every path is timed warm, as in a continuous job.",
    )


def _record(results: Results, label: str, count: int, timings: dict, outputs: dict, device: Device) -> dict[str, float]:
    reference = timings["reference"]
    ratios = {}
    results.rows.append(
        Row(SECTION, f"{label}: librosa per recording (reference)", reference.wall, count / reference.wall, ratio=1.0,
            note=f"{count} clips; CPU {reference.cpu:.2f} s")
    )
    for dtype in [name for name in timings if name != "reference"]:
        timing = timings[dtype]
        results.rows.append(
            Row(SECTION, f"{label}: AculaFeatureExtractor batched, {dtype}", timing.wall, count / timing.wall,
                ratio=reference.wall / timing.wall, note=f"CPU {timing.cpu:.2f} s")
        )
        ratios[dtype] = reference.wall / timing.wall
        difference = float(np.abs(outputs[dtype] - outputs["reference"]).max())
        results.checks.append(Check(SECTION, f"{label}, {dtype} vs librosa (max abs, [0, 1] scale)", difference, TOLERANCE[dtype]))
    return ratios
