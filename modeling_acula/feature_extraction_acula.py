"""Feature extractor for AcuLa: waveforms -> the reference 256 x 64 log-mel spectrogram of OPERA / AcuLa."""

from __future__ import annotations

import functools
import numbers
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

from .audio_utils import cut_windows, decode_audio, resample

logger = logging.get_logger(__name__)

# "opera": the reference dB / min-max recipe; "whisper": Whisper's log-mel scale (see the class docstring).
SPECTROGRAM_RECIPES = ("opera", "whisper")
# Lowest sampling rate accepted, in Hz (body-sound sources go down to 2 kHz).
MIN_SAMPLING_RATE = 1000
# More columns than this in a 2-D batch array cannot be audio channels: the rows are waveforms.
_MAX_CHANNELS = 32


@functools.lru_cache(maxsize=16)
def _window_and_filters(
    n_fft: int, num_mel_bins: int, f_min: float, f_max: float, sampling_rate: int, device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The STFT window and mel filter bank, built once per settings, device and dtype (keyed by the settings, so an
    attribute changed after construction cannot use stale tensors)."""
    window = torch.hann_window(n_fft, periodic=True, dtype=dtype, device=device)
    # float32 filters are bit-exact with librosa.filters.mel(..., htk=False, norm="slaney").
    filters = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=num_mel_bins,
        min_frequency=f_min,
        max_frequency=f_max,
        sampling_rate=sampling_rate,
        norm="slaney",
        mel_scale="slaney",
        dtype=np.float32,
    )
    return window, torch.from_numpy(np.ascontiguousarray(filters.T)).to(device=device, dtype=dtype)


class _CpuBuffers(threading.local):
    """This thread's buffers for the two largest spectrogram intermediates, kept from call to call on the CPU: fresh
    multi-MB tensors there cost a page fault per 4 KiB at every call, and without them the featurisation took 10%
    longer on 2 cores (`benchmarks/`). About 13 MB per thread with the default chunk, in float32."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}

    def empty(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The first `shape[0]` rows of this thread's buffer `name` (grown when needed); a fresh tensor off the CPU,
        where the device's caching allocator already reuses memory."""
        if device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        held = self.buffers.get(name)
        if held is None or held.dtype != dtype or held.shape[1:] != shape[1:] or held.shape[0] < shape[0]:
            # A normal tensor even under `torch.inference_mode()`, so that later calls outside it can write it.
            with torch.inference_mode(False):
                held = self.buffers[name] = torch.empty(shape, dtype=dtype)
        return held[: shape[0]]


_CPU_BUFFERS = _CpuBuffers()


# ---------------------------------------------------------------------------------------------- input checking


def _split_batch(raw_audio: Any) -> list[Any]:
    """Splits the input into a list of items: one waveform, a 2-D (batch, samples) array, or a list."""
    if isinstance(raw_audio, (np.ndarray, torch.Tensor)):
        if raw_audio.ndim == 0:
            raise ValueError("Audio item 0 is a scalar; expected a 1-D waveform.")
        if raw_audio.ndim == 1:
            return [raw_audio]
        if raw_audio.ndim == 2:
            if raw_audio.shape[0] == 0:
                raise ValueError("Empty audio input: the batch array has no rows.")
            rows, columns = raw_audio.shape
            if columns < rows and columns <= _MAX_CHANNELS:
                # soundfile's (frames, channels) layout passed as is would become `frames` clips of a few samples
                # each: garbage features (and a huge output), never what the caller meant.
                raise ValueError(
                    f"A 2-D audio array of shape {tuple(raw_audio.shape)} looks like one multi-channel recording "
                    f"in (samples, channels) layout, not a (batch, samples) batch of {rows} clips of {columns} "
                    "samples. Pass it inside a list ([audio]) to average its channels, or transpose it if the "
                    "rows really are waveforms."
                )
            return list(raw_audio)
        raise ValueError(
            f"A batch array must be 1-D (one waveform) or 2-D (batch, samples), got shape {tuple(raw_audio.shape)}"
            " (item 0 onwards); pass multi-channel recordings as a list of 2-D arrays."
        )
    if isinstance(raw_audio, (list, tuple)):
        if len(raw_audio) == 0:
            raise ValueError("Empty audio input: got an empty list.")
        if all(isinstance(value, numbers.Number) for value in raw_audio):
            return [raw_audio]  # one waveform given as a list of numbers
        return list(raw_audio)
    raise TypeError(
        f"`raw_audio` must be a numpy array, a torch tensor or a list of them, got {type(raw_audio).__name__}."
    )


def _checked_rates(sampling_rate: int | Sequence[int] | None, num_items: int) -> list[int]:
    """One integer rate per item, refusing a missing, non-integer or implausible one."""
    if sampling_rate is None:
        raise ValueError(
            "`sampling_rate` is required for every audio item (none was given for items 0.."
            f"{num_items - 1}): a wrong rate silently ruins the spectrogram, so it is never assumed."
        )
    rates = list(sampling_rate) if isinstance(sampling_rate, (list, tuple)) else [sampling_rate] * num_items
    if len(rates) != num_items:
        raise ValueError(f"Got {len(rates)} sampling rates for {num_items} audio items.")
    for index, rate in enumerate(rates):
        if rate is None:
            raise ValueError(f"Audio item {index} has no sampling rate.")
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not rate > 0:
            raise ValueError(f"Audio item {index} has a non-positive or invalid sampling rate {rate!r}.")
        if rate != int(rate):
            raise ValueError(f"Audio item {index} has a non-integer sampling rate {rate!r}.")
        if rate < MIN_SAMPLING_RATE:
            # Almost surely a mistake (e.g. kHz for Hz), and resampling from it would allocate thousands of times
            # the input.
            raise ValueError(
                f"Audio item {index} has an implausible sampling rate of {rate} Hz (below {MIN_SAMPLING_RATE} Hz); "
                "give the rate in Hz."
            )
    return [int(rate) for rate in rates]


def _as_mono_float32(item: Any, index: int) -> np.ndarray:
    """One item as a finite, contiguous float32 mono waveform; signed integer PCM is scaled to [-1, 1]."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        if item.is_floating_point() and item.dtype not in (torch.float32, torch.float64):
            item = item.float()  # numpy has no bfloat16
        item = item.numpy()
    array = np.asarray(item)
    if array.dtype.kind == "i" and array.dtype.itemsize <= 4:
        # Signed PCM: full scale is 2 ** (bits - 1), as soundfile reads it. int64 is no PCM format (and is what a
        # list of Python ints becomes), so it is refused rather than silently scaled by 2 ** 63.
        array = array.astype(np.float32) / np.float32(-np.iinfo(array.dtype).min)
    elif array.dtype.kind == "f":
        with np.errstate(over="ignore"):
            converted = array.astype(np.float32, copy=False)
        if converted is not array and (np.isinf(converted) & np.isfinite(array)).any():
            raise ValueError(
                f"Audio item {index} has finite {array.dtype} samples beyond the float32 range (max |x| = "
                f"{np.abs(array[np.isfinite(array)]).max():.3g}); scale the waveform to [-1, 1]."
            )
        array = converted
    else:
        raise TypeError(
            f"Audio item {index} has dtype {array.dtype}; expected float32/float64 or int8/int16/int32 PCM."
        )
    if array.ndim == 0 or array.ndim > 2:
        raise ValueError(
            f"Audio item {index} has {array.ndim} dimensions (shape {array.shape}); expected a 1-D waveform or a 2-D"
            " multi-channel array."
        )
    if array.size == 0:
        raise ValueError(f"Audio item {index} is empty (shape {array.shape}).")
    if array.ndim == 2:
        # The smaller axis holds the channels: soundfile gives (frames, channels), torchaudio (channels, frames).
        array = array.mean(axis=0 if array.shape[0] <= array.shape[1] else 1, dtype=np.float32)
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise ValueError(f"Audio item {index} contains {bad} NaN or Inf samples.")
    return np.ascontiguousarray(array)


class AculaFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Constructs an AcuLa feature extractor.

    Turns raw waveforms (any sampling rate, mono or multi-channel, float or integer PCM) into the log-mel spectrogram
    the OPERA-GT / AcuLa encoders were trained on. The numbers follow the authors' librosa recipe:

    1. resample to `sampling_rate` (16 kHz) with soxr and average the channels;
    2. zero-pad at the end or crop from the start to `num_samples` (8 s + 3,000 samples);
    3. centred STFT (zero padding of `n_fft // 2` on both sides), periodic Hann window of `n_fft`, power spectrum;
    4. Slaney-scale mel filter bank with Slaney area normalisation (`f_min`-`f_max`, `num_mel_bins` filters);
    5. `power_to_db(ref=max, amin, top_db)`: dB relative to the clip's maximum, clipped below `max - top_db`;
    6. min-max normalisation of each clip (or window) to [0, 1]; a constant (e.g. silent) clip gives all zeros.

    With `spectrogram_recipe="whisper"` it computes instead the log-mel that Whisper encoders take, with the numbers
    of transformers' `WhisperFeatureExtractor` (reflect-padded centred frames, the last frame dropped,
    `log10(max(mel, 1e-10))` clipped 8 below the clip's maximum, then `(x + 4) / 4`), on a window of `num_samples`
    (Whisper's 30 s, or a shorter window for an encoder with a truncated position table): see
    [`AculaFeatureExtractor.for_whisper`].

    The spectrogram is computed with torch (strided frames and a real FFT), batched, on the CPU or on any `device`
    passed to `__call__`.

    Recordings longer than `num_samples` are cropped by default (the reference behaviour). With a sliding window
    (`window_seconds` / `hop_seconds` here, or `sliding_window=True` in `__call__`) every window of every recording
    is returned together with a `recording_index` that says which input each window came from, so that window
    embeddings can be pooled per recording.

    This feature extractor inherits from [`~feature_extraction_sequence_utils.SequenceFeatureExtractor`] which
    contains most of the main methods. Users should refer to this superclass for more information regarding those
    methods.

    Args:
        feature_size (`int`, *optional*):
            Size of the feature dimension; defaults to (and must equal) `num_mel_bins`.
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate (Hz) the audio is resampled to before the spectrogram is computed.
        num_mel_bins (`int`, *optional*, defaults to 64):
            Number of mel filters.
        n_fft (`int`, *optional*, defaults to 1024):
            FFT size; also the length of the periodic Hann window.
        hop_length (`int`, *optional*, defaults to 512):
            Hop between STFT frames, in samples.
        f_min (`float`, *optional*, defaults to 50.0):
            Lowest frequency (Hz) of the mel filter bank.
        f_max (`float`, *optional*, defaults to 8000.0):
            Highest frequency (Hz) of the mel filter bank; at most `sampling_rate / 2`.
        num_samples (`int`, *optional*, defaults to 131000):
            Length (in samples at `sampling_rate`) every clip or window is padded or cropped to. With the defaults
            this gives `1 + num_samples // hop_length = 256` frames.
        top_db (`float`, *optional*, defaults to 80.0):
            Dynamic range kept below the clip's maximum, in dB. `None` disables the clipping.
        amin (`float`, *optional*, defaults to 1e-10):
            Floor of the mel power before the logarithm.
        window_seconds (`float`, *optional*):
            Length of a sliding window in seconds. `None` (the default) crops / pads every recording to one clip.
            Must not be longer than `num_samples / sampling_rate`.
        hop_seconds (`float`, *optional*):
            Hop between sliding windows in seconds; defaults to `window_seconds` (non-overlapping windows).
        max_windows_per_chunk (`int`, *optional*):
            Largest number of clips / windows sent through one batched STFT; bounds the memory used on long inputs
            or large batches. By default 8 on the CPU (larger chunks spill the CPU caches: in float32 1.1 ms per clip
            at 32 against 0.6 ms at 8, measured with `benchmarks/`) and 256 on an accelerator.
        resample_quality (`str`, *optional*, defaults to `"HQ"`):
            soxr quality recipe used when the input rate differs from `sampling_rate`.
        compute_dtype (`str`, *optional*, defaults to `"float32"`):
            Precision of the STFT and mel computation (`"float32"` or `"float64"`); the output is float32 either way.
            float32 is within about 1e-4 of librosa on the [0, 1] scale (0.01 dB, in bins 70-80 dB below the clip's
            maximum, where a float32 FFT's rounding shows) and 2.5-3x faster on a CPU (`benchmarks/`); float64
            matches librosa to within 3e-7, for bit-faithful reproduction of the reference numbers. Devices without
            float64 (MPS) use float32.
        padding_value (`float`, *optional*, defaults to 0.0):
            Value used to pad waveforms (zeros, as in the reference).
        return_attention_mask (`bool`, *optional*, defaults to `False`):
            Every output has the same fixed size, so no attention mask is returned.
        spectrogram_recipe (`str`, *optional*, defaults to `"opera"`):
            `"opera"`: the reference recipe above (dB, min-max to [0, 1]). `"whisper"`: Whisper's log-mel scale.
    """

    model_input_names = ["input_values"]

    def __init__(
        self,
        feature_size: int | None = None,
        sampling_rate: int = 16000,
        num_mel_bins: int = 64,
        n_fft: int = 1024,
        hop_length: int = 512,
        f_min: float = 50.0,
        f_max: float = 8000.0,
        num_samples: int = 131000,
        top_db: float | None = 80.0,
        amin: float = 1e-10,
        window_seconds: float | None = None,
        hop_seconds: float | None = None,
        max_windows_per_chunk: int | None = None,
        resample_quality: str = "HQ",
        compute_dtype: str = "float32",
        padding_value: float = 0.0,
        return_attention_mask: bool = False,
        spectrogram_recipe: str = "opera",
        **kwargs,
    ):
        feature_size = num_mel_bins if feature_size is None else feature_size
        # `num_frames` is derived, not a setting; accept it (e.g. from a hand-written config) only if consistent.
        saved_num_frames = kwargs.pop("num_frames", None)
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        self.num_mel_bins = num_mel_bins
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.f_min = f_min
        self.f_max = f_max
        self.num_samples = num_samples
        self.top_db = top_db
        self.amin = amin
        self.window_seconds = window_seconds
        self.hop_seconds = hop_seconds
        self.max_windows_per_chunk = max_windows_per_chunk
        self.resample_quality = resample_quality
        self.compute_dtype = compute_dtype
        self.spectrogram_recipe = spectrogram_recipe
        self._validate_settings()
        if saved_num_frames is not None and saved_num_frames != self.num_frames:
            raise ValueError(
                f"`num_frames`={saved_num_frames} does not match num_samples={num_samples} and "
                f"hop_length={hop_length}, which give {self.num_frames} frames."
            )

    # ------------------------------------------------------------------ settings

    def _validate_settings(self) -> None:
        positive_ints = ("sampling_rate", "num_mel_bins", "n_fft", "hop_length", "num_samples", "max_windows_per_chunk")
        for name in positive_ints:
            value = getattr(self, name)
            if name == "max_windows_per_chunk" and value is None:
                continue
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.feature_size != self.num_mel_bins:
            raise ValueError(
                f"`feature_size` ({self.feature_size}) must equal `num_mel_bins` ({self.num_mel_bins})."
            )
        if not 0 <= self.f_min < self.f_max <= self.sampling_rate / 2:
            raise ValueError(
                f"Need 0 <= f_min < f_max <= sampling_rate / 2, got f_min={self.f_min}, f_max={self.f_max}, "
                f"sampling_rate={self.sampling_rate}."
            )
        if self.spectrogram_recipe not in SPECTROGRAM_RECIPES:
            raise ValueError(f"`spectrogram_recipe` must be one of {SPECTROGRAM_RECIPES}, got {self.spectrogram_recipe!r}.")
        if self.spectrogram_recipe == "whisper" and self.num_samples % self.hop_length:
            raise ValueError(f"The whisper recipe needs num_samples ({self.num_samples}) to be a multiple of "
                             f"hop_length ({self.hop_length}).")
        if self.compute_dtype not in ("float32", "float64"):
            raise ValueError(f"`compute_dtype` must be 'float32' or 'float64', got {self.compute_dtype!r}.")
        if not self.amin > 0:
            raise ValueError(f"`amin` must be > 0, got {self.amin}.")
        if self.top_db is not None and not self.top_db >= 0:
            raise ValueError(f"`top_db` must be >= 0 or None, got {self.top_db}.")
        if self.window_seconds is not None or self.hop_seconds is not None:
            self._window_and_hop_samples(self.window_seconds, self.hop_seconds)

    @classmethod
    def for_whisper(cls, window_seconds: float = 30.0, **kwargs) -> AculaFeatureExtractor:
        """The extractor of a Whisper encoder (80 mel bins, n_fft 400, hop 160, 0-8,000 Hz, Whisper's log scale) on
        a window of `window_seconds`: 30 s for the original encoder, less for one with a truncated position table.

        Args:
            window_seconds (`float`, *optional*, defaults to 30.0): the model window; it must hold an even number
                of 10 ms frames (Whisper's second convolution halves them).
            **kwargs: other settings (e.g. `compute_dtype`); sliding windows default to the model window.
        """
        num_samples = int(round(window_seconds * 16000))
        if num_samples <= 0 or num_samples % 320:
            raise ValueError(f"A Whisper window must be a positive multiple of 0.02 s, got {window_seconds} s.")
        settings = {"sampling_rate": 16000, "num_mel_bins": 80, "n_fft": 400, "hop_length": 160, "f_min": 0.0,
                     "f_max": 8000.0, "num_samples": num_samples, "top_db": None, "spectrogram_recipe": "whisper"}
        return cls(**{**settings, **kwargs})

    @classmethod
    def for_config(cls, config, **kwargs) -> AculaFeatureExtractor:
        """The extractor whose spectrograms a model config takes: the reference one for the native encoder, the
        Whisper one with the window of the encoder's position table for a Whisper backbone.

        Args:
            config ([`AculaConfig`]): the model's configuration.
            **kwargs: other settings (e.g. `compute_dtype`).
        """
        backbone = getattr(config, "audio_backbone_config", None)
        if backbone is None:
            return cls(**kwargs)
        if getattr(backbone, "model_type", None) == "whisper":
            return cls.for_whisper(backbone.max_source_positions / 50, **kwargs)
        raise ValueError(f"A {backbone.model_type} backbone takes its own feature extractor, not AculaFeatureExtractor.")

    @property
    def num_frames(self) -> int:
        """Number of STFT frames per clip (centred frames): `1 + num_samples // hop_length` (the whisper recipe
        drops the last one, as Whisper does)."""
        frames = 1 + self.num_samples // self.hop_length
        return frames - 1 if self.spectrogram_recipe == "whisper" else frames

    def is_silent(self, spectrogram: torch.Tensor) -> bool:
        """Whether a spectrogram of this extractor comes from digital silence (it is constant: all zeros in the
        opera recipe, all at the floor in the whisper recipe)."""
        return bool(spectrogram.max() == spectrogram.min())

    @property
    def spectrogram_size(self) -> tuple[int, int]:
        """`(num_frames, num_mel_bins)`: the spatial size of `input_values`, to check a model config against."""
        return (self.num_frames, self.num_mel_bins)

    def _window_and_hop_samples(self, window_seconds: float | None, hop_seconds: float | None) -> tuple[int, int]:
        """Sliding-window length and hop in samples; the window defaults to the model's `num_samples`."""
        window = self.num_samples if window_seconds is None else int(round(window_seconds * self.sampling_rate))
        if window <= 0:
            raise ValueError(f"`window_seconds` must be > 0, got {window_seconds}.")
        if window > self.num_samples:
            raise ValueError(
                f"`window_seconds`={window_seconds} ({window} samples) is longer than the model's input of "
                f"{self.num_samples} samples ({self.num_samples / self.sampling_rate:.4f} s)."
            )
        hop = window if hop_seconds is None else int(round(hop_seconds * self.sampling_rate))
        if hop <= 0:
            raise ValueError(f"`hop_seconds` must be > 0, got {hop_seconds}.")
        return window, hop

    # ------------------------------------------------------------------ audio

    def load_audio(self, path: str | os.PathLike) -> tuple[np.ndarray, int]:
        """
        Reads an audio file at this extractor's rate: [`~modeling_acula.audio_utils.decode_audio`] with its
        `sampling_rate` and `resample_quality`, so that the features of a file are the features of its waveform.

        Args:
            path (`str` or `os.PathLike`):
                Path of the audio file (WAV, FLAC, OGG, MP3).

        Returns:
            `tuple[np.ndarray, int]`: the float32 mono waveform and `self.sampling_rate`, ready for `__call__`.

        Raises:
            `ValueError` naming the file when it cannot be read, is truncated, empty or holds NaN / Inf samples.
        """
        return decode_audio(path, self.sampling_rate, self.resample_quality), self.sampling_rate

    def _waveforms(self, raw_audio: Any, sampling_rate: int | Sequence[int] | None) -> list[np.ndarray]:
        """Every input check in one place: splits the batch, checks each item and its rate, and returns float32
        mono waveforms at `self.sampling_rate`."""
        items = _split_batch(raw_audio)
        waveforms = []
        for index, (item, rate) in enumerate(zip(items, _checked_rates(sampling_rate, len(items)))):
            waveform = _as_mono_float32(item, index)
            if rate != self.sampling_rate:
                resampled = resample(waveform, rate, self.sampling_rate, self.resample_quality)
                if resampled.size == 0:
                    raise ValueError(
                        f"Audio item {index} has {waveform.size} samples at {rate} Hz: nothing is left after "
                        f"resampling to {self.sampling_rate} Hz."
                    )
                waveform = resampled
            waveforms.append(waveform)
        return waveforms

    # ------------------------------------------------------------------ spectrogram

    def _spectrogram_constants(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The periodic Hann window and the (num_mel_bins, n_fft // 2 + 1) filter bank for the current settings."""
        return _window_and_filters(
            self.n_fft, self.num_mel_bins, self.f_min, self.f_max, self.sampling_rate, str(device), dtype
        )

    def _log_mel(self, padded: torch.Tensor) -> torch.Tensor:
        """(batch, n_fft // 2 + num_samples + n_fft // 2) centre-padded waveforms -> (batch, num_frames,
        num_mel_bins) log-mel spectrograms in the recipe's scale.

        Frames are strided views transformed with one real FFT each, in the (frames, freq) layout of the output: the
        numbers of `torch.stft(center=True)` without its padding copy and final transpose.
        """
        window, mel_filters = self._spectrogram_constants(padded.device, padded.dtype)
        # (The whisper recipe's dropped last frame is simply never cut: `num_frames` already excludes it.)
        shape, dtype, device = (padded.shape[0], self.num_frames), padded.dtype, padded.device
        frames = _CPU_BUFFERS.empty("frames", (*shape, self.n_fft), dtype, device)
        torch.mul(padded.unfold(-1, self.n_fft, self.hop_length)[:, : self.num_frames], window, out=frames)
        spectrum = torch.fft.rfft(frames)  # (rfft's `out=` would copy: it is left to allocate)
        power = _CPU_BUFFERS.empty("power", (*shape, self.n_fft // 2 + 1), dtype, device)
        torch.square(spectrum.real, out=power).addcmul_(spectrum.imag, spectrum.imag)
        del spectrum  # freed before the matmul allocates
        log_mel = torch.matmul(power, mel_filters.T).clamp_(min=self.amin).log10_()
        if self.spectrogram_recipe == "whisper":
            # WhisperFeatureExtractor: at most 8 (80 dB) below the clip's maximum, then (x + 4) / 4.
            log_mel = torch.maximum(log_mel, log_mel.amax(dim=(1, 2), keepdim=True) - 8.0)
            return log_mel.add_(4.0).div_(4.0)
        # power_to_db(ref=np.max, top_db): dB relative to the clip's maximum, then min-max to [0, 1].
        db = log_mel.mul_(10.0)
        db = db.sub_(db.amax(dim=(1, 2), keepdim=True))
        if self.top_db is not None:
            db = db.clamp_(min=-float(self.top_db))
        low = db.amin(dim=(1, 2), keepdim=True)
        # The maximum is 0, so the range is -low; a constant clip (silence) has none and stays all zeros.
        return db.sub_(low).div_(torch.where(low < 0, -low, 1.0))

    def _extract_fbank_features(self, segments: list[np.ndarray], device: torch.device) -> torch.Tensor:
        """Pads every segment to `num_samples` and computes their spectrograms, at most `max_windows_per_chunk`
        per FFT call, into one (num_segments, num_frames, num_mel_bins) float32 tensor on `device`."""
        dtype = getattr(torch, self.compute_dtype)
        if dtype == torch.float64 and device.type == "mps":
            logger.warning_once("MPS has no float64: computing the spectrogram in float32.")
            dtype = torch.float32
        # Padded on the CPU, in float32 when the batch goes to an accelerator (half the bytes to copy).
        staging_dtype = dtype if device.type == "cpu" else torch.float32
        chunk_size = self.max_windows_per_chunk or (8 if device.type == "cpu" else 256)
        output = torch.empty((len(segments), self.num_frames, self.num_mel_bins), dtype=torch.float32, device=device)
        for start in range(0, len(segments), chunk_size):
            chunk = segments[start : start + chunk_size]
            padded = self._padded_batch(chunk, staging_dtype).to(device=device, dtype=dtype)
            output[start : start + len(chunk)] = self._log_mel(padded)
        return output

    def _padded_batch(self, segments: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
        """(len(segments), n_fft // 2 + num_samples + n_fft // 2) CPU tensor: each segment, then `padding_value` up
        to `num_samples`, centred with zeros (as librosa >= 0.10) or, in the whisper recipe, by reflection of the
        padded window (as Whisper's `torch.stft(center=True)`). Every sample is written once: a fill followed by a
        copy, or `torch.nn.functional.pad`, costs 10% of the featurisation time on a CPU."""
        centre = self.n_fft // 2
        batch = torch.empty((len(segments), centre + self.num_samples + centre), dtype=dtype)
        body = batch[:, centre : centre + self.num_samples]
        for row, segment in enumerate(segments):
            body[row, : segment.size] = torch.from_numpy(segment)
            body[row, segment.size :] = float(self.padding_value)
        if self.spectrogram_recipe == "whisper":
            batch[:, :centre] = body[:, 1 : centre + 1].flip(-1)
            batch[:, centre + self.num_samples :] = body[:, -centre - 1 : -1].flip(-1)
        else:
            batch[:, :centre] = 0.0
            batch[:, centre + self.num_samples :] = 0.0
        return batch

    # ------------------------------------------------------------------ public API


    def __call__(
        self,
        raw_audio: np.ndarray | torch.Tensor | list[np.ndarray] | list[torch.Tensor] | list[float],
        sampling_rate: int | list[int] | None = None,
        return_tensors: str | None = "pt",
        device: str | torch.device | None = None,
        sliding_window: bool | None = None,
        window_seconds: float | None = None,
        hop_seconds: float | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Computes the log-mel spectrograms of one or several recordings.

        Args:
            raw_audio (`np.ndarray`, `torch.Tensor`, `list[np.ndarray]`, `list[torch.Tensor]` or `list[float]`):
                One 1-D waveform, a 2-D `(batch, samples)` array, or a list of waveforms of any lengths. A list item
                may be 2-D multi-channel audio; its smaller axis is taken as the channel axis and averaged. Floating
                point samples are used as they are; signed integer PCM (int16, int32) is scaled to [-1, 1].
            sampling_rate (`int` or `list[int]`):
                Sampling rate of the input in Hz (one for all items, or one per item). Required: audio at another
                rate than `self.sampling_rate` is resampled with soxr.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"` for torch tensors (left on `device`) or `"np"` for numpy arrays.
            device (`str` or `torch.device`, *optional*):
                Device the spectrogram is computed on (e.g. `"cuda"`); defaults to the CPU.
            sliding_window (`bool`, *optional*):
                Whether to return every window of every recording instead of one cropped / padded clip each.
                Defaults to `True` when `window_seconds` is set (here or in the config), `False` otherwise.
            window_seconds (`float`, *optional*):
                Window length for this call; defaults to `self.window_seconds`, then to `num_samples / sampling_rate`.
            hop_seconds (`float`, *optional*):
                Hop between windows for this call; defaults to `self.hop_seconds`, then to the window length.

        Returns:
            [`BatchFeature`]: with
            - **input_values** -- float32 `(num_clips, 1, num_frames, num_mel_bins)` spectrograms in [0, 1]; one
              clip per recording, or one per window in sliding-window mode.
            - **recording_index** -- int64 `(num_clips,)`, only in sliding-window mode: the input item each window
              comes from.
        """
        if kwargs:
            logger.warning_once(f"{self.__class__.__name__} ignores the unused arguments {sorted(kwargs)}.")
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"`return_tensors` must be 'pt' or 'np', got {return_tensors!r}.")

        window_seconds = self.window_seconds if window_seconds is None else window_seconds
        hop_seconds = self.hop_seconds if hop_seconds is None else hop_seconds
        if sliding_window is None:
            sliding_window = window_seconds is not None or hop_seconds is not None
        window, hop = self._window_and_hop_samples(window_seconds, hop_seconds) if sliding_window else (0, 0)

        waveforms = self._waveforms(raw_audio, sampling_rate)
        if sliding_window:
            windows = [cut_windows(waveform, window, hop) for waveform in waveforms]
            segments = [segment for recording in windows for segment in recording]
        else:
            segments = [waveform[: self.num_samples] for waveform in waveforms]

        device = torch.device("cpu") if device is None else torch.device(device)
        if device.type == "cuda" and device.index is None:  # name the current device: the filters are cached per device
            device = torch.device("cuda", torch.cuda.current_device())
        features = self._extract_fbank_features(segments, device)
        data: dict[str, Any] = {"input_values": features.unsqueeze(1)}
        if sliding_window:
            recording_index = [index for index, recording in enumerate(windows) for _ in recording]
            data["recording_index"] = torch.tensor(recording_index, dtype=torch.long, device=device)
        if return_tensors == "np":
            data = {key: value.cpu().numpy() for key, value in data.items()}
            return BatchFeature(data=data, tensor_type="np")
        return BatchFeature(data=data)


__all__ = ["AculaFeatureExtractor"]
