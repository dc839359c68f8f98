"""`pipeline("audio-embedding")`: one embedding per recording from any acula encoder.

transformers' own `feature-extraction` pipeline is text-only (it tokenises its input), so acula registers an
audio counterpart. It accepts what `audio-classification` accepts (a path, a waveform at the model's rate, or a
`{"array"/"raw": ..., "sampling_rate": ...}` dict) and returns the pooled embedding as a numpy vector. Recordings
longer than the model's window are cut into sliding windows whose embeddings are averaged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from transformers.pipelines.base import ChunkPipeline

from .audio_utils import decode_audio


class AudioEmbeddingPipeline(ChunkPipeline):
    """Embeds recordings with an acula encoder.

    Each window of a recording is one model input, so `batch_size` counts windows (of one or several recordings);
    the window embeddings of each recording are averaged in `postprocess`, and the result does not depend on
    `batch_size`.

    Example:

    ```python
    >>> import modeling_acula  # registers the task
    >>> from transformers import pipeline
    >>> embed = pipeline("audio-embedding", model="path/to/acula-model")
    >>> vector = embed({"array": waveform, "sampling_rate": 44100})  # numpy array of shape (hidden_size,)
    >>> vectors = embed([waveform_1, waveform_2], batch_size=8)  # one vector per recording
    ```
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    def _sanitize_parameters(self, sliding_window: bool | None = None, **kwargs):
        preprocess_kwargs = {}
        if sliding_window is not None:
            preprocess_kwargs["sliding_window"] = sliding_window
        return preprocess_kwargs, {}, {}

    def preprocess(self, inputs: Any, sliding_window: bool = True) -> Iterator[dict[str, Any]]:
        extractor = self.feature_extractor
        if isinstance(inputs, str):
            # A file is read as everywhere in acula: at the extractor's rate and resampling quality.
            waveform = decode_audio(inputs, extractor.sampling_rate, extractor.resample_quality)
            sampling_rate = extractor.sampling_rate
        elif isinstance(inputs, dict):
            if "sampling_rate" not in inputs:
                raise ValueError("An input dict needs a 'sampling_rate' key beside 'array' (or 'raw').")
            waveform = inputs.get("array", inputs.get("raw"))
            if waveform is None:
                raise ValueError("An input dict needs the waveform under 'array' (or 'raw').")
            sampling_rate = inputs["sampling_rate"]
        else:
            waveform, sampling_rate = inputs, extractor.sampling_rate
        features = extractor(waveform, sampling_rate=sampling_rate, return_tensors="pt", sliding_window=sliding_window)
        windows = features["input_values"]
        if self.dtype is not None and self.dtype.is_floating_point:
            windows = windows.to(dtype=self.dtype)
        # One window per item: transformers' collation then batches windows across recordings, and `is_last` tells
        # the pipeline where a recording ends.
        for position in range(windows.shape[0]):
            yield {"input_values": windows[position : position + 1], "is_last": position == windows.shape[0] - 1}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        is_last = model_inputs.pop("is_last")
        outputs = self.model(input_values=model_inputs["input_values"])
        return {"pooler_output": outputs.pooler_output, "is_last": is_last}

    def postprocess(self, model_outputs: list[dict[str, torch.Tensor]]) -> np.ndarray:
        # Every window of one recording belongs to it: average them into one vector.
        pooled = torch.cat([output["pooler_output"] for output in model_outputs]).float()
        return pooled.mean(dim=0).cpu().numpy()


__all__ = ["AudioEmbeddingPipeline"]
