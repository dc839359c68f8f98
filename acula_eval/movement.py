"""How far alignment moved an encoder: linear CKA between its embeddings and the frozen start's, of the same
held-out recordings.

`movement = 1 - CKA(start embeddings, aligned embeddings)`. Linear CKA (Kornblith et al., 2019) does not change
under rotations, isotropic scaling and shifts of either side, which are exactly the changes a linear probe cannot
tell apart either: a movement of 0 means the aligned encoder's embeddings are a rotated, scaled, shifted copy of the
start's (a linear probe scores them the same), and a movement near 1 means their geometry no longer resembles the
start's. It says nothing about whether the change helps; the probe table does.

Embeddings are the evaluator's own ([`~acula_eval.embeddings.AudioEmbedder`], the same cache and the same
`max_windows_per_recording` / `shared_prefix_layers` settings as `eval_acula.py`), so vectors computed here are
served to the evaluation that follows and vice versa.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modeling_acula.losses import linear_cka

from .embeddings import AudioEmbedder


def embedding_cka(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """
    Linear CKA between two embedding matrices of the same recordings, row for row (in float64).

    The library's [`~modeling_acula.losses.linear_cka`] (the training loss's own estimator):
    `||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)` with column-centred `Xc`, `Yc`.

    Args:
        x (`np.ndarray` or `torch.Tensor` of shape `(n, d_x)`): embeddings of `n` recordings by one encoder.
        y (`np.ndarray` or `torch.Tensor` of shape `(n, d_y)`): embeddings of the same recordings, in the same order,
            by another encoder (`d_y` may differ from `d_x`).

    Returns:
        `float` in [0, 1]; 0 when either side is constant.

    Raises:
        `ValueError`: for fewer than 2 recordings, different row counts, or non-finite values.
    """
    x, y = (torch.as_tensor(np.asarray(v, dtype=np.float64)) for v in (x, y))
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"embedding_cka compares two (recordings, width) matrices of the same recordings, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}.")
    if x.shape[0] < 2:
        raise ValueError(f"embedding_cka needs at least 2 recordings, got {x.shape[0]}.")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("embedding_cka: the embeddings hold NaN or Inf.")
    return float(linear_cka(x, y))


def encoder_movement(
    start_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    *,
    max_windows_per_recording: int | None = 1,
    show_progress: bool = True,
    **embedder_kwargs: Any,
) -> dict[str, Any]:
    """
    Embed `paths` with the frozen start and with an aligned model (the evaluator's embedders and cache) and compare.

    Args:
        start_dir (`str` or `os.PathLike`): the frozen start as an encoder folder (e.g. written by
            `scripts/export_start_encoder.py`).
        model_dir (`str` or `os.PathLike`): the aligned model (an output folder of `train_acula.py`).
        paths (`Sequence[str or os.PathLike]`): held-out recordings (never aligned on).
        max_windows_per_recording (`int`, *optional*, defaults to 1): embed the first N windows of each recording
            (1: its first window, as `eval_acula.py --max_windows_per_recording 1`); `None`: every window.
        show_progress (`bool`, *optional*, defaults to `True`): progress bars.
        embedder_kwargs: the other [`~acula_eval.embeddings.AudioEmbedder`] settings (`cache_dir`, `batch_size`,
            `device`, `window_seconds`, `hop_seconds`, `shared_prefix_layers`, ...); pass the evaluation's, so that
            both read and write the same cached vectors.

    Returns:
        `dict` with `cka`, `movement` (= 1 - cka), `num_recordings` and `max_windows_per_recording`.
    """
    if len(paths) < 2:
        raise ValueError(f"Movement is measured over at least 2 held-out recordings, got {len(paths)}.")
    embeddings = []
    for folder in (start_dir, model_dir):
        embedder = AudioEmbedder(folder, show_progress=show_progress,
                                 max_windows_per_recording=max_windows_per_recording, **embedder_kwargs)
        embeddings.append(embedder.embed_files(paths, desc=f"movement ({Path(folder).name})"))
        del embedder
    cka = embedding_cka(*embeddings)
    return {"cka": cka, "movement": 1.0 - cka, "num_recordings": len(paths),
            "max_windows_per_recording": max_windows_per_recording}


__all__ = ["embedding_cka", "encoder_movement"]
