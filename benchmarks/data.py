"""Inputs shared by the benchmark sections: recordings of the development pack.

The pack is `modeling_acula.file_utils.default_dev_pack()`, read at each call: `$ACULA_DEV_PACK` (e.g. the subset
that benchmarks/device_bundle.py carries to a GPU machine, where ../shared is not copied), else the in-tree one.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from acula_train.manifest import Manifest, load_manifest
from benchmarks.reference import NUM_SAMPLES, SAMPLING_RATE
from modeling_acula.audio_utils import decode_audio
from modeling_acula.file_utils import default_dev_pack


def dev_manifest() -> Manifest:
    """The development pack (1,990 real recordings, 16 kHz FLAC); a clear error when it is absent."""
    return _load_pack(default_dev_pack())


@lru_cache(maxsize=2)
def _load_pack(folder: Path) -> Manifest:
    metadata = folder / "metadata.csv"
    if not metadata.exists():
        raise ValueError(f"The benchmarks read the development pack, which is missing: {metadata} does not exist.")
    return load_manifest(metadata)


def subset(count: int, min_seconds: float = 0.0) -> Manifest:
    """The first `count` rows (in a fixed, source-mixing order) with at least `min_seconds` of audio; rows repeat
    a clear error when the pack has fewer."""
    manifest = dev_manifest()
    rows = [i for i, row in enumerate(manifest.rows) if float(row.get("duration_s") or 0) >= min_seconds]
    if not rows:
        raise ValueError(f"No recording of {manifest.source} is at least {min_seconds} s long.")
    # A prime stride through the pack (which is sorted by source) mixes sources without randomness; it is a
    # permutation because 7919 is prime and larger than the pack.
    order = [rows[(i * 7919) % len(rows)] for i in range(len(rows))]
    if count > len(order):
        raise ValueError(f"Asked for {count} recordings of at least {min_seconds} s; the pack has {len(order)}.")
    return manifest.select(order[:count])


def clips(count: int) -> list[np.ndarray]:
    """`count` real 8.19 s clips (131,000 samples at 16 kHz) cut from recordings at least that long."""
    manifest = subset(count, min_seconds=NUM_SAMPLES / SAMPLING_RATE)
    return [decode_audio(path, SAMPLING_RATE)[:NUM_SAMPLES] for path in manifest.audio_paths]


def paths(manifest: Manifest) -> list[Path]:
    return list(manifest.audio_paths)
