"""LoRA adapters (peft) on the AcuLa encoder's attention and, optionally, MLP linears."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

# peft is imported when an adapter is built, so `import modeling_acula` stays light for users who only embed audio.
if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("fc1", "fc2")
# transformers' Whisper encoder layers: `layers.N.self_attn.{q,k,v,out}_proj` and `layers.N.{fc1,fc2}`.
WHISPER_ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "out_proj")
# Trained in full beside the adapters, by model class.
HEADS_TO_TRAIN = {
    "AculaForPreTraining": ("audio_projection", "text_projection", "mam_decoder", "alignment_head"),
    "AculaForAudioClassification": ("classifier",),
    "AculaModel": (),
}


def encoder_target_modules(include_mlp: bool = False) -> str:
    """Regular expression (peft matches it against full module names) selecting the native encoder's linears.

    It matches `encoder.layer.N.attention.q_proj` with or without a leading `acula.`, and never the masked-audio
    decoder's blocks (`mam_decoder.layers.N...`), which train in full.

    Args:
        include_mlp (`bool`, *optional*, defaults to `False`): also adapt `mlp.fc1` and `mlp.fc2`.
    """
    attention = rf"attention\.({'|'.join(ATTENTION_LINEARS)})"
    if include_mlp:
        return rf"(.*\.)?encoder\.layer\.\d+\.({attention}|mlp\.({'|'.join(MLP_LINEARS)}))"
    return rf"(.*\.)?encoder\.layer\.\d+\.{attention}"


def whisper_target_modules(include_mlp: bool = False, layers: Sequence[int] | None = None) -> str:
    """Regular expression selecting the linears of a Whisper encoder wrapped by [`AculaModel`] (`backbone.layers.N`),
    with or without a leading `acula.`.

    Args:
        include_mlp (`bool`, *optional*, defaults to `False`): also adapt `fc1` and `fc2`.
        layers (`Sequence[int]`, *optional*): adapt only these layers (default: all). Adapting only the top layers
            also saves the backward pass through the layers below them.
    """
    attention = rf"self_attn\.({'|'.join(WHISPER_ATTENTION_LINEARS)})"
    index = r"\d+" if layers is None else "(" + "|".join(str(int(i)) for i in layers) + ")"
    if include_mlp:
        return rf"(.*\.)?backbone\.layers\.{index}\.({attention}|{'|'.join(MLP_LINEARS)})"
    return rf"(.*\.)?backbone\.layers\.{index}\.{attention}"


def lora_config_for(
    model: nn.Module,
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    include_mlp: bool = False,
    top_layers: int | None = None,
) -> LoraConfig:
    """The `LoraConfig` acula uses for a model: adapters on the encoder, heads and decoder trained in full.

    Args:
        model (`nn.Module`): an `AculaModel`, `AculaForPreTraining` or `AculaForAudioClassification`.
        r (`int`, *optional*, defaults to 8): adapter rank.
        lora_alpha (`int`, *optional*, defaults to 16): adapter scaling numerator.
        lora_dropout (`float`, *optional*, defaults to 0.05): dropout on the adapter input.
        include_mlp (`bool`, *optional*, defaults to `False`): also adapt the MLP linears.
        top_layers (`int`, *optional*): Whisper backbones: adapt only the last `top_layers` encoder layers (default:
            every layer).
    """
    class_name = type(model).__name__
    if class_name not in HEADS_TO_TRAIN:
        raise ValueError(f"No acula LoRA recipe for {class_name}; expected one of {sorted(HEADS_TO_TRAIN)}.")
    backbone = getattr(model.config, "audio_backbone_config", None)
    if backbone is None and top_layers is not None:
        raise ValueError("top_layers applies to Whisper backbones only.")
    if backbone is None:
        target_modules = encoder_target_modules(include_mlp)
    elif getattr(backbone, "model_type", None) == "whisper":
        depth = backbone.encoder_layers
        if top_layers is not None and not 0 < top_layers <= depth:
            raise ValueError(f"top_layers must be in 1..{depth} for this Whisper encoder, got {top_layers}.")
        layers = None if top_layers is None else range(depth - top_layers, depth)
        target_modules = whisper_target_modules(include_mlp, layers)
    else:
        raise ValueError(
            "acula's LoRA recipes target the native ViT encoder and Whisper encoders; for another backbone "
            f"({getattr(backbone, 'model_type', None)}) build a peft LoraConfig with its module names (for AST: "
            "query/key/value or q_proj/k_proj/v_proj, depending on the transformers version)."
        )
    modules_to_save = [
        name for name in HEADS_TO_TRAIN[class_name] if _has_parameters(getattr(model, name, None))
    ]
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        modules_to_save=modules_to_save or None,
        bias="none",
    )


def apply_lora(model: nn.Module, lora_config: LoraConfig | None = None, **lora_kwargs) -> PeftModel:
    """Wrap an acula model with LoRA adapters; only adapters and the heads of `HEADS_TO_TRAIN` get gradients.

    Args:
        model (`nn.Module`): the acula model to adapt (modified in place by peft).
        lora_config (`LoraConfig`, *optional*): a custom configuration; defaults to [`lora_config_for`].
        **lora_kwargs: forwarded to [`lora_config_for`] when `lora_config` is not given.

    Returns:
        `peft.PeftModel`. Call `merge_and_unload()` on it to get the plain model back with merged weights.
    """
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config or lora_config_for(model, **lora_kwargs))
    # The frozen patch embedding gives the encoder blocks an input without gradient; under reentrant gradient
    # checkpointing (enabled now or later) the checkpointed blocks would then give the adapters no gradient at all.
    # peft registers the same hook only when checkpointing is already on; it is not registered twice.
    base_model = peft_model.get_base_model()
    if hasattr(base_model, "enable_input_require_grads") and not getattr(base_model, "_require_grads_hooks", None):
        base_model.enable_input_require_grads()
    # peft marks every parameter of a `modules_to_save` copy trainable; the fixed sine-cosine tables must stay fixed.
    for name, parameter in peft_model.named_parameters():
        if name.endswith(("position_embeddings", "embed_positions.weight")):
            parameter.requires_grad_(False)
    return peft_model


def _has_parameters(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


__all__ = ["apply_lora", "encoder_target_modules", "lora_config_for", "whisper_target_modules"]
