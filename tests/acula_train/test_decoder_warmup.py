"""Decoder warm-up: the encoder stays frozen while the fresh decoder and heads take their first steps."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.testing_utils import run_in_process, tiny_args, tiny_start


@pytest.mark.parametrize("full_finetune", [True, False], ids=["full", "lora"])
def test_encoder_is_unchanged_during_the_warm_up_and_trains_after(tmp_path, full_finetune):
    start = load_file(tiny_start() / "model.safetensors")
    extra = ["--checkpointing_steps", "0", "--decoder_warmup_steps", "2", "--warmup_steps", "0"]
    if full_finetune:
        extra.append("--full_finetune")
    during = load_file(run_in_process(tiny_args(tmp_path / "a", tmp_path / "cache", "--max_steps", "2", *extra))
                       / "alignment" / "model.safetensors")
    after = load_file(run_in_process(tiny_args(tmp_path / "b", tmp_path / "cache", "--max_steps", "3", *extra))
                      / "alignment" / "model.safetensors")

    def changed(weights: dict[str, torch.Tensor], prefix: str) -> list[str]:
        return [name for name in weights if name.startswith(prefix) and not torch.equal(weights[name], start[name])]

    assert changed(during, "acula.") == []
    assert changed(during, "mam_decoder.") and changed(during, "audio_projection.")
    assert changed(after, "acula.")  # the third step reaches the encoder (its LoRA adapters, once merged)
