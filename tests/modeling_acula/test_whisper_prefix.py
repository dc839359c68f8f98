"""A Whisper encoder in two parts: `AculaModel.forward_prefix` (the frozen bottom, computed once per window by the
training app's prefix cache) and `forward_from_layer` (the layers above), and `AculaForPreTraining` fed with cached
prefix states and preservation targets."""

import pytest
import torch

from modeling_acula import AculaForPreTraining, AculaModel, apply_lora

from tests.testing_utils import spectrograms, tiny_config, tiny_whisper_backbone_config


def whisper_inputs(config, batch: int = 3) -> torch.Tensor:
    """Spectrograms of the window, one of them padded after half its frames (the floor value), as a short clip
    is: the frame mask then differs between rows."""
    whisper = config.audio_backbone_config
    inputs = spectrograms(batch, 0, (2 * whisper.max_source_positions, whisper.num_mel_bins))
    inputs[1, :, whisper.max_source_positions :] = 0.0
    return inputs


@pytest.mark.parametrize("num_layers", [0, 1, 2, 3])
def test_prefix_then_the_layers_above_equal_the_whole_encoder(num_layers):
    torch.manual_seed(0)
    config = tiny_whisper_backbone_config(audio_backbone_config={
        **tiny_whisper_backbone_config().audio_backbone_config.to_dict(), "encoder_layers": 3})
    encoder = AculaModel(config).eval()
    inputs = whisper_inputs(config)
    with torch.no_grad():
        whole = encoder(inputs)
        hidden, frame_mask = encoder.forward_prefix(inputs, num_layers)
        split = encoder.forward_from_layer(hidden, num_layers, frame_mask)
    assert hidden.shape == (3, 100, 32) and frame_mask.shape == (3, 100)
    assert frame_mask.sum(1).tolist() == [100, 50, 100]  # the padded row pools its audio frames only
    torch.testing.assert_close(split.last_hidden_state, whole.last_hidden_state, atol=0, rtol=0)
    torch.testing.assert_close(split.pooler_output, whole.pooler_output, atol=0, rtol=0)
    if 0 < num_layers < 3:  # the encoder's own hidden state after `num_layers` layers (transformers puts the
        # final layer-normed output in the last place)
        reference = encoder.backbone(inputs[:, 0].transpose(1, 2), output_hidden_states=True).hidden_states
        torch.testing.assert_close(hidden, reference[num_layers], atol=1e-6, rtol=1e-6)


def test_prefix_api_is_whisper_only_and_checks_its_arguments():
    native = AculaModel(tiny_config())
    with pytest.raises(ValueError, match=r"forward_prefix splits a Whisper backbone only; this model has the native"):
        native.forward_prefix(spectrograms(1), 1)
    with pytest.raises(ValueError, match=r"forward_from_layer splits a Whisper backbone only"):
        native.forward_from_layer(torch.zeros(1, 5, 32), 1, torch.ones(1, 5))
    config = tiny_whisper_backbone_config()
    encoder = AculaModel(config)
    with pytest.raises(ValueError, match=r"layer index must be an int in 0\.\.2 .* got 3"):
        encoder.forward_prefix(whisper_inputs(config), 3)
    with pytest.raises(ValueError, match=r"hidden_states must have shape \(batch, 100, 32\)"):
        encoder.forward_from_layer(torch.zeros(2, 99, 32), 1, torch.ones(2, 99))
    with pytest.raises(ValueError, match=r"audio_frame_mask must have shape \(2, 100\)"):
        encoder.forward_from_layer(torch.zeros(2, 100, 32), 1, torch.ones(2, 50))


def test_pretraining_forward_from_cached_states_equals_the_spectrogram_forward():
    """Losses and gradients of a LoRA model on its top layer: spectrograms (with the reference copy's forward for the
    preservation term) vs. cached prefix states with a cached preservation target, in training mode with LoRA and
    projection dropout drawn from the same seed."""
    torch.manual_seed(0)
    config = tiny_whisper_backbone_config(preservation_loss="feature_distillation", projection_dropout=0.3)
    model = AculaForPreTraining(config)
    inputs = whisper_inputs(config, batch=4)
    teacher = torch.randn(4, config.teacher_hidden_size, generator=torch.Generator().manual_seed(1))
    model.snapshot_reference_encoder()  # the start, before adapters
    with torch.no_grad():
        hidden, frame_mask = model.acula.eval().forward_prefix(inputs, 1)
        target = model.acula.forward_from_layer(hidden, 1, frame_mask).pooler_output
    peft = apply_lora(model, r=4, lora_dropout=0.2, top_layers=1)
    peft.get_base_model().disable_input_require_grads()
    peft.train()
    # Move the adapters off their zero start, so that the preservation term and its gradient are not zero.
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))

    def loss_and_gradients(**batch):
        peft.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        out = peft(teacher_embeds=teacher, **batch)
        out.loss.backward()
        grads = {name: p.grad.clone() for name, p in peft.named_parameters() if p.grad is not None}
        return out, grads

    full, expected = loss_and_gradients(input_values=inputs)
    cached, got = loss_and_gradients(prefix_hidden_states=hidden, prefix_layers=1, audio_frame_mask=frame_mask.float(),
                                     preservation_target=target)
    assert full.preservation_loss.item() > 1e-6  # the check below compares a real term
    for name in ("loss", "alignment_loss", "preservation_loss"):
        torch.testing.assert_close(getattr(cached, name), getattr(full, name), atol=1e-5, rtol=1e-5, msg=name)
    assert set(got) == set(expected) and any("lora_A" in name for name in got)
    assert not any(".layers.0." in name for name in got)  # nothing below the adapted layer learns
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)
    # without a cached target the reference copy continues from the same states: the same term
    continued, _ = loss_and_gradients(prefix_hidden_states=hidden, prefix_layers=1, audio_frame_mask=frame_mask)
    torch.testing.assert_close(continued.preservation_loss, full.preservation_loss, atol=1e-6, rtol=1e-5)


def test_pretraining_forward_refuses_two_inputs():
    config = tiny_whisper_backbone_config()
    model = AculaForPreTraining(config)
    inputs = whisper_inputs(config, batch=2)
    hidden, frame_mask = model.acula.forward_prefix(inputs, 1)
    with pytest.raises(ValueError, match="either input_values, or prefix_hidden_states"):
        model(inputs, prefix_hidden_states=hidden, prefix_layers=1, audio_frame_mask=frame_mask)
    with pytest.raises(ValueError, match="either input_values, or prefix_hidden_states"):
        model(prefix_hidden_states=hidden, audio_frame_mask=frame_mask)
    with pytest.raises(ValueError, match=r"preservation_target must have shape \(2, 32\)"):
        AculaForPreTraining(tiny_whisper_backbone_config(preservation_loss="feature_distillation")).train()(
            prefix_hidden_states=hidden, prefix_layers=1, audio_frame_mask=frame_mask,
            preservation_target=torch.zeros(2, 8))
