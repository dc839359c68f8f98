"""LoRA on the encoder: what trains, adapter save/load, and merge_and_unload."""

import copy
import re

import pytest
import torch
from peft import PeftModel

from modeling_acula import AculaForAudioClassification, AculaForPreTraining, AculaModel, apply_lora
from modeling_acula.lora import encoder_target_modules

from tests.testing_utils import spectrograms, tiny_config


def _randomise_adapters(model: torch.nn.Module) -> None:
    """peft initialises lora_B at zero (an identity adapter); make the adapters do something."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def test_target_regex_selects_encoder_attention_only():
    pattern = encoder_target_modules()
    assert re.fullmatch(pattern, "acula.encoder.layer.3.attention.q_proj")
    assert re.fullmatch(pattern, "encoder.layer.0.attention.o_proj")
    assert not re.fullmatch(pattern, "mam_decoder.layers.0.attention.q_proj")
    assert not re.fullmatch(pattern, "acula.encoder.layer.0.mlp.fc1")
    assert re.fullmatch(encoder_target_modules(include_mlp=True), "acula.encoder.layer.0.mlp.fc1")


def test_only_adapters_and_heads_get_gradients():
    model = apply_lora(AculaForPreTraining(tiny_config(alignment_loss="infonce")))
    out = model(input_values=spectrograms(4), teacher_embeds=torch.randn(4, 12))
    out.loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert with_grad <= trainable
    allowed = ("lora_A", "lora_B", "audio_projection", "text_projection", "mam_decoder", "alignment_head")
    assert all(any(key in name for key in allowed) for name in trainable), sorted(trainable)
    # peft starts lora_B at zero, so at the first step only lora_B receives a gradient
    assert any("lora_B" in name for name in with_grad)
    assert any("alignment_head" in name and "logit_scale" in name for name in with_grad)
    # the frozen base encoder gets nothing, and the sine-cosine tables stay fixed
    assert not any("base_layer" in name or "patch_embeddings" in name for name in trainable)
    assert not any("position_embeddings" in name for name in trainable)


def test_mlp_adapters_are_optional():
    plain = apply_lora(AculaModel(tiny_config()))
    with_mlp = apply_lora(AculaModel(tiny_config()), include_mlp=True)
    assert not any("fc1.lora_A" in n for n, _ in plain.named_parameters())
    assert any("fc1.lora_A" in n for n, _ in with_mlp.named_parameters())


def test_adapter_save_load_and_merge(tmp_path):
    torch.manual_seed(0)
    base = AculaForPreTraining(tiny_config())
    base.save_pretrained(tmp_path / "base")
    model = apply_lora(base)
    _randomise_adapters(model)
    model.eval()
    x = spectrograms(3)
    adapted = model.base_model.model.acula(x).pooler_output.detach()

    model.save_pretrained(tmp_path / "adapter")
    saved = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved

    reloaded = PeftModel.from_pretrained(AculaForPreTraining.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    reloaded.eval()
    torch.testing.assert_close(reloaded.base_model.model.acula(x).pooler_output, adapted)
    # the trained heads are part of the adapter
    torch.testing.assert_close(reloaded(input_values=x).audio_embeds, model(input_values=x).audio_embeds)

    merged = model.merge_and_unload()
    assert type(merged) is AculaForPreTraining and type(merged.acula) is AculaModel
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(merged.acula(x).pooler_output, adapted, atol=1e-5, rtol=1e-5)
    # the adapter really changed the embedding (so the equality above means something)
    assert not torch.allclose(AculaForPreTraining.from_pretrained(tmp_path / "base").acula(x).pooler_output, adapted)


def test_lora_fine_tuning_of_the_classifier():
    model = apply_lora(AculaForAudioClassification(tiny_config(num_labels=3)))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("classifier" in name for name in trainable)
    assert all("lora_" in name or "classifier" in name for name in trainable)
    _randomise_adapters(model)  # non-zero lora_B, so that lora_A receives a gradient too
    out = model(input_values=spectrograms(2), labels=torch.tensor([0, 2]))
    out.loss.backward()
    gradients = {name: p.grad for name, p in model.named_parameters()}
    for name in trainable:  # every adapter and the classifier learn
        assert gradients[name] is not None and gradients[name].abs().sum() > 0, name
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert any("base_layer" in name for name in frozen) and any("patch_embeddings" in name for name in frozen)
    assert all(gradients[name] is None for name in frozen), [name for name in frozen if gradients[name] is not None]


def _adapter_gradients(model: torch.nn.Module, x: torch.Tensor, teacher: torch.Tensor, noise: torch.Tensor) -> dict:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the same non-zero adapters in every model compared
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model.train()
    model.zero_grad()
    model(input_values=x, teacher_embeds=teacher, noise=noise).loss.backward()
    return {name: p.grad for name, p in model.named_parameters() if "lora_" in name}


@pytest.mark.parametrize("checkpointing_first", [False, True], ids=["lora-then-gc", "gc-then-lora"])
def test_adapters_get_gradients_under_reentrant_checkpointing(checkpointing_first):
    torch.manual_seed(0)
    base = AculaForPreTraining(tiny_config())
    x, teacher, noise = spectrograms(4), torch.randn(4, 12), torch.rand(4, base.config.num_patches)
    reference = apply_lora(copy.deepcopy(base), lora_dropout=0.0)
    expected = _adapter_gradients(reference, x, teacher, noise)

    model = copy.deepcopy(base)
    if checkpointing_first:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model = apply_lora(model, lora_dropout=0.0)
    if not checkpointing_first:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    gradients = _adapter_gradients(model, x, teacher, noise)
    assert gradients.keys() == expected.keys() and any("lora_A" in name for name in gradients)
    missing = sorted(name for name, grad in gradients.items() if grad is None)
    assert not missing, missing
    for name, grad in gradients.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-5)
