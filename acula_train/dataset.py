"""The torch `Dataset` that alignment training reads: a spectrogram (cached) and a teacher vector per manifest row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from modeling_acula.audio_utils import DEFAULT_SAMPLING_RATE, decode_audio

from .manifest import Manifest
from .tensor_cache import TensorCache

if TYPE_CHECKING:
    from modeling_acula import AculaFeatureExtractor


class AudioSpectrogramDataset(Dataset):
    """
    Spectrograms (and optionally cached teacher vectors) of the rows of a [`Manifest`].

    Args:
        manifest ([`Manifest`]): the recordings.
        featurize (`Callable[[np.ndarray, int], torch.Tensor]`): turns a float32 mono waveform and its
            sampling rate into a spectrogram of shape `(1, T, F)` (e.g. the AcuLa feature extractor).
        cache ([`TensorCache`], *optional*): where spectrograms are read from / written to.
        teacher_vectors (`torch.Tensor` or `np.ndarray`, *optional*): one teacher vector per manifest row,
            shape `(len(manifest), D)`; returned as `teacher_embeds`.
        sampling_rate (`int`, *optional*, defaults to 16000): rate the waveform is decoded at.
        resample_quality (`str`, *optional*, defaults to `"HQ"`): soxr quality for files at another rate (the feature
            extractor's `resample_quality`).
        labels (`torch.Tensor`, *optional*): one class index per manifest row, shape `(len(manifest),)` (the
            supervised objective); returned as `labels`.

    Items are dicts `{"input_values": (1, T, F) tensor, "index": row index, "teacher_embeds": (D,)}` (and
    `"labels"` when given).
    """

    def __init__(
        self,
        manifest: Manifest,
        featurize: Callable[[np.ndarray, int], torch.Tensor],
        cache: TensorCache | None = None,
        teacher_vectors: torch.Tensor | np.ndarray | Sequence | None = None,
        *,
        sampling_rate: int = DEFAULT_SAMPLING_RATE,
        resample_quality: str = "HQ",
        labels: torch.Tensor | None = None,
    ) -> None:
        if not callable(featurize):
            raise TypeError(f"featurize must be callable, got {type(featurize).__name__}.")
        self.manifest = manifest
        self.featurize = featurize
        self.cache = cache
        self.sampling_rate = sampling_rate
        self.resample_quality = resample_quality
        self.teacher_vectors = None
        if teacher_vectors is not None:
            if isinstance(teacher_vectors, torch.Tensor):
                vectors = teacher_vectors
            else:
                vectors = torch.as_tensor(np.asarray(teacher_vectors))
            if vectors.ndim != 2 or vectors.shape[0] != len(manifest):
                raise ValueError(
                    f"teacher_vectors must have shape ({len(manifest)}, D), one per row of {manifest.source}; "
                    f"got {tuple(vectors.shape)}."
                )
            self.teacher_vectors = vectors
        if labels is not None and tuple(labels.shape) != (len(manifest),):
            raise ValueError(f"labels must have shape ({len(manifest)},), one per row of {manifest.source}; got "
                             f"{tuple(labels.shape)}.")
        self.labels = labels

    def __len__(self) -> int:
        return len(self.manifest)

    def _compute(self, index: int) -> torch.Tensor:
        path = self.manifest.audio_paths[index]
        waveform = decode_audio(path, self.sampling_rate, self.resample_quality)
        features = self.featurize(waveform, self.sampling_rate)
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"featurize returned {type(features).__name__} for {path}; expected a torch.Tensor.")
        if features.ndim == 4 and features.shape[0] == 1:  # a batched extractor called on one clip
            features = features[0]
        if features.ndim != 3:
            raise ValueError(f"featurize returned shape {tuple(features.shape)} for {path}; expected (1, T, F).")
        if not torch.isfinite(features).all():
            raise ValueError(f"featurize returned NaN/Inf for {path} ({self.manifest.describe_row(index)}).")
        return features

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.manifest):
            raise IndexError(f"index {index} out of range for {len(self.manifest)} recordings.")
        path = self.manifest.audio_paths[index]
        features = self.cache.get(path) if self.cache is not None else None
        if features is None:
            features = self._compute(index)
            if self.cache is not None:
                self.cache.put(path, features)
        item: dict[str, Any] = {"input_values": features, "index": index}
        if self.teacher_vectors is not None:
            item["teacher_embeds"] = self.teacher_vectors[index]
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def spectrogram_cache(cache_dir: Path, extractor: AculaFeatureExtractor) -> TensorCache:
    """The spectrogram cache of `extractor`'s settings under `cache_dir` (a saved extractor's `auto_map` is no
    setting: a folder's reloaded extractor finds the spectrograms its training run cached)."""
    identity = {key: value for key, value in extractor.to_dict().items() if key != "auto_map"}
    return TensorCache(Path(cache_dir) / "spectrograms", identity)


def pair_dataset(manifest, extractor: AculaFeatureExtractor, cache: TensorCache,
                 teacher_vectors: torch.Tensor | None, labels: torch.Tensor | None = None) -> AudioSpectrogramDataset:
    """The alignment pairs (spectrogram, teacher vector) of `manifest`'s rows: what training iterates, and what the
    readout is fitted on (also when `python -m acula_train.readout fit` rebuilds them for an existing folder).

    Args:
        manifest ([`~acula_train.manifest.Manifest`]): the rows used, in order.
        extractor ([`AculaFeatureExtractor`]): the run's feature extractor (spectrograms missing from `cache`).
        cache ([`TensorCache`]): see [`spectrogram_cache`].
        teacher_vectors (`torch.Tensor`): `(len(manifest), teacher width)`, the teacher vector of each row's report
            (`None` for the supervised objective, which has no teacher).
        labels (`torch.Tensor`, *optional*): the class index of each row (the supervised objective).
    """
    def featurize(waveform, rate):
        return extractor(waveform, sampling_rate=rate, return_tensors="pt")["input_values"][0]

    return AudioSpectrogramDataset(manifest, featurize, cache=cache, teacher_vectors=teacher_vectors,
                                   sampling_rate=extractor.sampling_rate, resample_quality=extractor.resample_quality,
                                   labels=labels)
