#!/usr/bin/env python
"""Throughput of the Whisper-base backbone on this machine: extraction (frozen encoder, no gradient) and one alignment
step (LoRA, preservation forward included), per window length, plus the FLOP arithmetic for a GPU.

    python benchmarks/whisper_throughput.py [--windows 10 30] [--batch_size 24] [--repeats 2]

Prints a Markdown table (and nothing is asserted): clips per second and milliseconds per clip, measured on random
spectrograms of the right shape (the spectrograms themselves are cached in training and cost ~1 ms per clip). Needs
the converted Whisper-base (made into $ACULA_CACHE/pretrained on first use, as train_acula.py does).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from modeling_acula import AculaForPreTraining, apply_lora  # noqa: E402
from modeling_acula.convert_whisper import ensure_whisper_base  # noqa: E402
from modeling_acula.file_utils import acula_cache_dir  # noqa: E402

# H100 SXM dense bf16 tensor-core peak, and a utilisation that eager PyTorch transformer training commonly reaches.
H100_BF16_FLOPS = 989e12
ASSUMED_UTILISATION = 0.35


def encoder_flops(window_seconds: float, width: int = 512, layers: int = 6, ffn: int = 2048, mels: int = 80) -> float:
    """Forward multiply-adds x 2 of Whisper's encoder on one window: the two convolutions, then per layer the q/k/v/o
    projections, the attention products and the MLP."""
    frames = int(window_seconds * 100)
    tokens = frames // 2
    convs = 2 * frames * (mels * width * 3) + 2 * tokens * (width * width * 3)
    per_layer = 2 * tokens * (4 * width * width + 2 * width * ffn) + 2 * 2 * tokens * tokens * width
    return convs + layers * per_layer


def timed(step, repeats: int) -> float:
    step()  # warm-up (allocations, kernels)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=float, nargs="+", default=[10.0, 30.0])
    parser.add_argument("--batch_size", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = str(ensure_whisper_base(acula_cache_dir("pretrained"), include_decoder=False))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}\n")
    print("| window | extraction ms/clip | extraction clips/s | step, LoRA last 2 layers, ms/clip | step, LoRA all 6 "
          "layers, ms/clip | forward GFLOP/clip | H100 bf16 at 35% of peak: step clips/s |")
    print("|---|---|---|---|---|---|---|")
    for window in args.windows:
        spectrograms = torch.rand(args.batch_size, 1, int(window * 100), 80)
        teacher = torch.randn(args.batch_size, 384)
        row = []
        model = AculaForPreTraining.from_audio_backbone(backbone, window_seconds=None if window == 30 else window,
                                                        teacher_hidden_size=384).eval()
        with torch.inference_mode():
            row.append(timed(lambda: model.acula(spectrograms), args.repeats) / args.batch_size)
        for top_layers in (2, None):
            fresh = AculaForPreTraining.from_audio_backbone(
                backbone, window_seconds=None if window == 30 else window, teacher_hidden_size=384)
            peft_model = apply_lora(fresh, top_layers=top_layers)
            peft_model.get_base_model().disable_input_require_grads()  # as train_acula.py (no checkpointing)
            peft_model.train()

            def step():
                out = peft_model(input_values=spectrograms, teacher_embeds=teacher)
                out.loss.backward()

            row.append(timed(step, args.repeats) / args.batch_size)
        flops = encoder_flops(window)
        # a LoRA step on the last 2 layers: forward, preservation forward, backward through 2 of 6 layers (~2x their
        # forward): about (1 + 1 + 2 * 2 / 6) forwards
        step_flops = flops * (2 + 4 / 6)
        gpu = H100_BF16_FLOPS * ASSUMED_UTILISATION / step_flops
        print(f"| {window:g} s | {row[0] * 1e3:.0f} | {1 / row[0]:.1f} | {row[1] * 1e3:.0f} | {row[2] * 1e3:.0f} | "
              f"{flops / 1e9:.1f} | {gpu:,.0f} |")


if __name__ == "__main__":
    main()
