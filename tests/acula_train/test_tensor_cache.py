"""Spectrogram cache and the training Dataset, on real dev-pack recordings."""

import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader

from acula_train import dataset as dataset_module
from acula_train import tensor_cache
from acula_train.manifest import load_manifest
from acula_train.dataset import AudioSpectrogramDataset
from acula_train.tensor_cache import TensorCache, identity_hash

IDENTITY = {"sampling_rate": 16000, "n_fft": 256, "hop_length": 128, "num_frames": 32}


def tiny_featurize(waveform: np.ndarray, sampling_rate: int) -> torch.Tensor:
    """Log power spectrogram of the first 32 frames, shape (1, 32, 129)."""
    assert sampling_rate == 16000
    audio = torch.from_numpy(waveform)
    needed = 128 * 31 + 1
    audio = torch.nn.functional.pad(audio, (0, max(0, needed - audio.numel())))[:needed]
    spec = torch.stft(audio, n_fft=256, hop_length=128, window=torch.hann_window(256), return_complex=True)
    return torch.log(spec.abs() ** 2 + 1e-10).T.unsqueeze(0)


@pytest.fixture(scope="module")
def small_manifest(dev_pack):
    manifest = load_manifest(dev_pack / "metadata.csv")
    # One short recording of each source keeps the test fast.
    picks, seen = [], set()
    for i, row in enumerate(manifest.rows):
        if row["source_dataset"] not in seen:
            seen.add(row["source_dataset"])
            picks.append(i)
    return manifest.select(picks)


def test_second_pass_reads_the_cache(small_manifest, tmp_path, monkeypatch):
    cache = TensorCache(tmp_path / "cache", IDENTITY)
    teacher = torch.randn(len(small_manifest), 8)
    dataset = AudioSpectrogramDataset(small_manifest, tiny_featurize, cache=cache, teacher_vectors=teacher)
    first = [dataset[i] for i in range(len(dataset))]
    assert len(cache) == len(small_manifest)
    assert first[0]["input_values"].shape == (1, 32, 129)
    assert first[2]["index"] == 2
    torch.testing.assert_close(first[1]["teacher_embeds"], teacher[1])

    def no_decode(*args, **kwargs):
        raise AssertionError("decode_audio called on a cached recording")

    monkeypatch.setattr(dataset_module, "decode_audio", no_decode)
    reopened = TensorCache(tmp_path / "cache", IDENTITY)
    again = AudioSpectrogramDataset(small_manifest, tiny_featurize, cache=reopened)
    for item, cached in zip(first, (again[i] for i in range(len(again)))):
        assert torch.equal(item["input_values"], cached["input_values"])
    batch = next(iter(DataLoader(again, batch_size=3)))
    assert batch["input_values"].shape == (3, 1, 32, 129) and batch["index"].tolist() == [0, 1, 2]


def test_identity_and_file_changes_miss(small_manifest, tmp_path):
    source = small_manifest.audio_paths[0]
    audio = tmp_path / "copy.flac"
    shutil.copy2(source, audio)
    cache = TensorCache(tmp_path / "cache", IDENTITY)
    cache.put(audio, torch.ones(1, 2, 3))
    assert torch.equal(cache.get(audio), torch.ones(1, 2, 3))

    other = TensorCache(tmp_path / "cache", {**IDENTITY, "n_fft": 512})
    assert other.folder != cache.folder and other.get(audio) is None  # kept apart, never mixed

    by_stat = TensorCache(tmp_path / "cache_stat", IDENTITY, key_mode="stat")
    by_stat.put(audio, torch.ones(1, 2, 3))
    stat = audio.stat()
    os.utime(audio, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert torch.equal(cache.get(audio), torch.ones(1, 2, 3))  # by content (the default): a new mtime still hits
    assert by_stat.get(audio) is None  # by stat: a touched file is a miss

    moved = tmp_path / "moved.flac"
    shutil.copy(audio, moved)
    assert torch.equal(cache.get(moved), torch.ones(1, 2, 3))  # same bytes, other path
    assert by_stat.get(moved) is None

    data = bytearray(audio.read_bytes())
    data[-1] ^= 0xFF  # the same file edited in place: one byte of content
    audio.write_bytes(bytes(data))
    assert cache.get(audio) is None and torch.equal(cache.get(moved), torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match="key_mode"):
        TensorCache(tmp_path / "cache3", IDENTITY, key_mode="mtime")
    for keyed in (cache, by_stat):  # a missing file is named in a clear error, in either mode
        with pytest.raises(ValueError, match="gone.flac: cannot read the audio file for the spectrogram cache"):
            keyed.get(tmp_path / "gone.flac")


def test_identity_hash_handles_arrays_and_rejects_objects():
    with_filters = {**IDENTITY, "mel_filters": np.ones((3, 4))}
    changed = {**IDENTITY, "mel_filters": np.ones((3, 4)) * 2}
    assert identity_hash(with_filters) == identity_hash(dict(with_filters))
    assert identity_hash(with_filters) != identity_hash(changed)
    with pytest.raises(TypeError, match="not JSON-serializable"):
        identity_hash({"fn": object()})


def test_concurrent_writers_and_corrupt_entry(small_manifest, tmp_path):
    cache = TensorCache(tmp_path / "cache", IDENTITY)
    path = small_manifest.audio_paths[0]
    tensor = torch.arange(24, dtype=torch.float32).reshape(1, 4, 6)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: cache.put(path, tensor), range(32)))
    assert torch.equal(cache.get(path), tensor)
    entry = cache.entry_path(path)
    assert not [p for p in entry.parent.iterdir() if p.suffix == ".tmp"]  # no temporary files left
    entry.write_bytes(b"garbage")
    assert cache.get(path) is None  # unreadable entry -> recompute


def _rewrite_tensor(entry, tensor, metadata):
    from safetensors.torch import save_file

    save_file({"input_values": tensor}, str(entry), metadata=metadata)


def test_damaged_entries_are_never_served(small_manifest, tmp_path, caplog):
    cache = TensorCache(tmp_path / "cache", IDENTITY)
    path = small_manifest.audio_paths[0]
    good = torch.rand(1, 16, 8)
    entry = cache.put(path, good)
    assert torch.equal(cache.get(path), good)

    def damaged(description, damage):
        cache.put(path, good)
        damage()
        with caplog.at_level(logging.WARNING, logger="acula_train.tensor_cache"):
            caplog.clear()
            assert cache.get(path) is None, description
        assert "not usable" in caplog.text and str(entry) in caplog.text, description

    def nan_in_data():
        data = bytearray(entry.read_bytes())
        data[-4:] = b"\xff\xff\xff\x7f"  # the last float becomes NaN, the header still parses
        entry.write_bytes(bytes(data))

    def flipped_bit():
        data = bytearray(entry.read_bytes())
        data[-1] ^= 0x01  # still finite, but not what was written
        entry.write_bytes(bytes(data))

    damaged("NaN written into the data", nan_in_data)
    damaged("a flipped bit", flipped_bit)
    damaged("another tensor, no records", lambda: _rewrite_tensor(entry, torch.zeros(3), None))
    recorded = {"identity_sha256": cache.identity_hash, "shape": "[1, 16, 8]", "dtype": "torch.float32"}
    wrong_shape = torch.zeros(1, 8, 16)
    damaged(
        "wrong shape",
        lambda: _rewrite_tensor(entry, wrong_shape, {**recorded, "crc32": tensor_cache._checksum(wrong_shape)}),
    )
    as_half = good.half()
    damaged(
        "wrong dtype",
        lambda: _rewrite_tensor(entry, as_half, {**recorded, "crc32": tensor_cache._checksum(as_half)}),
    )
    with pytest.raises(ValueError, match="NaN or Inf"):  # never written, so never served
        cache.put(path, torch.full((1, 16, 8), float("nan")))

    # What put records next to the tensor.
    cache.put(path, good)
    with safe_open(str(entry), framework="pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["shape"]) == [1, 16, 8] and metadata["dtype"] == "torch.float32"
    # bfloat16 (--spectrogram_dtype) round-trips, checksum included.
    cache.put(path, good.bfloat16())
    assert torch.equal(cache.get(path), good.bfloat16())


def test_dataset_recomputes_a_damaged_entry(small_manifest, tmp_path):
    cache = TensorCache(tmp_path / "cache", IDENTITY)
    dataset = AudioSpectrogramDataset(small_manifest, tiny_featurize, cache=cache)
    expected = dataset[0]["input_values"]
    entry = cache.entry_path(small_manifest.audio_paths[0])
    data = bytearray(entry.read_bytes())
    data[-4:] = b"\xff\xff\xff\x7f"
    entry.write_bytes(bytes(data))
    assert torch.equal(dataset[0]["input_values"], expected)  # recomputed, not the damaged entry
    assert torch.equal(cache.get(small_manifest.audio_paths[0]), expected)  # and rewritten


def test_dataset_errors(small_manifest):
    with pytest.raises(ValueError, match=r"teacher_vectors must have shape \(5, D\)"):
        AudioSpectrogramDataset(small_manifest, tiny_featurize, teacher_vectors=np.zeros((4, 8)))
    bad = AudioSpectrogramDataset(small_manifest, lambda w, sr: torch.full((1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="NaN/Inf"):
        bad[0]
    wrong_type = AudioSpectrogramDataset(small_manifest, lambda w, sr: w)
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        wrong_type[0]
    with pytest.raises(IndexError):
        wrong_type[len(small_manifest)]
