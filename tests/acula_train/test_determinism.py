"""Determinism on CPU: the same seed gives bit-identical models, embeddings and training runs; embeddings of the
same input do not depend on the call or on the rest of the batch (within float tolerance)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modeling_acula import AculaConfig, AculaFeatureExtractor, AculaForPreTraining, AculaModel
from tests.testing_utils import TINY, read_log, run_in_process, tiny_args


def _config() -> AculaConfig:
    return AculaConfig.from_preset("cpu-small", **json.loads(TINY))


def _waveforms(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.2 * rng.standard_normal(int(rng.integers(8000, 200000)))).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def extractor():
    return AculaFeatureExtractor()


@pytest.fixture(scope="module")
def spectrograms(extractor):
    return extractor(_waveforms(6), sampling_rate=16000, return_tensors="pt")["input_values"]


def test_same_seed_gives_bit_identical_models_and_embeddings(spectrograms):
    def build(seed: int) -> AculaModel:
        torch.manual_seed(seed)
        return AculaModel(_config()).eval()

    first, second, other = build(7), build(7), build(8)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(first(spectrograms).pooler_output, second(spectrograms).pooler_output)


def test_features_are_identical_across_calls_and_batch_compositions(extractor):
    waveforms = _waveforms(5, seed=1)
    batch = extractor(waveforms, sampling_rate=16000)["input_values"]
    assert torch.equal(batch, extractor(waveforms, sampling_rate=16000)["input_values"])  # call to call: bit-exact
    reversed_batch = extractor(waveforms[::-1], sampling_rate=16000)["input_values"].flip(0)
    torch.testing.assert_close(reversed_batch, batch, atol=1e-6, rtol=0)
    chunked = AculaFeatureExtractor(max_windows_per_chunk=2)(waveforms, sampling_rate=16000)["input_values"]
    torch.testing.assert_close(chunked, batch, atol=1e-6, rtol=0)
    for index, waveform in enumerate(waveforms):
        alone = extractor([waveform], sampling_rate=16000)["input_values"]
        torch.testing.assert_close(alone[0], batch[index], atol=1e-6, rtol=0)


def test_embeddings_are_identical_across_calls_and_batch_compositions(spectrograms):
    torch.manual_seed(0)
    model = AculaForPreTraining(_config()).eval()  # dropout off: eval mode is deterministic
    with torch.no_grad():
        full = model(spectrograms).audio_embeds
        assert torch.equal(full, model(spectrograms).audio_embeds)
        permutation = torch.tensor([3, 0, 5, 1, 4, 2])
        permuted = model(spectrograms[permutation]).audio_embeds
        torch.testing.assert_close(permuted, full[permutation], atol=1e-5, rtol=1e-5)
        singles = torch.cat([model(spectrograms[i : i + 1]).audio_embeds for i in range(len(spectrograms))])
        torch.testing.assert_close(singles, full, atol=1e-5, rtol=1e-5)
        mixed = model(torch.cat([spectrograms[:2], torch.rand(3, 1, 256, 64)])).audio_embeds[:2]
        torch.testing.assert_close(mixed, full[:2], atol=1e-5, rtol=1e-5)


def test_same_seed_gives_an_identical_training_run(tmp_path):
    common = ["--max_steps", "3", "--checkpointing_steps", "0", "--lora_dropout", "0.1"]  # dropout draws included
    first = run_in_process(tiny_args(tmp_path / "first", tmp_path / "cache", *common))
    second = run_in_process(tiny_args(tmp_path / "second", tmp_path / "cache", *common))
    other = run_in_process(tiny_args(tmp_path / "other", tmp_path / "cache", *common, "--seed", "43"))

    weights = [load_file(str(folder / "alignment" / "model.safetensors")) for folder in (first, second, other)]
    assert set(weights[0]) == set(weights[1])
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    assert any(not torch.equal(value, weights[2][name]) for name, value in weights[0].items())
    assert read_log(first) == read_log(second)  # every logged loss, bit for bit
    assert read_log(first) != read_log(other)
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):  # the published files too
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
