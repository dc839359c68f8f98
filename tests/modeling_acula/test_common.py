"""The common battery over every acula model class, on the native tiny config and on a tiny Whisper backbone:
save/load, tuple outputs, hidden states, gradient checkpointing, bf16, batch-size independence."""

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from modeling_acula import AculaForAudioClassification, AculaForPreTraining, AculaModel

from tests.testing_utils import AculaModelTester

MODEL_CLASSES = (AculaModel, AculaForPreTraining, AculaForAudioClassification)
CASES = [
    pytest.param(model_class, backbone, id=f"{model_class.__name__}-{backbone}")
    for model_class in MODEL_CLASSES
    for backbone in AculaModelTester.BACKBONES
]
# The tensors of each class's output that describe one row of the batch (the losses are batch-level).
ROW_OUTPUTS = {
    AculaModel: ("last_hidden_state", "pooler_output"),
    AculaForPreTraining: ("audio_embeds", "text_embeds", "pooler_output", "reconstruction", "mask"),
    AculaForAudioClassification: ("logits",),
}


def prepare_for_class(model_class, backbone: str, batch_size: int = 4, **overrides) -> tuple:
    """A tiny config (with `overrides`) and the inputs `model_class` takes: spectrograms, plus teacher vectors and
    a fixed masking noise for pre-training, labels for classification."""
    tester = AculaModelTester(backbone, batch_size=batch_size)
    config, inputs = tester.prepare_config_and_inputs(**overrides)
    generator = torch.Generator().manual_seed(1)
    if model_class is AculaForPreTraining:
        inputs["teacher_embeds"] = torch.randn(batch_size, config.teacher_hidden_size, generator=generator)
        if config.use_mam:
            inputs["noise"] = torch.rand(batch_size, config.num_patches, generator=generator)
    elif model_class is AculaForAudioClassification:
        inputs["labels"] = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
    return config, inputs


def build(model_class, config) -> torch.nn.Module:
    torch.manual_seed(0)
    return model_class(config).eval()


def tensors_of(output) -> dict[str, torch.Tensor]:
    """The tensor fields of a ModelOutput that are set."""
    return {name: value for name, value in output.items() if isinstance(value, torch.Tensor)}


def scalar_loss(model_class, output) -> torch.Tensor:
    """The loss of the heads; for the bare encoder, a scalar of its embeddings."""
    return output.pooler_output.pow(2).sum() if model_class is AculaModel else output.loss


def assert_outputs_close(actual: dict, expected: dict, **tolerances) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], msg=lambda m, name=name: f"{name}: {m}", **tolerances)


@pytest.mark.parametrize(("model_class", "backbone"), CASES)
def test_save_and_load_give_the_same_outputs(model_class, backbone, tmp_path):
    config, inputs = prepare_for_class(model_class, backbone)
    model = build(model_class, config)
    with torch.no_grad():
        expected = tensors_of(model(**inputs))
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        actual = tensors_of(loaded(**inputs))
    assert_outputs_close(actual, expected, atol=0, rtol=0)


@pytest.mark.parametrize(("model_class", "backbone"), CASES)
def test_return_dict_false_gives_the_same_values_as_a_tuple(model_class, backbone):
    config, inputs = prepare_for_class(model_class, backbone)
    model = build(model_class, config)
    with torch.no_grad():
        as_dict = model(**inputs, return_dict=True)
        as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    expected = as_dict.to_tuple()
    assert len(as_tuple) == len(expected) == len(tensors_of(as_dict))
    for actual, wanted in zip(as_tuple, expected):
        torch.testing.assert_close(actual, wanted, atol=0, rtol=0)


@pytest.mark.parametrize(("model_class", "backbone"), CASES)
def test_encoder_returns_one_hidden_state_per_layer_plus_the_embeddings(model_class, backbone):
    config, inputs = prepare_for_class(model_class, backbone)
    encoder = build(model_class, config).base_model
    layers = config.num_hidden_layers if config.uses_native_encoder else config.audio_backbone_config.encoder_layers
    with torch.no_grad():
        output = encoder(inputs["input_values"], output_hidden_states=True)
        plain = encoder(inputs["input_values"])
    assert len(output.hidden_states) == layers + 1
    assert plain.hidden_states is None
    torch.testing.assert_close(output.hidden_states[-1], output.last_hidden_state, atol=0, rtol=0)


def count_layer_calls(model: torch.nn.Module) -> list[int]:
    """A counter of the forward calls of the children of every checkpointable layer: transformers checkpoints a
    layer's `forward` (its own hooks stay outside), so a recomputation in backward shows in its children."""
    calls = [0]
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            for child in module.children():
                child.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize(("model_class", "backbone"), CASES)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(model_class, backbone):
    config, inputs = prepare_for_class(model_class, backbone)
    results = []
    for checkpointing in (False, True):
        model = build(model_class, config).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        calls = count_layer_calls(model)
        loss = scalar_loss(model_class, model(**inputs))
        forward_calls = calls[0]
        loss.backward()
        # Checkpointed layers run (part of) their forward again in backward; plain ones do not.
        assert forward_calls > 0 and (calls[0] > forward_calls if checkpointing else calls[0] == forward_calls)
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss, grads), (loss_checkpointed, grads_checkpointed) = results
    torch.testing.assert_close(loss_checkpointed, loss, atol=0, rtol=0)
    assert grads and grads_checkpointed.keys() == grads.keys()
    assert_outputs_close(grads_checkpointed, grads, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("model_class", "backbone"), CASES)
def test_bf16_forward_is_finite_and_close_to_fp32(model_class, backbone):
    # InfoNCE: the debiased CKA of 4 rows of a random model (near-identical embeddings) measures their tiny
    # differences, which bf16 rounding changes entirely; the losses' own upcasting is tested in test_losses.py.
    config, inputs = prepare_for_class(model_class, backbone, alignment_loss="infonce")
    model = build(model_class, config)
    with torch.no_grad():
        expected = tensors_of(model(**inputs))
        model.to(torch.bfloat16)
        half_inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
        actual = tensors_of(model(**half_inputs))
    assert actual.keys() == expected.keys()
    for name, value in actual.items():
        assert torch.isfinite(value.float()).all(), name
    for name in ROW_OUTPUTS[model_class]:
        if name in actual and name != "mask":  # the mask is 0/1 and stays float32
            assert actual[name].dtype == torch.bfloat16, (name, actual[name].dtype)
    assert_outputs_close({k: v.float() for k, v in actual.items()}, expected, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(("model_class", "backbone"), CASES)
def test_each_row_of_a_batch_equals_that_row_alone(model_class, backbone):
    config, inputs = prepare_for_class(model_class, backbone)
    model = build(model_class, config)
    names = ROW_OUTPUTS[model_class]
    # The alignment loss is batch-level (CKA needs 4 rows); the per-row outputs are computed without it.
    extra = {"compute_alignment_loss": False} if model_class is AculaForPreTraining else {}
    with torch.no_grad():
        batched = model(**inputs, **extra)
        for row in range(inputs["input_values"].shape[0]):
            alone = model(**{key: value[row : row + 1] for key, value in inputs.items()}, **extra)
            for name in names:
                if getattr(batched, name) is None:
                    assert getattr(alone, name) is None, name
                    continue
                torch.testing.assert_close(getattr(alone, name)[0], getattr(batched, name)[row], atol=1e-5, rtol=1e-4,
                                           msg=lambda m, name=name: f"{name}: {m}")
