"""FLOP counts from `torch.utils.flop_counter` (matmuls, convolutions and attention; elementwise work is not
counted), used for the teacher-cost arithmetic and for FLOP rates."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from modeling_acula import AculaConfig, AculaForPreTraining, AculaModel
from acula_train.teacher import AculaTeacher

# MedGemma-4B (Gemma 3 4B): ~4.3B parameters in all, ~3.9B in the language model, of which ~3.2B outside the
# token-embedding table (34 layers of width 2,560, gated MLP 10,240, 8 query / 4 key-value heads of 256).
REFERENCE_TEACHER_PARAMETERS = 4.0e9


@lru_cache(maxsize=None)
def training_flops_per_clip(preset: str) -> float:
    """FLOPs of one training step (forward + backward, masked pass + MAM decoder included) per clip.

    Counted on the meta device (no memory, no time). The alignment loss is left out because the losses refuse
    meta tensors; it costs O(batch^2 x projection_dim), nothing next to the encoder, so the audio projection's sum
    stands in for it to keep the unmasked pass in the backward.
    """
    config = AculaConfig.from_preset(preset)
    with torch.device("meta"):
        model = AculaForPreTraining(config)
        inputs = torch.rand(2, 1, *config.spectrogram_size)
    counter = FlopCounterMode(display=False)
    with counter:
        outputs = model(input_values=inputs)
        (outputs.loss + outputs.audio_embeds.sum()).backward()
    return counter.get_total_flops() / 2


@lru_cache(maxsize=None)
def forward_flops_per_clip(preset: str) -> float:
    """FLOPs of one `AculaModel` forward (embedding extraction) per clip, counted on the meta device."""
    config = AculaConfig.from_preset(preset)
    with torch.device("meta"):
        model = AculaModel(config)
        inputs = torch.rand(2, 1, *config.spectrogram_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(inputs)
    return counter.get_total_flops() / 2


def teacher_flops_per_text(teacher: AculaTeacher, texts: Sequence[str]) -> float:
    """Measured FLOPs of the teacher's forward over `texts` (as `encode` batches them), per text."""
    counter = FlopCounterMode(display=False)
    with counter:
        teacher.encode(list(texts), batch_size=len(texts))
    return counter.get_total_flops() / len(texts)


def mean_tokens(teacher: AculaTeacher, texts: Sequence[str]) -> float:
    """Mean number of tokens per text after the teacher's truncation."""
    encoded = teacher.tokenizer(list(texts), truncation=True, max_length=teacher.max_length)
    return sum(len(ids) for ids in encoded["input_ids"]) / len(texts)
