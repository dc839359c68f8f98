"""Decode audio files in batches, the next batch in background threads while the caller works on the current one.

Used wherever many files are turned into features or embeddings (spectrogram preparation before training,
`AudioEmbedder`): libsndfile and soxr release the GIL, so decoding overlaps featurisation and the model's work.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from modeling_acula.audio_utils import decode_audio


def decoded_batches(
    paths: Sequence[str | os.PathLike],
    sampling_rate: int,
    batch_size: int,
    workers: int = 2,
    describe: Callable[[int], str] | None = None,
    resample_quality: str = "HQ",
) -> Iterator[list[np.ndarray]]:
    """
    Yields the decoded waveforms of `paths` in order, `batch_size` at a time.

    With `workers` > 0 the next batch is decoded by a thread pool while the caller processes the current one, so
    at most two batches of waveforms are held in memory at once. The pool's threads are joined when the generator
    ends: exhausted, on an error, or when the caller closes it (`contextlib.closing`; a caller that stops early
    should).

    Args:
        paths (`Sequence[str or os.PathLike]`): audio files, decoded with `modeling_acula.audio_utils.decode_audio`.
        sampling_rate (`int`): rate (Hz) every waveform is resampled to.
        batch_size (`int`): files per yielded batch.
        workers (`int`, *optional*, defaults to 2): decoding threads; 0 decodes in the calling thread.
        describe (`Callable[[int], str]`, *optional*): names the position of a file in `paths` in error messages
            (e.g. its manifest row); by default the message names the file only.
        resample_quality (`str`, *optional*, defaults to `"HQ"`): soxr quality for files at another rate (the
            feature extractor's `resample_quality`).

    Raises:
        `ValueError`: for the first file (in order) that cannot be decoded, naming it; the remaining decoding is
        cancelled.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}.")
    starts = range(0, len(paths), batch_size)

    def result(position: int, decode: Callable[[], np.ndarray]) -> np.ndarray:
        try:
            return decode()
        except ValueError as error:
            if describe is None:
                raise
            raise ValueError(f"{describe(position)}: {error}") from error

    if workers == 0:
        for start in starts:
            yield [result(i, lambda i=i: decode_audio(paths[i], sampling_rate, resample_quality))
                   for i in range(start, min(start + batch_size, len(paths)))]
        return

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="acula-decode")

    def submit(start: int) -> list[tuple[int, Future]]:
        stop = min(start + batch_size, len(paths))
        return [(i, pool.submit(decode_audio, paths[i], sampling_rate, resample_quality)) for i in range(start, stop)]

    try:
        pending = submit(0) if len(paths) else []
        for start in starts:
            current = pending
            pending = submit(start + batch_size) if start + batch_size < len(paths) else []
            yield [result(i, future.result) for i, future in current]
    finally:
        # Exhausted, failed, or closed by the caller (who stopped early, or failed): what nobody will read is not
        # decoded, and no decoding thread outlives the batches.
        pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["decoded_batches"]
