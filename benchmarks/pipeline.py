"""Section 2: one epoch of data over the development pack, from files: the reference (librosa per item, every
epoch), our first epoch (decode + batched featurisation + `TensorCache` writes) and our cached epochs."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks import data
from benchmarks.harness import Check, Device, Results, Row, measure, measure_interleaved
from benchmarks.reference import reference_from_file
from modeling_acula import AculaFeatureExtractor
from acula_train.audio_batches import decoded_batches
from acula_train.dataset import AudioSpectrogramDataset
from acula_train.tensor_cache import TensorCache
from acula_train.manifest import Manifest

SECTION = "data pipeline"
BATCH = 24  # train_acula.py's default per-device batch
# The cache holds the default float32 spectrograms (within ~2e-4 of librosa; see the featurisation section).
TOLERANCE = 1e-3


def _loader(dataset: AudioSpectrogramDataset) -> DataLoader:
    return DataLoader(dataset, batch_size=min(BATCH, len(dataset)), shuffle=True, drop_last=True, num_workers=0)


def _epoch(loader: DataLoader) -> int:
    count = 0
    for batch in loader:
        count += batch["input_values"].shape[0]
    return count


def fill_cache(manifest: Manifest, extractor: AculaFeatureExtractor, cache: TensorCache, device: Device,
               batch_size: int = 32) -> None:
    """Decode every recording not cached yet and featurise it in batches on `device`, writing the cache: the work of
    `acula_train.trainer.prepare_spectrograms` (one process), with the features computed on the benchmark's device."""
    todo = [index for index in range(len(manifest)) if cache.get(manifest.audio_paths[index]) is None]
    batches = decoded_batches([manifest.audio_paths[index] for index in todo], extractor.sampling_rate, batch_size,
                              resample_quality=extractor.resample_quality)
    for start, waveforms in zip(range(0, len(todo), batch_size), batches):
        chunk = todo[start : start + batch_size]
        features = extractor(waveforms, sampling_rate=extractor.sampling_rate, device=device.torch_device)
        for index, spectrogram in zip(chunk, features["input_values"].cpu()):
            cache.put(manifest.audio_paths[index], spectrogram)


def _dataset(manifest, extractor: AculaFeatureExtractor, folder: Path) -> AudioSpectrogramDataset:
    cache = TensorCache(folder, extractor.to_dict())
    return AudioSpectrogramDataset(
        manifest,
        lambda waveform, rate: extractor(waveform, sampling_rate=rate)["input_values"][0],
        cache=cache,
        teacher_vectors=torch.zeros(len(manifest), 384),
    )


def run(results: Results, size: dict[str, int], repeats: int, device: Device, workdir: Path) -> None:
    manifest = data.subset(size["pipeline_files"])
    paths = data.paths(manifest)
    for path in paths:  # warm the page cache, so that no timed path pays for cold disk reads
        path.read_bytes()
    extractor = AculaFeatureExtractor()
    batch = min(BATCH, len(paths))
    reference_outputs: list[np.ndarray] = []
    datasets: list[AudioSpectrogramDataset] = []

    def reference_epoch() -> None:
        order = torch.randperm(len(paths)).tolist()
        reference_outputs.clear()
        for start in range(0, len(order) - batch + 1, batch):
            items = [reference_from_file(paths[i]) for i in order[start : start + batch]]
            torch.from_numpy(np.stack(items))
            reference_outputs.extend(zip(order[start : start + batch], items))

    def first_epoch() -> None:
        folder = Path(tempfile.mkdtemp(prefix="spectrograms-", dir=workdir))
        dataset = _dataset(manifest, extractor, folder)
        fill_cache(manifest, extractor, dataset.cache, device)
        _epoch(_loader(dataset))
        datasets.append(dataset)

    repeats_slow = max(1, min(repeats, 2))  # a reference epoch over the whole pack is the slowest item of the run
    timings = measure_interleaved({"reference": reference_epoch, "first": first_epoch}, repeats_slow, warmup=0)
    dataset = datasets[-1]
    for old in datasets[:-1]:
        shutil.rmtree(old.cache.root, ignore_errors=True)
    cached = measure(lambda: _epoch(_loader(dataset)), repeats, warmup=1)

    count = (len(paths) // batch) * batch
    reference = timings["reference"]
    results.rows.append(Row(SECTION, "epoch from files: librosa per item (reference, every epoch)", reference.wall,
                            count / reference.wall, ratio=1.0, note=f"{len(paths)} dev-pack files, batches of {batch}"))
    first = timings["first"]
    results.rows.append(Row(SECTION, "first epoch: decode (2 threads, one batch ahead) + batched featurise + cache "
                            "write + DataLoader", first.wall, count / first.wall, ratio=reference.wall / first.wall,
                            note=f"as `acula_train.trainer.prepare_spectrograms`; CPU {first.cpu:.1f} s"))
    results.rows.append(Row(SECTION, "cached epoch: DataLoader over AudioSpectrogramDataset + TensorCache",
                            cached.wall, count / cached.wall, ratio=reference.wall / cached.wall,
                            note=f"CPU {cached.cpu:.1f} s"))
    difference = max(
        float(np.abs(dataset.cache.get(paths[index])[0].numpy() - expected).max())
        for index, expected in reference_outputs
    )
    results.checks.append(Check(SECTION, "cached spectrograms vs librosa reference (max abs)", difference, TOLERANCE))
    results.note(
        SECTION,
        f"{len(paths)} files; the first-epoch and reference rows are the median of {repeats_slow} epochs (each first "
        "epoch into a fresh cache folder), interleaved; files were read once beforehand so the OS page cache is warm "
        f"for every path. The first epoch featurises batches of 32 on `{device.torch_device}`.",
    )
