"""Processor for AcuLa: the audio feature extractor plus the text teacher's tokenizer."""

from __future__ import annotations

import inspect
import os
from typing import Any

from transformers import AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .feature_extraction_acula import AculaFeatureExtractor

# Arguments of `AculaFeatureExtractor.__call__` besides the audio and its rate; everything else goes to the tokenizer.
_AUDIO_CALL_KWARGS = frozenset(inspect.signature(AculaFeatureExtractor.__call__).parameters) - {
    "self",
    "raw_audio",
    "sampling_rate",
    "kwargs",
}
# Tokenizer defaults for clinical reports: a padded, truncated batch that the teacher can embed directly.
_TEXT_DEFAULTS = {"padding": True, "truncation": True}


class AculaProcessor(ProcessorMixin):
    r"""
    Constructs an AcuLa processor: an [`AculaFeatureExtractor`] for recordings and the text teacher's tokenizer for
    clinical reports, in one object that saves and loads as one folder.

    The tokenizer is only needed for alignment training (the teacher embeds the reports); at inference the audio
    encoder uses the feature extractor alone.

    Args:
        feature_extractor ([`AculaFeatureExtractor`]):
            The audio feature extractor.
        tokenizer ([`PreTrainedTokenizerBase`]):
            The tokenizer of the frozen text teacher (any tokenizer [`AutoTokenizer`] loads).
    """

    def __init__(self, feature_extractor: AculaFeatureExtractor, tokenizer: Any):
        if not isinstance(feature_extractor, AculaFeatureExtractor):
            raise TypeError(
                f"`feature_extractor` must be an AculaFeatureExtractor, got {type(feature_extractor).__name__}."
            )
        super().__init__(feature_extractor, tokenizer)

    @classmethod
    def _get_arguments_from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, processor_dict: dict | None = None, **kwargs
    ) -> list[Any]:
        """
        Loads the two sub-processors by their classes, so that loading does not depend on the Auto classes having
        been told about [`AculaFeatureExtractor`]. The feature extractor settings come from `processor_config.json`
        (written by `save_pretrained`) or from a separate `preprocessor_config.json`.
        """
        processor_dict = processor_dict if processor_dict is not None else {}
        feature_extractor_dict = processor_dict.get("feature_extractor")
        if isinstance(feature_extractor_dict, dict):
            feature_extractor = AculaFeatureExtractor.from_dict(dict(feature_extractor_dict))
        else:
            feature_extractor = AculaFeatureExtractor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return [feature_extractor, tokenizer]

    def __call__(
        self,
        audio: Any | None = None,
        text: str | list[str] | None = None,
        sampling_rate: int | list[int] | None = None,
        audio_kwargs: dict[str, Any] | None = None,
        text_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Prepares recordings for the audio encoder and/or reports for the text teacher.

        Args:
            audio (`np.ndarray`, `torch.Tensor` or a list of them, *optional*):
                Recordings, in any form [`AculaFeatureExtractor.__call__`] accepts.
            text (`str` or `list[str]`, *optional*):
                Clinical reports, one per recording when both are given.
            sampling_rate (`int` or `list[int]`, *optional*):
                Sampling rate of `audio`; required whenever `audio` is given.
            audio_kwargs (`dict`, *optional*):
                Extra arguments for the feature extractor.
            text_kwargs (`dict`, *optional*):
                Extra arguments for the tokenizer (defaults: `padding=True, truncation=True`).
            kwargs:
                Routed by name: arguments of [`AculaFeatureExtractor.__call__`] (`device`, `sliding_window`,
                `window_seconds`, `hop_seconds`) go to the feature extractor, all others to the tokenizer;
                `return_tensors` (default `"pt"`) goes to both.

        Returns:
            [`BatchFeature`]: `input_values` (and `recording_index` in sliding-window mode) for `audio`, and the
            tokenizer's outputs (`input_ids`, `attention_mask`, ...) for `text`.
        """
        if audio is None and text is None:
            raise ValueError("AculaProcessor needs `audio`, `text` or both; got neither.")
        return_tensors = kwargs.pop("return_tensors", "pt")
        audio_kwargs = {"return_tensors": return_tensors, **(audio_kwargs or {})}
        text_kwargs = {**_TEXT_DEFAULTS, "return_tensors": return_tensors, **(text_kwargs or {})}
        for key, value in kwargs.items():
            (audio_kwargs if key in _AUDIO_CALL_KWARGS else text_kwargs)[key] = value

        data: dict[str, Any] = {}
        if audio is not None:
            data.update(self.feature_extractor(audio, sampling_rate=sampling_rate, **audio_kwargs))
        elif sampling_rate is not None:
            raise ValueError("`sampling_rate` was given without `audio`.")
        if text is not None:
            encoding = self.tokenizer(text, **text_kwargs)
            if audio is not None:
                num_texts = 1 if isinstance(text, str) else len(text)
                num_recordings = (
                    int(data["recording_index"].max()) + 1 if "recording_index" in data else len(data["input_values"])
                )
                if num_texts != num_recordings:
                    raise ValueError(f"Got {num_recordings} recordings but {num_texts} texts; pass one text each.")
            data.update(encoding)
        return BatchFeature(data=data)

    @property
    def model_input_names(self) -> list[str]:
        """Input names of the feature extractor followed by those of the tokenizer."""
        names = list(self.feature_extractor.model_input_names) + list(self.tokenizer.model_input_names)
        return list(dict.fromkeys(names))


__all__ = ["AculaProcessor"]
