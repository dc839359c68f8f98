"""`pipeline("audio-embedding")`: one embedding per recording from any acula encoder.

transformers' own `feature-extraction` pipeline is text-only (it tokenises its input), so acula registers an
audio counterpart. It accepts what `audio-classification` accepts (a path, a waveform at the model's rate, or a
`{"array"/"raw": ..., "sampling_rate": ...}` dict) and returns the pooled embedding as a numpy vector. Recordings
longer than the model's window are cut into sliding windows whose embeddings are averaged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import Pipeline


class AudioEmbeddingPipeline(Pipeline):
    """Embeds recordings with an acula encoder.

    Example:

    ```python
    >>> import modeling_acula  # registers the task
    >>> from transformers import pipeline
    >>> embed = pipeline("audio-embedding", model="path/to/acula-model")
    >>> vector = embed({"array": waveform, "sampling_rate": 44100})  # numpy array of shape (hidden_size,)
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

    def preprocess(self, inputs: Any, sliding_window: bool = True) -> dict[str, torch.Tensor]:
        extractor = self.feature_extractor
        if isinstance(inputs, str):
            waveform, sampling_rate = extractor.load_audio(inputs)
        elif isinstance(inputs, dict):
            if "sampling_rate" not in inputs:
                raise ValueError("An input dict needs a 'sampling_rate' key beside 'array' (or 'raw').")
            waveform = inputs.get("array", inputs.get("raw"))
            if waveform is None:
                raise ValueError("An input dict needs the waveform under 'array' (or 'raw').")
            sampling_rate = inputs["sampling_rate"]
        else:
            waveform, sampling_rate = inputs, extractor.sampling_rate
        return extractor(waveform, sampling_rate=sampling_rate, return_tensors="pt", sliding_window=sliding_window)

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.model(input_values=model_inputs["input_values"])
        # Every window of one recording belongs to it: average them into one vector.
        return {"embedding": outputs.pooler_output.mean(dim=0)}

    def postprocess(self, model_outputs: dict[str, torch.Tensor]) -> np.ndarray:
        return model_outputs["embedding"].float().cpu().numpy()


__all__ = ["AudioEmbeddingPipeline"]
