"""Section 5: embedding extraction from files with the package's `AudioEmbedder`, batched against one file at a
time (decode, sliding-window featurisation, forward, mean over windows)."""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import data, flops
from benchmarks.harness import Check, Device, Results, Row, Target, Timing, cpu_flags, measure_interleaved
from modeling_acula import AculaConfig, AculaFeatureExtractor, AculaModel
from acula_eval.embeddings import AudioEmbedder
from modeling_acula.audio_utils import decode_audio

SECTION = "extraction"
BATCH = 32  # files per call on a CPU
GPU_BATCH = 256  # files per call on a GPU: ~430 windows per forward, enough to fill it
# Batched float32 matmuls sum in another order than single-clip ones; bf16 autocast is coarser (8 mantissa bits).
# On CUDA, cuDNN runs the float32 patch convolution in TF32 by default (10 mantissa bits): a looser float32 bound.
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}
CUDA_FLOAT32_TOLERANCE = 1e-3


def save_encoder(preset: str, folder: Path) -> Path:
    """A randomly initialised encoder of `preset` (seed 0) with the default feature extractor, as a model folder."""
    torch.manual_seed(0)
    AculaModel(AculaConfig.from_preset(preset)).save_pretrained(folder)
    AculaFeatureExtractor().save_pretrained(folder)
    return folder


def embedder(folder: Path, device: Device, batch_size: int, autocast_dtype: str | None = None,
             decode_workers: int = 2) -> AudioEmbedder:
    return AudioEmbedder(folder, device=device.torch_device, batch_size=batch_size, cache_dir=False,
                         show_progress=False, autocast_dtype=autocast_dtype, decode_workers=decode_workers)


def run(results: Results, size: dict[str, int], repeats: int, device: Device, presets: list[str]) -> None:
    # bf16 on a CPU is only fast with AMX or AVX-512 BF16; the run says which this CPU has.
    bf16_hardware = "GPU" if device.is_cuda else (", ".join(sorted({"amx_bf16", "avx512_bf16"} & cpu_flags())) or "none")
    with tempfile.TemporaryDirectory(prefix="acula-bench-extract-") as workdir:
        for preset in presets:
            if device.is_cuda:  # enough files for several GPU batches; decoding in as many threads as there are cores
                count = min(8 * size["extract_files"], len(data.dev_manifest()))
                batch, workers = GPU_BATCH, os.cpu_count() or 2
            else:
                count = size["extract_files"] if preset == "cpu-small" else size["opera_extract_files"]
                batch, workers = BATCH, 2
            paths = data.paths(data.subset(count))
            folder = save_encoder(preset, Path(workdir) / preset)
            # One file per call, float32, decoded in the calling thread: what a loop over files does.
            embedders = {
                "single": embedder(folder, device, batch_size=1, decode_workers=0),
                "batched float32": embedder(folder, device, batch_size=batch, decode_workers=workers),
                "batched bfloat16": embedder(folder, device, batch_size=batch, autocast_dtype="bfloat16",
                                             decode_workers=workers),
            }
            outputs: dict[str, np.ndarray] = {}

            def job(name):
                def call():
                    outputs[name] = embedders[name].embed_files(paths)
                return call

            # opera-gt is ~63 GFLOP per window: keep its repetitions few on a CPU.
            reps = repeats if preset == "cpu-small" or device.is_cuda else 1
            timings = measure_interleaved({name: job(name) for name in embedders}, reps, device=device,
                                           warm_each=True)
            # Untimed by the comparison above: one decode pass gives the decode-only floor and the window count.
            decode_seconds, windows, waveforms = _decode_only(paths)
            single = timings["single"].wall
            results.rows.append(Row(SECTION, f"{preset}: one file at a time (batch_size=1, float32, no decode thread)",
                                    single, count / single, unit="files/s", ratio=1.0,
                                    note=f"{count} dev-pack files, {windows} windows of 8.19 s"))
            speedups = {}
            for name in ("batched float32", "batched bfloat16"):
                seconds = timings[name].wall
                speedups[name] = single / seconds
                window_rate = windows / seconds
                results.rows.append(Row(
                    SECTION, f"{preset}: {name} ({batch} files per call, {workers} decode threads)", seconds,
                    count / seconds,
                    unit="files/s",
                    ratio=speedups[name],
                    note=f"{window_rate * flops.forward_flops_per_clip(preset) / 1e9:.0f} GFLOP/s in the encoder"))
                dtype = name.split()[-1]
                difference = float(np.abs(outputs[name] - outputs["single"]).max())
                tolerance = CUDA_FLOAT32_TOLERANCE if device.is_cuda and dtype == "float32" else TOLERANCE[dtype]
                results.checks.append(Check(SECTION, f"{preset}: {name} vs one-at-a-time float32 embeddings (max abs)",
                                            difference, tolerance))
            rate = count / timings["batched bfloat16"].wall
            if device.is_cuda and preset == "opera-gt":
                window_rate = windows / timings["batched bfloat16"].wall
                results.targets.append(Target("opera-gt extraction on GPU", ">= 4,000 clips/s (H100, bf16)",
                                              f"{window_rate:,.0f} clips (windows)/s, {rate:,.0f} files/s",
                                              window_rate >= 4000))
            results.rows.append(Row(SECTION, f"{preset} files: decode only (soundfile, one thread)", decode_seconds,
                                    count / decode_seconds, unit="files/s",
                                    note="the floor under this preset's rows"))
            phases = _phase_timings(embedders["batched bfloat16"], waveforms, batch, reps, device)
            for name, timing in phases.items():
                results.rows.append(Row(SECTION, f"{preset} decoded recordings: {name} ({batch} per call)",
                                        timing.wall, count / timing.wall, unit="files/s",
                                        note=f"{1e3 * timing.cpu / count:.2f} CPU-ms per file"))
            if not device.is_cuda:
                # The most any overlap of decoding with features + encoder can give on this machine's cores: all the
                # CPU work of a file (decode on one core, features + bf16 encoder timed above) spread over every core.
                cpu_per_file = (decode_seconds + phases["features + bf16 encoder"].cpu) / count
                cores = len(os.sched_getaffinity(0))
                bound = (single / count) / (cpu_per_file / cores)
                best = max(speedups, key=speedups.get)
                results.targets.append(Target(
                    f"extraction batched vs one at a time ({preset})", ">= 5x on CPU",
                    f"{speedups[best]:.2f}x ({best}); {speedups['batched float32']:.2f}x in float32; the bound on "
                    f"this machine is {bound:.1f}x ({1e3 * cpu_per_file:.1f} CPU-ms of work per file on "
                    f"{cores} cores against {1e3 * single / count:.1f} ms per file one at a time)",
                    speedups[best] >= 5))
    results.note(SECTION,
                 "Rows from files call the package's `AudioEmbedder.embed_files` (sliding 8.19 s windows, mean over "
                 f"a recording's windows) on the same files; features are computed on `{device.torch_device}`. "
                 "The 'decoded recordings' rows time the batched bf16 path's work after decoding (the feature "
                 "extractor alone, and `embed_waveforms`); with the decode-only row they give the CPU work per file "
                 "and so the most any overlap can reach (see the target). "
                 f"Batched rows decode the next batch in threads while the current one is embedded. bf16 rows run "
                 f"the encoder under `torch.autocast(bfloat16)`; bf16 hardware here: {bf16_hardware}.")


def _decode_only(paths: list[Path]) -> tuple[float, int, list[np.ndarray]]:
    """Seconds to decode `paths` one by one, how many 8.19 s windows they make (non-overlapping, the last one
    shorter, as `AculaFeatureExtractor(sliding_window=True)` cuts them), and the waveforms."""
    window = AculaFeatureExtractor().num_samples
    start, waveforms = time.perf_counter(), [decode_audio(path, 16000) for path in paths]
    seconds = time.perf_counter() - start
    return seconds, sum(max(1, math.ceil(w.size / window)) for w in waveforms), waveforms


def _phase_timings(embedder_: AudioEmbedder, waveforms: list[np.ndarray], batch: int, repeats: int,
                   device: Device) -> dict[str, Timing]:
    """Wall and CPU time of the batched path's work after decoding: sliding-window features alone, and features +
    encoder (`embed_waveforms`), over already decoded recordings in calls of `batch`."""
    groups = [waveforms[i : i + batch] for i in range(0, len(waveforms), batch)]
    extractor = embedder_.feature_extractor

    def features():
        for group in groups:
            extractor(group, sampling_rate=embedder_.sampling_rate, return_tensors="pt", sliding_window=True,
                      device=embedder_.device)

    def embed():
        for group in groups:
            embedder_.embed_waveforms(group)

    return measure_interleaved({"features only": features, "features + bf16 encoder": embed},
                               repeats, device=device, warm_each=True)
