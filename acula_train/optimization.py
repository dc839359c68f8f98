"""Optimizer parameter groups: weight decay on weight matrices only (the transformers `Trainer` rule)."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
from transformers.trainer_pt_utils import get_parameter_names

# `Trainer.get_decay_parameter_names`'s name patterns (biases and every spelling of a norm), plus the InfoNCE
# temperature: decaying `logit_scale` (the log of 1 / temperature) would pull the temperature towards 1 whatever
# the loss says.
NO_DECAY_NAME_PATTERNS = (
    r"bias",
    r"layernorm",
    r"rmsnorm",
    r"(?:^|\.)norm(?:$|\.)",
    r"_norm(?:$|\.)",
    r"(?:^|\.)logit_scale$",
)


def decay_parameter_names(model: nn.Module) -> list[str]:
    """
    Names of the parameters that weight decay applies to: all but biases, the parameters of LayerNorm modules (by
    type, and by name for norms of other classes) and `logit_scale`.

    Args:
        model (`nn.Module`): the model (an `AculaForPreTraining`, a peft-wrapped one, or any module).
    """
    return get_parameter_names(model, ALL_LAYERNORM_LAYERS, list(NO_DECAY_NAME_PATTERNS))


def weight_decay_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """
    The trainable parameters of `model` as two optimizer parameter groups, with and without weight decay.

    Args:
        model (`nn.Module`): the model; parameters with `requires_grad=False` are left out.
        weight_decay (`float`): decay of the first group (weight matrices, embeddings, LoRA adapters, tokens); the
            second group (biases, norms, `logit_scale`, see [`decay_parameter_names`]) gets none.

    Returns:
        `list[dict]`: `[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]`,
        for `torch.optim.AdamW(groups, lr=...)`. Both groups are always present (possibly empty), so that an
        optimizer state saved by one run loads into the next.
    """
    decay = set(decay_parameter_names(model))
    named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    return [
        {"params": [parameter for name, parameter in named if name in decay], "weight_decay": weight_decay},
        {"params": [parameter for name, parameter in named if name not in decay], "weight_decay": 0.0},
    ]


__all__ = ["NO_DECAY_NAME_PATTERNS", "decay_parameter_names", "weight_decay_parameter_groups"]
