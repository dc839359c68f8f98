"""The authors' featurisation, one recording at a time with librosa: the reference our batched paths are timed and
checked against. librosa is a benchmark-only dependency (the `bench` extra); the package never imports it."""

from __future__ import annotations

import os

import librosa
import numpy as np

SAMPLING_RATE = 16000
NUM_SAMPLES = 131000  # 8 s + 3,000 samples -> 256 frames at hop 512


def reference_log_mel(waveform: np.ndarray) -> np.ndarray:
    """(samples,) float32 at 16 kHz -> (256, 64) float32 in [0, 1], as the reference code computes it.

    Crop from the start / zero-pad at the end to 131,000 samples, librosa's mel power spectrogram (centred frames,
    periodic Hann, Slaney mel scale and norm), `power_to_db(ref=np.max)` (amin 1e-10, top_db 80), min-max to [0, 1].
    """
    clip = np.zeros(NUM_SAMPLES, dtype=np.float32)
    clip[: min(NUM_SAMPLES, waveform.size)] = waveform[:NUM_SAMPLES]
    mel = librosa.feature.melspectrogram(
        y=clip, sr=SAMPLING_RATE, n_fft=1024, hop_length=512, n_mels=64, fmin=50, fmax=8000
    )
    log_mel = librosa.power_to_db(mel, ref=np.max)
    value_range = log_mel.max() - log_mel.min()
    normalised = (log_mel - log_mel.min()) / value_range if value_range > 0 else np.zeros_like(log_mel)
    return normalised.T.astype(np.float32)


def reference_from_waveform(waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Resample with librosa's default (soxr HQ) when needed, then `reference_log_mel`."""
    if sampling_rate != SAMPLING_RATE:
        waveform = librosa.resample(waveform, orig_sr=sampling_rate, target_sr=SAMPLING_RATE)
    return reference_log_mel(waveform)


def reference_from_file(path: str | os.PathLike) -> np.ndarray:
    """`librosa.load(path, sr=16000)` (decode, mono mix-down, resample) then `reference_log_mel`."""
    waveform, _ = librosa.load(os.fspath(path), sr=SAMPLING_RATE, mono=True)
    return reference_log_mel(waveform)
