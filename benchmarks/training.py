"""Section 4: training throughput and peak memory of the alignment model, one fresh process per preset."""

from __future__ import annotations

from benchmarks import flops
from benchmarks.harness import Device, Results, Row, Target
from benchmarks.worker import run_worker

SECTION = "training"


def batch_and_steps(preset: str, size: dict[str, int], device: Device) -> tuple[int, int]:
    if device.is_cuda:  # big enough batches to fill a GPU
        return (256, 10) if preset == "cpu-small" else (128, 10)
    if preset == "cpu-small":
        return 24, size["train_steps"]  # 24: train_acula.py's default batch
    return size["opera_batch"], size["opera_steps"]


def run(results: Results, size: dict[str, int], device: Device, presets: list[str], isolate: bool) -> None:
    for preset in presets:
        batch, steps = batch_and_steps(preset, size, device)
        result = run_worker({"job": "train", "preset": preset, "batch": batch, "steps": steps, "warmup": 1,
                             "device": str(device.torch_device)}, isolate=isolate)
        rate = result["clips_per_s"]
        flop_rate = rate * flops.training_flops_per_clip(preset) / 1e9
        peak = result["device_peak_mb"] if device.is_cuda else result["peak_rss_mb"]
        memory = (f"peak RSS {result['peak_rss_mb']:.0f} MiB, {result['peak_rss_mb'] - result['baseline_rss_mb']:+.0f}"
                  " MiB over the process after model build")
        results.rows.append(Row(
            SECTION, f"{preset}: training step, batch {batch}" + (", bf16 autocast" if device.is_cuda else ", float32"),
            result["step_s"], rate, peak_mb=peak,
            note=f"SDPA: {'yes' if result['sdpa'] else 'NO'}; {flop_rate:.0f} GFLOP/s; {memory}; {steps} steps",
        ))
        if device.is_cuda and preset == "opera-gt":
            results.targets.append(Target("opera-gt alignment training on GPU", ">= 1,200 clips/s (H100, bf16)",
                                          f"{rate:,.0f} clips/s", rate >= 1200))
    results.note(SECTION, "Full fine-tuning (encoder, MAM decoder, both heads) with AdamW on fixed random "
                          "spectrograms; each preset runs in its own process, which reports its peak RSS (`VmHWM`). "
                          "Attention goes through `F.scaled_dot_product_attention` (the profiler confirms the op).")
