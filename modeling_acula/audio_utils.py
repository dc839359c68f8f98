"""The one audio path of acula: decode a file (soundfile + soxr, no FFmpeg), resample a waveform and cut it into
windows.

The feature extractor, the training data, the evaluation embedders, the pipeline and the examples all read audio
through these functions, so a file gives the same samples wherever it is read.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

DEFAULT_SAMPLING_RATE = 16000


def _riff_declared_size(path: Path) -> int | None:
    """Size a RIFF/WAVE header declares for the whole file, or None for other formats."""
    with open(path, "rb") as handle:
        header = handle.read(12)
    if len(header) == 12 and header[:4] == b"RIFF" and header[8:12] == b"WAVE":
        return int.from_bytes(header[4:8], "little") + 8
    return None


def decode_audio(path: str | os.PathLike, target_sr: int = DEFAULT_SAMPLING_RATE, resample_quality: str = "HQ") -> np.ndarray:
    """
    Read an audio file as float32 mono at `target_sr` with soundfile + soxr (no FFmpeg needed).

    Channels are averaged; other rates are resampled with soxr's high-quality filter.

    Args:
        path (`str` or `os.PathLike`): the audio file (any format libsndfile reads: WAV, FLAC, OGG, MP3).
        target_sr (`int`, *optional*, defaults to 16000): output sampling rate.
        resample_quality (`str`, *optional*, defaults to `"HQ"`): soxr quality of the resampling (pass the feature
            extractor's `resample_quality`, so that files give the same features as waveforms passed to it).

    Returns:
        `np.ndarray` of shape `(num_samples,)`, dtype float32.

    Raises:
        `ValueError` naming the file: not readable as audio, truncated, zero samples (also after resampling),
        NaN/Inf samples.
    """
    path = Path(path)
    if target_sr <= 0:
        raise ValueError(f"target_sr must be positive, got {target_sr}.")
    try:
        with sf.SoundFile(str(path)) as handle:
            sampling_rate, declared_frames = handle.samplerate, handle.frames
            try:
                audio = handle.read(dtype="float32", always_2d=True)
            except sf.LibsndfileError as error:
                raise ValueError(f"{path}: truncated or corrupt audio, decoding stopped ({error}).") from error
    except sf.LibsndfileError as error:
        raise ValueError(f"{path}: cannot read as audio ({error}).") from error
    if declared_frames > 0 and audio.shape[0] < declared_frames:
        raise ValueError(f"{path}: truncated audio, {audio.shape[0]} of {declared_frames} declared samples read.")
    declared_size = _riff_declared_size(path)
    if declared_size is not None and path.stat().st_size < declared_size:
        # libsndfile silently shortens a cut WAV to the bytes present.
        raise ValueError(
            f"{path}: truncated WAV file, {path.stat().st_size} bytes but the header declares {declared_size}."
        )
    if audio.shape[0] == 0:
        raise ValueError(f"{path}: the file has zero samples.")
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        raise ValueError(f"{path}: {bad} NaN or Inf sample(s); the file is corrupt.")
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if sampling_rate != target_sr:
        mono = resample(mono, sampling_rate, target_sr, resample_quality)
        if mono.size == 0:
            raise ValueError(
                f"{path}: {audio.shape[0]} sample(s) at {sampling_rate} Hz leave nothing after resampling to "
                f"{target_sr} Hz."
            )
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int, quality: str = "HQ") -> np.ndarray:
    """Resample a 1-D waveform with soxr (what `decode_audio` and the feature extractor both use, so that a file and
    its waveform give the same samples). May return zero samples for a very short input: callers check.

    Args:
        waveform (`np.ndarray`): a 1-D float32 waveform.
        orig_sr (`int`): its sampling rate.
        target_sr (`int`): the output sampling rate.
        quality (`str`, *optional*, defaults to `"HQ"`): soxr quality recipe.

    Returns:
        `np.ndarray`: the float32 waveform at `target_sr`.
    """
    return np.asarray(soxr.resample(waveform, orig_sr, target_sr, quality=quality), dtype=np.float32)


def cut_windows(waveform: np.ndarray, window: int, hop: int) -> list[np.ndarray]:
    """Windows covering the whole recording (views; the last one may be shorter), as the feature extractor's sliding
    windows cut it.

    Args:
        waveform (`np.ndarray`): a 1-D waveform.
        window (`int`): window length in samples.
        hop (`int`): distance between window starts in samples.
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}.")
    if waveform.size <= window:
        return [waveform]
    count = 1 + math.ceil((waveform.size - window) / hop)
    return [waveform[i * hop : i * hop + window] for i in range(count)]


__all__ = ["DEFAULT_SAMPLING_RATE", "cut_windows", "decode_audio", "resample"]
