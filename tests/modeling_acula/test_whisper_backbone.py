"""Whisper as an acula backbone: Whisper's log-mel, pooling over the frames that hold audio, short windows (a
truncated position table), save/load through the Auto classes, and LoRA on the encoder's attention and MLP."""

import numpy as np
import pytest
import soundfile
import torch
from transformers import AutoFeatureExtractor, AutoModel, WhisperFeatureExtractor, WhisperModel

import modeling_acula  # noqa: F401  (registers the Auto classes)
from modeling_acula import AculaFeatureExtractor, AculaForPreTraining, AculaModel, apply_lora
from modeling_acula.modeling_acula import whisper_audio_frame_mask

from tests.testing_utils import REPO, tiny_whisper_config

MINI_PACK = REPO / "data" / "auscultation-mini"


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory):
    """A tiny random WhisperModel folder, as acula-convert-whisper writes a real one (encoder and decoder)."""
    folder = tmp_path_factory.mktemp("tiny-whisper")
    torch.manual_seed(0)
    WhisperModel(tiny_whisper_config()).save_pretrained(folder)
    return folder


def real_waveforms(count: int = 3) -> list[np.ndarray]:
    files = sorted(MINI_PACK.glob("audio/**/*.flac"))[:count]
    return [soundfile.read(path, dtype="float32")[0] for path in files]


@pytest.mark.parametrize("window_seconds", [30.0, 8.0])
def test_whisper_recipe_matches_transformers_whisper_feature_extractor(window_seconds):
    waveforms = real_waveforms() + [np.zeros(8000, dtype=np.float32)]
    ours = AculaFeatureExtractor.for_whisper(window_seconds)(waveforms, sampling_rate=16000)["input_values"]
    reference = WhisperFeatureExtractor(feature_size=80, chunk_length=int(window_seconds))(
        waveforms, sampling_rate=16000, return_tensors="np")["input_features"]
    assert ours.shape == (4, 1, int(window_seconds * 100), 80)
    np.testing.assert_allclose(ours[:, 0].transpose(1, 2).numpy(), reference, atol=1e-5)


def test_whisper_recipe_settings_are_checked_and_silence_is_recognised():
    with pytest.raises(ValueError, match="multiple of 0.02 s"):
        AculaFeatureExtractor.for_whisper(1.01)
    with pytest.raises(ValueError, match="spectrogram_recipe"):
        AculaFeatureExtractor(spectrogram_recipe="mfcc")
    extractor = AculaFeatureExtractor.for_whisper(2.0)
    features = extractor([np.zeros(16000, dtype=np.float32), real_waveforms(1)[0]], sampling_rate=16000)
    assert extractor.is_silent(features["input_values"][0]) and not extractor.is_silent(features["input_values"][1])
    # a saved extractor comes back with its recipe
    assert AculaFeatureExtractor.from_dict(extractor.to_dict()).spectrogram_recipe == "whisper"


def test_from_audio_backbone_keeps_the_encoder_and_truncates_the_position_table(tiny_whisper_dir):
    model = AculaForPreTraining.from_audio_backbone(str(tiny_whisper_dir), window_seconds=2.0, teacher_hidden_size=12,
                                                    projection_dim=8, projection_hidden_size=16)
    backbone = model.acula.backbone
    assert type(backbone).__name__ == "WhisperEncoder" and model.config.audio_embedding_size == 32
    assert model.config.audio_backbone_config.max_source_positions == 100
    source = WhisperModel.from_pretrained(tiny_whisper_dir).encoder.state_dict()
    for name, value in backbone.state_dict().items():
        expected = source[name][:100] if name == "embed_positions.weight" else source[name]
        assert torch.equal(value, expected), name
    assert not backbone.embed_positions.weight.requires_grad  # Whisper's sinusoids stay fixed
    assert not any(name.startswith("acula.backbone.decoder") for name in model.state_dict())
    with pytest.raises(ValueError, match="multiple of 0.02 s"):
        AculaForPreTraining.from_audio_backbone(str(tiny_whisper_dir), window_seconds=1.01, teacher_hidden_size=12)


def test_pooling_averages_only_the_frames_that_hold_audio(tiny_whisper_dir):
    model = AculaForPreTraining.from_audio_backbone(str(tiny_whisper_dir), window_seconds=2.0, teacher_hidden_size=12,
                                                    projection_dim=8, projection_hidden_size=16).eval()
    extractor = AculaFeatureExtractor.for_whisper(2.0)
    clip = real_waveforms(1)[0][:8000]  # 0.5 s of a real heart recording in a 2 s window
    inputs = extractor([clip, np.concatenate([clip] * 4)], sampling_rate=16000)["input_values"]
    with torch.no_grad():
        pooled = model.acula(inputs).pooler_output
        hidden = model.acula.backbone(inputs[:, 0].transpose(1, 2)).last_hidden_state
    # Independently: an input frame holds audio if its centred STFT window reaches a real sample; 0.5 s = 50 frames,
    # frame 50 still reaches the last samples; encoder frame j sees input frames 2j and 2j + 1.
    audio_frames = 51
    encoder_frames = (audio_frames + 1) // 2
    torch.testing.assert_close(pooled[0], hidden[0, :encoder_frames].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))  # a full window: every frame
    assert not torch.allclose(pooled[0], hidden[0].mean(0), atol=1e-3)  # the padding would have changed it
    mask = whisper_audio_frame_mask(inputs[:, 0].transpose(1, 2), hidden.shape[1])
    assert mask.sum(1).tolist() == [encoder_frames, 100]
    # digital silence keeps every frame (a defined mean, not 0 / 0)
    silent = extractor([np.zeros(16000, dtype=np.float32)], sampling_rate=16000)["input_values"]
    assert whisper_audio_frame_mask(silent[:, 0].transpose(1, 2), 100).sum().item() == 100


def test_wrong_window_is_a_clear_error(tiny_whisper_dir):
    model = AculaForPreTraining.from_audio_backbone(str(tiny_whisper_dir), window_seconds=2.0, teacher_hidden_size=12)
    wrong = AculaFeatureExtractor.for_whisper(4.0)(real_waveforms(1), sampling_rate=16000)["input_values"]
    with pytest.raises(ValueError, match=r"200 frames x 80 mel bins .*for_whisper\(2\)"):
        model.acula(wrong)


def test_aligned_whisper_folder_loads_with_the_auto_classes(tiny_whisper_dir, tmp_path):
    model = AculaForPreTraining.from_audio_backbone(str(tiny_whisper_dir), window_seconds=2.0, teacher_hidden_size=12,
                                                    projection_dim=8, projection_hidden_size=16).eval()
    extractor = AculaFeatureExtractor.for_config(model.config)
    assert extractor.num_samples == 32000 and extractor.spectrogram_recipe == "whisper"
    model.acula.save_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path)
    loaded, loaded_extractor = AutoModel.from_pretrained(tmp_path).eval(), AutoFeatureExtractor.from_pretrained(tmp_path)
    assert isinstance(loaded, AculaModel) and isinstance(loaded_extractor, AculaFeatureExtractor)
    inputs = loaded_extractor(real_waveforms(2), sampling_rate=16000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).pooler_output, model.acula(**inputs).pooler_output)
    assert not loaded.backbone.embed_positions.weight.requires_grad


def test_lora_adapts_whisper_attention_and_mlp_and_trains(tiny_whisper_dir):
    model = AculaForPreTraining.from_audio_backbone(str(tiny_whisper_dir), window_seconds=2.0, teacher_hidden_size=12,
                                                    projection_dim=8, projection_hidden_size=16)
    peft_model = apply_lora(model, r=4, include_mlp=True)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    adapted = {name.split(".lora_")[0].split("backbone.")[1] for name in trainable if "lora_" in name}
    expected = {f"layers.{i}.{m}" for i in range(2) for m in
                ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")}
    assert adapted == expected
    assert not any("embed_positions" in name or "conv" in name for name in trainable)
    inputs = AculaFeatureExtractor.for_whisper(2.0)(real_waveforms(3) + real_waveforms(1), sampling_rate=16000)
    out = peft_model(**inputs, teacher_embeds=torch.randn(4, 12))
    out.loss.backward()
    assert all(p.grad is not None for name, p in peft_model.named_parameters() if "lora_A" in name)
    # without the MLP only attention is adapted
    plain = apply_lora(AculaForPreTraining.from_audio_backbone(str(tiny_whisper_dir), window_seconds=2.0,
                                                               teacher_hidden_size=12), r=4)
    assert not any("fc1.lora" in name for name, _ in plain.named_parameters())


def test_preservation_alone_leaves_a_lora_encoder_where_it_started(tiny_whisper_dir):
    """Feature distillation against the frozen start begins at its minimum (zero loss, zero gradient): trained alone
    it never moves the encoder. This is why "Whisper-base + preservation only" equals the frozen start in RESULTS.md."""
    inputs = AculaFeatureExtractor.for_whisper(2.0)(real_waveforms(3) + real_waveforms(1), sampling_rate=16000)
    encoders = {}
    for alignment_weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = AculaForPreTraining.from_audio_backbone(str(tiny_whisper_dir), window_seconds=2.0, teacher_hidden_size=12,
                                                        projection_dim=8, projection_hidden_size=16,
                                                        alignment_loss_weight=alignment_weight)
        start = {k: v.clone() for k, v in model.acula.state_dict().items()}
        peft_model = apply_lora(model, r=4)
        optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(3):
            peft_model(**inputs, teacher_embeds=torch.randn(4, 12, generator=torch.Generator().manual_seed(1))).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        merged = peft_model.merge_and_unload().acula.state_dict()
        encoders[alignment_weight] = all(torch.equal(merged[k], start[k]) for k in start)
    assert encoders == {0.0: True, 1.0: False}
