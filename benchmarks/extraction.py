"""Section 5: embedding extraction from files, batched against one file at a time (AculaModel, inference_mode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks import data, flops
from benchmarks.harness import Check, Device, Results, Row, Target, measure_interleaved
from modeling_acula import AculaConfig, AculaFeatureExtractor, AculaModel
from modeling_acula.manifest import decode_audio

SECTION = "extraction"
BATCH = 32
# Batched float32 matmuls sum in another order than single-clip ones; bf16 autocast on GPU is coarser.
TOLERANCE = {"cpu": 1e-4, "cuda": 5e-2}


def build_encoder(preset: str, device: Device) -> AculaModel:
    torch.manual_seed(0)
    return AculaModel(AculaConfig.from_preset(preset)).to(device.torch_device).eval()


@torch.inference_mode()
def extract_batched(model: AculaModel, extractor: AculaFeatureExtractor, paths: list[Path], device: Device,
                    batch: int = BATCH) -> np.ndarray:
    """Decode a batch of files, featurise it in one call (on `device`), embed it in one forward; streams, so memory
    does not grow with the number of files."""
    embeddings = []
    for start in range(0, len(paths), batch):
        waveforms = [decode_audio(path, extractor.sampling_rate) for path in paths[start : start + batch]]
        inputs = extractor(waveforms, sampling_rate=extractor.sampling_rate, device=device.torch_device)
        with device.autocast():
            pooled = model(inputs["input_values"]).pooler_output
        embeddings.append(pooled.float().cpu().numpy())
    return np.concatenate(embeddings)


@torch.inference_mode()
def extract_one_at_a_time(model: AculaModel, extractor: AculaFeatureExtractor, paths: list[Path],
                          device: Device) -> np.ndarray:
    """The same work one file per call: decode, featurise, embed."""
    embeddings = []
    for path in paths:
        waveform = decode_audio(path, extractor.sampling_rate)
        inputs = extractor(waveform, sampling_rate=extractor.sampling_rate, device=device.torch_device)
        with device.autocast():
            pooled = model(inputs["input_values"]).pooler_output
        embeddings.append(pooled.float().cpu().numpy())
    return np.concatenate(embeddings)


def run(results: Results, size: dict[str, int], repeats: int, device: Device, presets: list[str]) -> None:
    extractor = AculaFeatureExtractor()
    for preset in presets:
        count = size["extract_files"] if preset == "cpu-small" else size["opera_extract_files"]
        paths = data.paths(data.subset(count))
        model = build_encoder(preset, device)
        outputs: dict[str, np.ndarray] = {}

        def batched() -> None:
            outputs["batched"] = extract_batched(model, extractor, paths, device)

        def single() -> None:
            outputs["single"] = extract_one_at_a_time(model, extractor, paths, device)

        # opera-gt is ~63 GFLOP per clip: keep its repetitions few on a CPU.
        reps = repeats if preset == "cpu-small" or device.is_cuda else 1
        timings = measure_interleaved({"single": single, "batched": batched}, reps, device=device)
        speedup = timings["single"].wall / timings["batched"].wall
        rate = count / timings["batched"].wall
        results.rows += [
            Row(SECTION, f"{preset}: one file at a time (decode, featurise, embed)", timings["single"].wall,
                count / timings["single"].wall, ratio=1.0, note=f"{count} dev-pack files"),
            Row(SECTION, f"{preset}: batched ({BATCH} files per featurise + forward call)", timings["batched"].wall,
                rate, ratio=speedup,
                note=f"{rate * flops.forward_flops_per_clip(preset) / 1e9:.0f} GFLOP/s in the encoder"),
        ]
        tolerance = TOLERANCE["cuda" if device.is_cuda else "cpu"]
        difference = float(np.abs(outputs["batched"] - outputs["single"]).max())
        results.checks.append(Check(SECTION, f"{preset}: batched vs one-at-a-time embeddings (max abs)", difference,
                                    tolerance))
        if device.is_cuda and preset == "opera-gt":
            results.targets.append(Target("opera-gt extraction on GPU", ">= 4,000 clips/s (H100, bf16)",
                                          f"{rate:,.0f} clips/s", rate >= 4000))
        if not device.is_cuda:
            results.targets.append(Target(f"extraction batched vs one at a time ({preset})", ">= 5x on CPU",
                                          f"{speedup:.2f}x", speedup >= 5))
    results.note(SECTION, f"Both paths decode every file with soundfile; features are computed on "
                          f"`{device.torch_device}`; AculaModel runs under `torch.inference_mode()`"
                          + (" and bf16 autocast." if device.is_cuda else " in float32."))
