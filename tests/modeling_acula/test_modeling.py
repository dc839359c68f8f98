"""AculaConfig and the models: shapes, the reference pooling, losses wiring, foreign backbones, Trainer."""

import pytest
import torch
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    Trainer,
    TrainingArguments,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
)

from modeling_acula import (
    PRESETS,
    AculaConfig,
    AculaForAudioClassification,
    AculaForPreTraining,
    AculaModel,
)
from modeling_acula.configuration_acula import ALIGNMENT_LOSS_KINDS
from modeling_acula.losses import ALIGNMENT_LOSSES

from tests.testing_utils import spectrograms, tiny_config


# --- configuration -------------------------------------------------------------------------------------------


def test_default_config_is_opera_gt():
    config = AculaConfig()
    assert config.spectrogram_size == [256, 64] and config.patch_size == [4, 4]
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert config.mlp_ratio == 4.0 and config.qkv_bias and config.layer_norm_eps == 1e-6
    assert config.grid_size == (64, 16) and config.num_patches == 1024
    assert config.mask_ratio == 0.7
    assert (config.projection_dim, config.projection_hidden_size, config.projection_dropout) == (512, 1024, 0.2)


def test_loss_names_agree_with_losses_module():
    assert set(ALIGNMENT_LOSS_KINDS) == set(ALIGNMENT_LOSSES)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"patch_size": [5, 4]}, "must divide spectrogram_size"),
        ({"hidden_size": 100, "num_attention_heads": 6}, "multiple of num_attention_heads"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"alignment_loss": "cosine"}, "alignment_loss must be one of"),
        ({"teacher_pooling": "max"}, "teacher_pooling"),
        ({"patch_size": [4, 4, 4]}, "pair of ints"),
    ],
)
def test_inconsistent_config_raises(overrides, message):
    with pytest.raises(ValueError, match=message):
        AculaConfig(**overrides)


def test_teacher_hidden_size_mismatch_is_named():
    config = AculaConfig()  # the released code's text head expected 2048 for MedGemma's 2560: we check it
    with pytest.raises(ValueError, match="has hidden size 2048.*teacher_hidden_size=2560"):
        config.check_teacher_hidden_size(2048)
    config.check_teacher_hidden_size(2560)


def test_foreign_backbone_refuses_masked_audio_modeling():
    with pytest.raises(ValueError, match="Masked-audio modeling needs the native ViT"):
        AculaConfig(audio_backbone_config={"model_type": "wav2vec2"})


def test_presets_and_round_trip(tmp_path):
    assert set(PRESETS) == {"opera-gt", "cpu-small"}
    small = AculaConfig.from_preset("cpu-small", num_labels=3)
    small.save_pretrained(tmp_path)
    loaded = AculaConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == small.to_dict()
    assert loaded.patch_size == [16, 16] and loaded.teacher_hidden_size == 384
    with pytest.raises(ValueError, match="Unknown preset"):
        AculaConfig.from_preset("vit-huge")


def test_preset_parameter_counts():
    """The OPERA-GT encoder is a ViT-Small: about 21.7M parameters (of which 0.39M fixed positions)."""
    opera = AculaModel(AculaConfig.from_preset("opera-gt"))
    assert sum(p.numel() for p in opera.parameters()) == 21_694_848
    trainable = sum(p.numel() for p in opera.parameters() if p.requires_grad)
    assert trainable == 21_694_848 - 1025 * 384
    small = AculaModel(AculaConfig.from_preset("cpu-small"))
    assert sum(p.numel() for p in small.parameters()) < 3_000_000


# --- encoder -------------------------------------------------------------------------------------------------


def _layer_norm_by_hand(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight + norm.bias


def _reference_vit_embedding(model: AculaModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's ViT written out from the model's weights alone (explicit patch slicing, attention by hand, GELU):
    returns (last block output with CLS first, embedding = LayerNorm of the mean of the patch tokens)."""
    config = model.config
    assert config.hidden_act == "gelu" and config.qkv_bias
    pt, pf = config.patch_size
    n_t, n_f = config.grid_size
    embeddings = model.embeddings
    kernel = embeddings.patch_embeddings.projection.weight.reshape(config.hidden_size, -1)
    patches = torch.stack([x[:, 0, t * pt : (t + 1) * pt, f * pf : (f + 1) * pf].reshape(x.shape[0], -1)
                           for t in range(n_t) for f in range(n_f)], dim=1)  # time-major: index t * n_f + f
    tokens = patches @ kernel.T + embeddings.patch_embeddings.projection.bias + embeddings.position_embeddings[:, 1:]
    cls = (embeddings.cls_token + embeddings.position_embeddings[:, :1]).expand(x.shape[0], -1, -1)
    hidden = torch.cat([cls, tokens], dim=1)
    heads = config.num_attention_heads
    for block in model.encoder.layer:
        attention = block.attention
        normed = _layer_norm_by_hand(hidden, block.layernorm_before)

        def split(linear, normed=normed):
            return linear(normed).unflatten(-1, (heads, -1)).transpose(1, 2)

        q, k, v = split(attention.q_proj), split(attention.k_proj), split(attention.v_proj)
        weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        hidden = hidden + attention.o_proj((weights @ v).transpose(1, 2).flatten(2))
        mlp = block.mlp
        hidden = hidden + mlp.fc2(torch.nn.functional.gelu(mlp.fc1(_layer_norm_by_hand(hidden, block.layernorm_after))))
    return hidden, _layer_norm_by_hand(hidden[:, 1:].mean(dim=1), model.layernorm)


def test_encoder_shapes_and_reference_pooling():
    model = AculaModel(tiny_config()).eval()
    with torch.no_grad():  # a CLS token far from the patch tokens: pooling it in would show
        model.embeddings.cls_token.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(2))
    x = spectrograms(3)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        last, expected = _reference_vit_embedding(model, x)
    assert out.last_hidden_state.shape == (3, 1 + 64, 32)
    assert out.pooler_output.shape == (3, 32)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.last_hidden_state, last, atol=1e-5, rtol=1e-4)
    # the reference embedding: mean of the patch tokens, CLS excluded, then the final LayerNorm
    torch.testing.assert_close(out.pooler_output, expected, atol=1e-5, rtol=1e-4)
    with_cls = _layer_norm_by_hand(last.mean(dim=1), model.layernorm)
    assert not torch.allclose(out.pooler_output, with_cls, atol=1e-3)
    # (batch, time, mel) is accepted too
    torch.testing.assert_close(model(x[:, 0]).pooler_output, out.pooler_output)


def test_encoder_embedding_does_not_depend_on_batch_composition():
    model = AculaModel(tiny_config()).eval()
    x = spectrograms(4)
    with torch.no_grad():
        batched = model(x).pooler_output
        single = torch.cat([model(x[i : i + 1]).pooler_output for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_wrong_input_shape_is_a_clear_error():
    model = AculaModel(tiny_config())
    with pytest.raises(ValueError, match=r"input_values must have shape \(batch, 1, 256, 64\)"):
        model(torch.rand(2, 1, 128, 64))


def test_positions_are_fixed_and_cls_is_learned():
    model = AculaModel(tiny_config())
    assert not model.embeddings.position_embeddings.requires_grad
    assert model.embeddings.cls_token.requires_grad
    assert model.embeddings.position_embeddings[0, 0].abs().sum() == 0  # CLS row of the sine-cosine table


# --- pre-training --------------------------------------------------------------------------------------------


def test_pretraining_losses_and_gradients():
    config = tiny_config(alignment_loss_weight=0.5, mam_loss_weight=2.0)
    model = AculaForPreTraining(config)
    x, teacher = spectrograms(6), torch.randn(6, 12)
    out = model(x, teacher_embeds=teacher)
    assert out.audio_embeds.shape == (6, 8) and out.text_embeds.shape == (6, 8)
    torch.testing.assert_close(out.loss, 0.5 * out.alignment_loss + 2.0 * out.mam_loss)
    # 70 % of the 64 patches are masked
    assert out.mask.shape == (6, 64) and torch.all(out.mask.sum(dim=1) == 45)
    out.loss.backward()
    for name in ("acula.embeddings.patch_embeddings.projection.weight", "mam_decoder.decoder_pred.weight",
                 "audio_projection.fc1.weight", "text_projection.fc2.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_mask_ratio_truncates_the_number_of_kept_patches_as_released():
    # 1,024 patches (4 x 4 on 256 x 64) at ratio 0.8: int(1024 * 0.2) = int(204.79999...) = 204 kept, 820 masked
    model = AculaModel(tiny_config(patch_size=[4, 4])).eval()
    with torch.no_grad():
        latent, mask, ids_restore = model.forward_masked(spectrograms(2), 0.8)
    assert latent.shape == (2, 1 + 204, 32)
    assert torch.all(mask.sum(dim=1) == 820) and ids_restore.shape == (2, 1024)


def test_mam_loss_counts_masked_patches_only():
    model = AculaForPreTraining(tiny_config()).eval()
    x = spectrograms(2)
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(1))
    out = model(x, noise=noise)
    # The target patch built independently of the package: patch (t, f) is x[..., 16t:16t+16, 16f:16f+16] flattened
    # row by row, at index t * 4 + f (time-major, the patch-embedding order the reconstruction is in).
    target = torch.stack([x[:, 0, 16 * t : 16 * (t + 1), 16 * f : 16 * (f + 1)].reshape(2, -1)
                          for t in range(16) for f in range(4)], dim=1)
    per_patch = (out.reconstruction - target).pow(2).mean(-1)
    masked = out.mask.bool()
    torch.testing.assert_close(out.mam_loss, per_patch[masked].mean())
    assert not torch.isclose(out.mam_loss, per_patch[~masked].mean())
    assert out.alignment_loss is None and out.text_embeds is None


def test_wrong_teacher_vector_size_is_a_clear_error():
    model = AculaForPreTraining(tiny_config())
    with pytest.raises(ValueError, match="teacher_hidden_size=12"):
        model(spectrograms(2), teacher_embeds=torch.randn(2, 2560))


@pytest.mark.parametrize("kind", ALIGNMENT_LOSS_KINDS)
def test_every_alignment_loss_trains(kind):
    model = AculaForPreTraining(tiny_config(alignment_loss=kind, use_mam=False))
    out = model(spectrograms(6), teacher_embeds=torch.randn(6, 12))
    assert torch.isfinite(out.loss) and out.mam_loss is None
    out.loss.backward()
    assert model.audio_projection.fc1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("head, params", [("mlp", 32 * 16 + 16 + 16 * 8 + 8), ("linear", 32 * 8 + 8), ("identity", 0)])
def test_the_audio_head_can_be_linear_or_none(head, params, tmp_path):
    width = 32 if head == "identity" else 8  # no head: the loss sees the encoder's 32-d embedding itself
    config = tiny_config(audio_projection=head, use_mam=False, projection_dim=width, projection_hidden_size=16)
    model = AculaForPreTraining(config)
    assert sum(p.numel() for p in model.audio_projection.parameters()) == params
    x = spectrograms(6)
    out = model(x, teacher_embeds=torch.randn(6, 12))
    assert out.audio_embeds.shape == (6, width) and torch.isfinite(out.loss)
    if head == "identity":
        torch.testing.assert_close(out.audio_embeds, model.acula(x).pooler_output)
    out.loss.backward()
    assert model.acula.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    again = AculaForPreTraining.from_pretrained(tmp_path)
    assert again.config.audio_projection == head
    torch.testing.assert_close(again.eval()(x, teacher_embeds=torch.ones(6, 12)).audio_embeds,
                               model.eval()(x, teacher_embeds=torch.ones(6, 12)).audio_embeds)


def test_an_audio_head_that_cannot_work_is_refused():
    with pytest.raises(ValueError, match="audio_projection must be one of"):
        tiny_config(audio_projection="conv")
    with pytest.raises(ValueError, match="set projection_dim=32"):
        tiny_config(audio_projection="identity", projection_dim=8)


def test_pretraining_weights_load_into_the_encoder(tmp_path):
    model = AculaForPreTraining(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    encoder = AculaModel.from_pretrained(tmp_path).eval()
    x = spectrograms(2)
    torch.testing.assert_close(encoder(x).pooler_output, model.acula(x).pooler_output)


# --- foreign backbones ---------------------------------------------------------------------------------------


def _ast_setup():
    ast = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    max_length=128, num_mel_bins=64, frequency_stride=16, time_stride=16)
    extractor = ASTFeatureExtractor(num_mel_bins=64, max_length=128)
    return ast, extractor


def _wav2vec2_setup():
    w2v = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                         num_conv_pos_embedding_groups=2, hidden_dropout=0.0, attention_dropout=0.0,
                         activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True)
    return w2v, extractor


@pytest.mark.parametrize("setup", [_ast_setup, _wav2vec2_setup], ids=["ast", "wav2vec2"])
def test_foreign_backbone_alignment_with_its_own_feature_extractor(setup):
    backbone_config, extractor = setup()
    config = tiny_config(use_mam=False, audio_backbone_config=backbone_config.to_dict(),
                         preservation_loss="feature_distillation")
    assert config.audio_embedding_size == 32
    model = AculaForPreTraining(config).train()
    # the backbone is wrapped by AculaModel, so that the encoder folder loads with AutoModel and pools for you
    assert type(model.acula).__name__ == "AculaModel"
    assert type(model.acula.backbone).__name__ in ("ASTModel", "Wav2Vec2Model")
    waves = [torch.randn(16000 * 2, generator=torch.Generator().manual_seed(i)).numpy() for i in range(4)]
    inputs = extractor(waves, sampling_rate=16000, return_tensors="pt")
    teacher = torch.randn(4, 12)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    first = model(**inputs, teacher_embeds=teacher)
    assert first.mam_loss is None
    # the frozen starting copy equals the backbone before any update
    assert first.preservation_loss.item() == pytest.approx(0.0, abs=1e-10)
    first.loss.backward()
    optimizer.step()
    second = model(**inputs, teacher_embeds=teacher)
    assert second.preservation_loss.item() > 0
    # the reference copy is neither a submodule nor saved
    assert not any("reference" in name for name in model.state_dict())


def test_classification_with_foreign_backbone():
    backbone_config, extractor = _ast_setup()
    config = tiny_config(use_mam=False, audio_backbone_config=backbone_config.to_dict(), num_labels=3)
    model = AculaForAudioClassification(config)
    inputs = extractor([torch.randn(16000).numpy()] * 2, sampling_rate=16000, return_tensors="pt")
    out = model(**inputs, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)


# --- classification with Trainer -----------------------------------------------------------------------------


class _SpectrogramDataset(torch.utils.data.Dataset):
    def __init__(self, n: int):
        generator = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n) % 2
        # class 1 is louder in the low mel bins: learnable in a few steps
        self.inputs = torch.rand(n, 1, 256, 64, generator=generator) * 0.1
        self.inputs[self.labels == 1, :, :, :16] += 0.8

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_values": self.inputs[i], "labels": self.labels[i]}


def test_classifier_trains_with_trainer(tmp_path):
    config = tiny_config(num_labels=2, id2label={0: "normal", 1: "murmur"}, label2id={"normal": 0, "murmur": 1})
    model = AculaForAudioClassification(config)
    data = _SpectrogramDataset(32)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=6, learning_rate=3e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        out = model(data.inputs, labels=data.labels)
    predictions = out.logits.argmax(-1)
    assert (predictions == data.labels).float().mean() >= 0.9
    # the loss Trainer minimised is the mean cross-entropy of the labels, by hand
    log_probabilities = out.logits.log_softmax(-1)
    torch.testing.assert_close(out.loss, -log_probabilities[torch.arange(32), data.labels].mean())


def test_foreign_backbone_from_a_pretrained_checkpoint(tmp_path):
    from transformers import ASTModel

    backbone_config, _ = _ast_setup()
    torch.manual_seed(3)
    ASTModel(backbone_config).save_pretrained(tmp_path)
    model = AculaForPreTraining.from_audio_backbone(str(tmp_path), teacher_hidden_size=12, projection_dim=8,
                                                     projection_hidden_size=16)
    assert model.config.preservation_loss == "feature_distillation" and not model.config.use_mam
    saved = ASTModel.from_pretrained(tmp_path).state_dict()
    for name, value in model.acula.backbone.state_dict().items():
        assert torch.equal(value, saved[name]), name


# --- loading, precision, padding and windows ------------------------------------------------------------------


def _position_tables(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if name.endswith("position_embeddings")}


@pytest.mark.parametrize("model_class", [AculaModel, AculaForPreTraining, AculaForAudioClassification])
def test_position_tables_stay_frozen_after_from_pretrained(tmp_path, model_class):
    source = AculaForPreTraining(tiny_config())
    with torch.no_grad():  # a checkpoint may carry its own table (converted OPERA weights): it must be loaded
        source.acula.embeddings.position_embeddings.add_(0.25)
    source.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path)
    tables = _position_tables(loaded)
    assert len(tables) == (2 if model_class is AculaForPreTraining else 1)
    assert not any(table.requires_grad for table in tables.values()), sorted(tables)
    encoder = loaded if model_class is AculaModel else loaded.acula
    torch.testing.assert_close(encoder.embeddings.position_embeddings, source.acula.embeddings.position_embeddings)
    # an optimiser over the trainable parameters (train_acula.py --full_finetune) leaves the tables alone
    assert all(p.requires_grad for name, p in loaded.named_parameters() if name not in tables)
    # with output_loading_info the model is frozen too
    again, info = model_class.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(table.requires_grad for table in _position_tables(again).values())


def test_bfloat16_model_takes_the_float32_features(tmp_path):
    AculaForPreTraining(tiny_config()).save_pretrained(tmp_path)
    model = AculaForPreTraining.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    x = spectrograms(4)  # float32, as AculaFeatureExtractor returns it
    out = model(x, teacher_embeds=torch.randn(4, 12))
    assert out.pooler_output.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    encoder = AculaModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    reference = AculaModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(encoder(x).pooler_output.float(), reference(x).pooler_output, atol=0.1, rtol=0.05)


def _wav2vec2_layer_norm_config() -> Wav2Vec2Config:
    """A wav2vec2 whose feature encoder normalises per frame, so padding does not leak into real frames."""
    w2v, _ = _wav2vec2_setup()
    w2v.feat_extract_norm, w2v.do_stable_layer_norm = "layer", True
    return w2v


@pytest.mark.parametrize("model_class", [AculaForPreTraining, AculaForAudioClassification])
def test_wav2vec2_pooling_leaves_out_padded_frames(model_class):
    config = tiny_config(use_mam=False, audio_backbone_config=_wav2vec2_layer_norm_config().to_dict(), num_labels=2)
    torch.manual_seed(0)
    model = model_class(config).eval()
    short = torch.randn(1, 4000, generator=torch.Generator().manual_seed(0))
    padded = torch.cat([short, torch.zeros(1, 12000)], dim=1)
    mask = torch.cat([torch.ones(1, 4000), torch.zeros(1, 12000)], dim=1).long()
    key = "pooler_output" if model_class is AculaForPreTraining else "logits"
    with torch.no_grad():
        alone = model(short, attention_mask=torch.ones(1, 4000, dtype=torch.long))[key]
        with_padding = model(padded, attention_mask=mask)[key]
    torch.testing.assert_close(with_padding, alone, atol=1e-5, rtol=1e-5)


def test_pooling_refuses_a_mask_it_cannot_map_to_frames():
    from transformers.modeling_outputs import BaseModelOutput

    from modeling_acula.modeling_acula import pool_audio_encoder_output

    outputs = BaseModelOutput(last_hidden_state=torch.randn(2, 5, 3))
    frame_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    expected = torch.stack([outputs.last_hidden_state[0, :3].mean(0), outputs.last_hidden_state[1].mean(0)])
    torch.testing.assert_close(pool_audio_encoder_output(outputs, frame_mask), expected)
    with pytest.raises(ValueError, match="cannot map a sample-level mask"):
        pool_audio_encoder_output(outputs, torch.ones(2, 400, dtype=torch.long))


def test_classifier_averages_window_logits_per_recording():
    model = AculaForAudioClassification(tiny_config(num_labels=3)).eval()
    windows = spectrograms(5)
    recording_index = torch.tensor([0, 0, 1, 1, 1])
    with torch.no_grad():
        out = model(windows, recording_index=recording_index, labels=torch.tensor([2, 0]))
        per_window = model(windows).logits
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
    torch.testing.assert_close(out.logits, torch.stack([per_window[:2].mean(0), per_window[2:].mean(0)]))
    with pytest.raises(ValueError, match="recording_index has 2 entries for 5 windows"):
        model(windows, recording_index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="without gaps"):
        model(windows, recording_index=torch.tensor([0, 0, 2, 2, 2]))
