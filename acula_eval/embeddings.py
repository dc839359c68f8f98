"""Batched, cached recording embeddings from any audio encoder folder that `AutoModel` loads.

acula encoders get acula's own sliding windows (`AculaFeatureExtractor(sliding_window=True)`); other transformers
audio encoders (AST, wav2vec2, ...) get their own feature extractor on fixed-length windows cut here. Either way
the window embeddings of one recording are averaged into one vector (optionally of its first windows only:
`max_windows_per_recording`). Vectors are cached as safetensors, one file per (model identity, extraction settings,
recording content), so a second run reads them back; within one embedder every recording is also kept
in memory, so that the tasks of a run that share recordings (and both sides of their probes) embed each recording
once, also without a disk cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoFeatureExtractor, AutoModel

from acula_train.audio_batches import decoded_batches
from acula_train.tensor_cache import TensorCache
from modeling_acula.audio_utils import cut_windows
from modeling_acula.feature_extraction_acula import AculaFeatureExtractor
from modeling_acula.file_utils import acula_cache_dir, memoized_file_sha256
from modeling_acula.modeling_acula import mean_per_recording, pool_audio_encoder_output

# Bump when the extraction recipe changes, so that old cache entries are not reused.
EXTRACTION_VERSION = 1
# Files whose bytes decide a folder's embeddings.
_IDENTITY_FILES = ("config.json", "preprocessor_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def default_cache_dir() -> Path:
    """The `embeddings` folder of [`~modeling_acula.file_utils.acula_cache_dir`] (the training caches live beside it)."""
    return acula_cache_dir("embeddings")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """sha256 over the config, the preprocessor config and every weight file of a model folder.

    Args:
        model_dir (`str` or `os.PathLike`): a folder written by `save_pretrained`.

    Raises:
        `ValueError`: if the folder does not exist or holds no config.json or no weights.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ValueError(f"Model folder {folder} does not exist (only local folders are evaluated).")
    if not (folder / "config.json").is_file():
        raise ValueError(f"Model folder {folder} has no config.json: not a folder written by save_pretrained.")
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if not weights:
        raise ValueError(f"Model folder {folder} has no weight file (*.safetensors or *.bin).")
    files = [folder / name for name in _IDENTITY_FILES if (folder / name).is_file()] + weights
    # Memoized per file version: the embedder, the results' columns and the recipe study fingerprint the same folders.
    return hashlib.sha256("".join(f"{path.name}\0{memoized_file_sha256(path)}\n"
                                  for path in files).encode()).hexdigest()


class EmbeddingCache:
    """One safetensors file per recording for one model and extraction setting: the package's per-recording tensor
    cache ([`~acula_train.tensor_cache.TensorCache`], keyed by the recording's sha256, atomic
    writes, a torn entry counts as a miss) under the model key.

    Args:
        root (`str` or `os.PathLike`): cache folder.
        model_key (`str`): identity of the model and of the extraction settings.
    """

    def __init__(self, root: str | os.PathLike, model_key: str):
        self.model_key = model_key
        self._store = TensorCache(root, {"embedding_model_key": model_key})

    def get(self, path: str | os.PathLike) -> np.ndarray | None:
        tensor = self._store.get(path)
        return None if tensor is None else tensor.numpy()

    def put(self, path: str | os.PathLike, embedding: np.ndarray) -> None:
        self._store.put(path, torch.from_numpy(np.ascontiguousarray(embedding, dtype=np.float32)))


class FileEmbedder:
    """
    The file side shared by every embedder of an evaluation: `embed_files` decodes files in batches (in background
    threads), reads and writes the per-recording cache and calls `embed_waveforms` for the misses. A subclass sets
    `sampling_rate`, `batch_size`, `decode_workers`, `show_progress`, `cache` (an [`EmbeddingCache`] or `None`),
    `name` (progress-bar label) and `hidden_size`, and implements `embed_waveforms`.
    """

    name: str = "embedder"
    resample_quality: str = "HQ"
    max_windows_per_recording: int | None = None

    def _set_file_settings(self, batch_size: int, decode_workers: int, show_progress: bool,
                           cache_dir: str | os.PathLike | bool | None, model_key: str,
                           max_windows_per_recording: int | None = None) -> None:
        """Check and keep the settings of the file loop, and open the cache of `model_key` (`cache_dir=False`: none;
        `None`: [`default_cache_dir`]). With `max_windows_per_recording`, the key also holds that limit."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if decode_workers < 0:
            raise ValueError(f"decode_workers must be >= 0, got {decode_workers}.")
        if max_windows_per_recording is not None:
            if max_windows_per_recording < 1:
                raise ValueError(f"max_windows_per_recording must be >= 1, got {max_windows_per_recording}.")
            # Fewer windows are other numbers: they live under their own cache key.
            model_key = hashlib.sha256(f"{model_key}\0max_windows={max_windows_per_recording}".encode()).hexdigest()
        self.max_windows_per_recording = max_windows_per_recording
        self.batch_size, self.decode_workers, self.show_progress = batch_size, decode_workers, show_progress
        self.model_key = model_key
        self.cache = None if cache_dir is False else EmbeddingCache(
            default_cache_dir() if cache_dir in (None, True) else cache_dir, model_key)
        self._memory: dict[str, np.ndarray] = {}
        self.embedded_count = 0  # recordings run through the model (not read from memory or the cache)

    def window_and_hop(self) -> tuple[int, int]:
        """`(window, hop)` in samples at `sampling_rate`: how this embedder cuts a recording into windows."""
        raise NotImplementedError

    def limit_windows(self, waveform: np.ndarray) -> np.ndarray:
        """The part of a waveform that `max_windows_per_recording` windows cover (all of it without a limit): its
        first `window + (max_windows - 1) * hop` samples, cut into windows exactly as the whole recording would be."""
        if self.max_windows_per_recording is None:
            return waveform
        window, hop = self.window_and_hop()
        return waveform[: window + (self.max_windows_per_recording - 1) * hop]

    def embed_waveforms(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def embed_files(self, paths: Sequence[str | os.PathLike], desc: str | None = None) -> np.ndarray:
        """Embed audio files (cached), decoding them with [`~modeling_acula.audio_utils.decode_audio`] (in background
        threads, `acula_train.audio_batches.decoded_batches`).

        Args:
            paths (`Sequence[str or os.PathLike]`): audio files.
            desc (`str`, *optional*): progress-bar label.

        Returns:
            `np.ndarray` of shape `(len(paths), hidden_size)`, float32, in input order.
        """
        paths = [Path(p) for p in paths]
        memory = getattr(self, "_memory", None)
        if memory is None:
            memory = self._memory = {}
        keys = [os.path.realpath(p) for p in paths]
        vectors: list[np.ndarray | None] = [memory.get(key) for key in keys]
        if self.cache is not None:
            vectors = [self.cache.get(p) if vector is None else vector for p, vector in zip(paths, vectors)]
        todo, queued = [], set()  # a recording listed twice is embedded once
        for i, (key, vector) in enumerate(zip(keys, vectors)):
            if vector is None and key not in queued:
                queued.add(key)
                todo.append(i)
        bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc=desc or f"embedding ({self.name})",
                   unit="rec", disable=not self.show_progress)
        batches = decoded_batches([paths[i] for i in todo], self.sampling_rate, self.batch_size, self.decode_workers,
                                  resample_quality=self.resample_quality)
        for start, waveforms in zip(range(0, len(todo), self.batch_size), batches):
            chunk = todo[start : start + self.batch_size]
            for i, vector in zip(chunk, self.embed_waveforms([self.limit_windows(w) for w in waveforms])):
                memory[keys[i]] = vector
                if self.cache is not None:
                    self.cache.put(paths[i], vector)
            self.embedded_count = getattr(self, "embedded_count", 0) + len(chunk)
            bar.update(len(chunk))
        bar.close()
        vectors = [memory[key] if vector is None else vector for key, vector in zip(keys, vectors)]
        for key, vector in zip(keys, vectors):
            memory.setdefault(key, vector)
        if not paths:
            return np.zeros((0, self.hidden_size), dtype=np.float32)
        return np.stack(vectors).astype(np.float32)


class AudioEmbedder(FileEmbedder):
    """
    One embedding per recording from a saved audio encoder, in eval mode and without gradients.

    Args:
        model_dir (`str` or `os.PathLike`): folder that `AutoModel` and `AutoFeatureExtractor` load.
        device (`str` or `torch.device`, *optional*): defaults to CUDA when available, else CPU.
        batch_size (`int`, *optional*, defaults to 16): recordings decoded and embedded per step.
        window_seconds (`float`, *optional*): sliding-window length; defaults to the model's input length for acula
            models and 10 s for other models.
        hop_seconds (`float`, *optional*): hop between windows; defaults to the window length.
        cache_dir (`str` or `os.PathLike`, *optional*): embedding cache; `None` uses [`default_cache_dir`],
            `False` disables caching.
        show_progress (`bool`, *optional*, defaults to `True`): show a tqdm bar.
        decode_workers (`int`, *optional*, defaults to 2): threads that decode (and resample) the next batch of
            files while the current one is featurised and embedded; 0 decodes in the calling thread. libsndfile and
            soxr release the GIL, so decoding overlaps the model's work.
        autocast_dtype (`str` or `torch.dtype`, *optional*): run the encoder under `torch.autocast` in this dtype
            (`"bfloat16"` or `"float16"`). `None` (the default) keeps float32. bf16 pays off on GPUs and on CPUs with
            AMX / AVX-512 BF16 when batches are large; embeddings then differ from float32 by ~1e-2 (see
            `benchmarks/`).
        max_windows_per_recording (`int`, *optional*): embed only the first N windows of each recording (the
            recording's embedding is then the mean of those); `None` (the default) uses every window.
        shared_prefix_layers (`int`, *optional*): Whisper-backed acula folders: keep the output of the first N layers
            per window in the cache folder ([`~acula_eval.shared_prefix.SharedPrefixStore`]), so that every model of
            the evaluation with the same bottom weights (a start and its top-layer LoRA runs) computes it once and
            runs only its own top layers. The embeddings are the same.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        window_seconds: float | None = None,
        hop_seconds: float | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
        show_progress: bool = True,
        decode_workers: int = 2,
        autocast_dtype: str | torch.dtype | None = None,
        max_windows_per_recording: int | None = None,
        shared_prefix_layers: int | None = None,
    ):
        if isinstance(autocast_dtype, str):
            if autocast_dtype not in ("bfloat16", "float16"):
                raise ValueError(f"autocast_dtype must be 'bfloat16', 'float16' or None, got {autocast_dtype!r}.")
            autocast_dtype = getattr(torch, autocast_dtype)
        elif autocast_dtype not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be torch.bfloat16, torch.float16 or None, got {autocast_dtype!r}.")
        self.decode_workers = decode_workers
        self.autocast_dtype = autocast_dtype
        self.model_dir = Path(model_dir)
        fingerprint = model_fingerprint(self.model_dir)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.name = self.model_dir.name
        self.model = AutoModel.from_pretrained(self.model_dir).eval().to(self.device)
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(self.model_dir)
        self.resample_quality = getattr(self.feature_extractor, "resample_quality", "HQ")
        self.is_acula = isinstance(self.feature_extractor, AculaFeatureExtractor)
        self.sampling_rate = int(self.feature_extractor.sampling_rate)
        if window_seconds is None and not self.is_acula:
            window_seconds = 10.0
        self.window_seconds = window_seconds
        self.hop_seconds = hop_seconds
        self.settings = {
            "version": EXTRACTION_VERSION,
            "window_seconds": window_seconds,
            "hop_seconds": hop_seconds,
            "pooling": "mean over windows of pooler_output (else masked mean of last_hidden_state)",
        }
        if autocast_dtype is not None:
            # Reduced precision changes the numbers: such vectors must not be served to a float32 run.
            self.settings["autocast_dtype"] = str(autocast_dtype)
        model_key = hashlib.sha256((fingerprint + json.dumps(self.settings, sort_keys=True)).encode()).hexdigest()
        self.fingerprint = fingerprint
        self._set_file_settings(batch_size, decode_workers, show_progress, cache_dir, model_key,
                                max_windows_per_recording)
        self.prefix_store = None
        if shared_prefix_layers is not None:
            if not self.is_acula:
                raise ValueError(f"{self.model_dir}: shared_prefix_layers applies to acula folders with a Whisper "
                                 "backbone.")
            from .shared_prefix import SharedPrefixStore

            if cache_dir is False:
                raise ValueError("shared_prefix_layers stores hidden states in the cache folder: it needs a cache.")
            # Not part of the vectors' cache key: the same encoder computes the same embedding either way.
            store_root = Path(default_cache_dir() if cache_dir in (None, True) else cache_dir) / "shared-prefix"
            self.prefix_store = SharedPrefixStore(self.model, shared_prefix_layers, store_root)
        self._forward_params = set(inspect.signature(self.model.forward).parameters)

    def window_and_hop(self) -> tuple[int, int]:
        """`(window, hop)` in samples: the acula feature extractor's sliding windows (this embedder's
        `window_seconds` / `hop_seconds`, else the extractor's own, else its input length), or the fixed windows
        cut for another encoder."""
        if self.is_acula:
            extractor = self.feature_extractor
            return extractor._window_and_hop_samples(
                extractor.window_seconds if self.window_seconds is None else self.window_seconds,
                extractor.hop_seconds if self.hop_seconds is None else self.hop_seconds)
        window = round(self.window_seconds * self.sampling_rate)
        return window, window if self.hop_seconds is None else round(self.hop_seconds * self.sampling_rate)

    @property
    def hidden_size(self) -> int:
        """Size of one embedding: `audio_embedding_size` of an acula config (native or wrapped backbone), else the
        transformers config's `hidden_size` (Whisper maps it to `d_model`)."""
        config = self.model.config
        return int(getattr(config, "audio_embedding_size", None) or config.hidden_size)

    # ------------------------------------------------------------------ waveforms -> vectors

    def _embed_acula(self, waveforms: list[np.ndarray]) -> torch.Tensor:
        features = self.feature_extractor(
            waveforms,
            sampling_rate=self.sampling_rate,
            return_tensors="pt",
            sliding_window=True,
            window_seconds=self.window_seconds,
            hop_seconds=self.hop_seconds,
            device=self.device,
        )
        windows, index = features["input_values"], features["recording_index"].to(self.device)
        def encode(chunk: torch.Tensor) -> torch.Tensor:
            if self.prefix_store is not None:
                return self.prefix_store.pooled(chunk)
            return self.model(input_values=chunk).pooler_output

        pooled = torch.cat([encode(windows[start : start + 4 * self.batch_size]).float()
                            for start in range(0, windows.shape[0], 4 * self.batch_size)])
        return mean_per_recording(pooled, index)

    def _embed_foreign(self, waveforms: list[np.ndarray]) -> torch.Tensor:
        window = round(self.window_seconds * self.sampling_rate)
        hop = window if self.hop_seconds is None else round(self.hop_seconds * self.sampling_rate)
        segments, index = [], []
        for number, waveform in enumerate(waveforms):
            for segment in cut_windows(waveform, window, hop):
                segments.append(segment)
                index.append(number)
        call_params = set(inspect.signature(self.feature_extractor.__call__).parameters)
        kwargs: dict[str, Any] = {"sampling_rate": self.sampling_rate, "return_tensors": "pt"}
        if "padding" in call_params:
            kwargs["padding"] = True
        if "return_attention_mask" in call_params:
            kwargs["return_attention_mask"] = True
        pooled = []
        for start in range(0, len(segments), 4 * self.batch_size):
            inputs = self.feature_extractor(segments[start : start + 4 * self.batch_size], **kwargs)
            inputs = {k: v.to(self.device) for k, v in inputs.items() if k in self._forward_params}
            outputs = self.model(**inputs)
            # Padded frames stay out of the mean (a sample-level mask is mapped to frames by the encoder).
            pooled.append(pool_audio_encoder_output(outputs, inputs.get("attention_mask"), self.model).float())
        index_tensor = torch.tensor(index, dtype=torch.long, device=self.device)
        return mean_per_recording(torch.cat(pooled), index_tensor)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def embed_waveforms(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Embed mono waveforms already at `self.sampling_rate`.

        Args:
            waveforms (`Sequence[np.ndarray]`): 1-D float waveforms.

        Returns:
            `np.ndarray` of shape `(len(waveforms), hidden_size)`, float32.
        """
        waveforms = [np.asarray(w, dtype=np.float32) for w in waveforms]
        with self._autocast():
            vectors = self._embed_acula(waveforms) if self.is_acula else self._embed_foreign(waveforms)
        return vectors.float().cpu().numpy()


__all__ = ["AudioEmbedder", "EmbeddingCache", "FileEmbedder", "default_cache_dir", "model_fingerprint"]
