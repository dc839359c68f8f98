"""Weight decay: on weight matrices only, never on biases, norms or the InfoNCE temperature."""

import torch

from modeling_acula import AculaForPreTraining, apply_lora
from acula_train.optimization import decay_parameter_names, weight_decay_parameter_groups

from tests.testing_utils import tiny_config


def _group_names(model: torch.nn.Module, groups: list[dict]) -> tuple[set[str], set[str]]:
    names = {id(p): name for name, p in model.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in group["params"]} for group in groups)
    return decay, no_decay


def test_biases_norms_and_logit_scale_are_not_decayed():
    model = AculaForPreTraining(tiny_config(alignment_loss="infonce"))
    groups = weight_decay_parameter_groups(model, 0.01)
    assert [group["weight_decay"] for group in groups] == [0.01, 0.0]
    decay, no_decay = _group_names(model, groups)
    for name in ("alignment_head.logit_scale", "audio_projection.fc1.bias", "acula.layernorm.weight",
                 "acula.layernorm.bias", "acula.encoder.layer.0.layernorm_before.weight",
                 "acula.encoder.layer.1.attention.q_proj.bias", "mam_decoder.decoder_norm.weight"):
        assert name in no_decay, name
    for name in ("audio_projection.fc1.weight", "text_projection.fc2.weight",
                 "acula.encoder.layer.0.attention.q_proj.weight", "acula.encoder.layer.1.mlp.fc2.weight",
                 "acula.embeddings.patch_embeddings.projection.weight", "mam_decoder.decoder_pred.weight"):
        assert name in decay, name
    assert all(name.endswith("weight") or name.endswith("token") for name in decay), sorted(decay)
    # every trainable parameter in exactly one group; the frozen sine-cosine tables in none
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay
    assert "acula.embeddings.position_embeddings" not in trainable


def test_an_adamw_step_leaves_logit_scale_alone_but_shrinks_weights():
    model = AculaForPreTraining(tiny_config(alignment_loss="infonce"))
    logit_scale = model.alignment_head.logit_scale
    weight = model.audio_projection.fc1.weight
    before = {"logit_scale": logit_scale.detach().clone(), "weight": weight.detach().clone()}
    assert before["logit_scale"].abs().item() > 1  # log(1 / 0.07): decay would visibly pull it towards 0

    def step(optimizer):
        for parameter in model.parameters():  # zero gradients: only weight decay moves a parameter
            parameter.grad = torch.zeros_like(parameter) if parameter.requires_grad else None
        optimizer.step()

    step(torch.optim.AdamW(weight_decay_parameter_groups(model, 0.5), lr=0.1))
    torch.testing.assert_close(logit_scale.detach(), before["logit_scale"], rtol=0, atol=0)
    torch.testing.assert_close(weight.detach(), before["weight"] * (1 - 0.1 * 0.5))
    # the single-group optimizer acula used before would have shrunk the temperature parameter too
    step(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.5))
    assert not torch.equal(logit_scale.detach(), before["logit_scale"])


def test_lora_adapters_are_decayed_and_frozen_weights_left_out():
    model = apply_lora(AculaForPreTraining(tiny_config(alignment_loss="infonce")))
    decay, no_decay = _group_names(model, weight_decay_parameter_groups(model, 0.01))
    assert any("lora_A" in name for name in decay) and any("lora_B" in name for name in decay)
    # peft keeps a trainable copy of the heads (`modules_to_save.default`) beside the frozen original
    assert any(name.endswith("alignment_head.modules_to_save.default.logit_scale") for name in no_decay)
    assert not any("base_layer" in name for name in decay | no_decay)
    # the names rule alone (frozen parameters included) follows transformers' `Trainer`
    names = decay_parameter_names(model)
    assert any(name.endswith("q_proj.base_layer.weight") for name in names)
    assert not any(name.endswith(("bias", "logit_scale")) or "layernorm" in name for name in names)
