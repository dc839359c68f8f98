"""`decoded_batches`: order, batching, errors that name the file (or row), early stop."""

import numpy as np
import pytest
import soundfile
import soxr

from acula_train.audio_batches import decoded_batches
from modeling_acula.audio_utils import decode_audio


@pytest.fixture
def files(tmp_path):
    paths = []
    for number in range(7):
        path = tmp_path / f"clip{number}.wav"
        soundfile.write(path, np.full(800 + 100 * number, 0.01 * (number + 1), dtype=np.float32), 8000)
        paths.append(path)
    return paths


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_batches_keep_order_and_resample(files, workers):
    batches = list(decoded_batches(files, 16000, batch_size=3, workers=workers))
    assert [len(batch) for batch in batches] == [3, 3, 1]
    flat = [waveform for batch in batches for waveform in batch]
    for path, waveform in zip(files, flat):
        np.testing.assert_array_equal(waveform, decode_audio(path, 16000))
    assert flat[2].size == 2 * (800 + 200)  # 8 kHz -> 16 kHz


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_file_names_itself_or_its_row(files, tmp_path, workers):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not audio")
    paths = files[:4] + [broken] + files[4:]
    with pytest.raises(ValueError, match="broken.wav"):
        list(decoded_batches(paths, 16000, batch_size=2, workers=workers))
    with pytest.raises(ValueError, match=r"^row 5 of the manifest: .*broken.wav"):
        list(decoded_batches(paths, 16000, batch_size=2, workers=workers, describe=lambda i: f"row {i + 1} of the manifest"))
    # Batches before the bad one are delivered first.
    delivered = []
    with pytest.raises(ValueError):
        for batch in decoded_batches(paths, 16000, batch_size=2, workers=workers):
            delivered.append(len(batch))
    assert delivered == [2, 2]


def test_stopping_early_and_bad_settings(files):
    batches = decoded_batches(files, 16000, batch_size=2, workers=2)
    assert len(next(batches)) == 2
    batches.close()  # the pool shuts down without decoding the rest
    assert list(decoded_batches([], 16000, batch_size=2)) == []
    with pytest.raises(ValueError, match="batch_size"):
        list(decoded_batches(files, 16000, batch_size=0))
    with pytest.raises(ValueError, match="workers"):
        list(decoded_batches(files, 16000, batch_size=2, workers=-1))


def test_resample_quality_reaches_the_decoder(tmp_path):
    """Files at another rate are resampled with the feature extractor's quality, as waveforms passed to it are."""
    rng = np.random.default_rng(0)
    path = tmp_path / "rate.wav"
    soundfile.write(path, rng.standard_normal(44100).astype(np.float32) * 0.1, 44100)
    for quality in ("QQ", "HQ"):
        (decoded,) = next(decoded_batches([path], 16000, batch_size=1, workers=1, resample_quality=quality))
        waveform, rate = soundfile.read(path, dtype="float32")
        np.testing.assert_array_equal(decoded, soxr.resample(waveform, rate, 16000, quality=quality))
    assert not np.array_equal(decode_audio(path, 16000, "QQ"), decode_audio(path, 16000, "HQ"))
