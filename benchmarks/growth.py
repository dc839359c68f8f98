"""Section 6: time and peak memory for 1x, 2x and 4x the recordings (training epoch and extraction), each in a
fresh process, to show that time grows linearly and memory does not grow with the data."""

from __future__ import annotations

from pathlib import Path

from benchmarks import data
from benchmarks.harness import Device, Results, Row, Target
from benchmarks.pipeline import fill_cache
from benchmarks.worker import run_worker
from modeling_acula import AculaFeatureExtractor
from acula_train.tensor_cache import TensorCache

SECTION = "growth"
FACTORS = (1, 2, 4)


def run(results: Results, size: dict[str, int], device: Device, workdir: Path, isolate: bool) -> None:
    base = size["growth_base"]
    cache_dir = workdir / "growth-spectrograms"
    extractor = AculaFeatureExtractor()
    manifest = data.subset(base * FACTORS[-1])
    # Untimed: the training jobs read cached epochs.
    fill_cache(manifest, extractor, TensorCache(cache_dir, extractor.to_dict()), device)

    for job, label in (("train_epoch", "training epoch (cpu-small, cached spectrograms)"),
                       ("extract", "batched extraction from files (cpu-small)")):
        measured = {}
        for factor in FACTORS:
            count = base * factor
            result = run_worker({"job": job, "count": count, "cache_dir": str(cache_dir), "batch": size["batch"],
                                 "device": str(device.torch_device)}, isolate=isolate)
            measured[factor] = result
            peak = result["device_peak_mb"] if device.is_cuda else result["peak_rss_mb"]
            results.rows.append(Row(
                SECTION, f"{label}, {factor}x = {count} recordings", result["seconds"],
                result["clips"] / result["seconds"], unit="clips/s" if job == "train_epoch" else "files/s", peak_mb=peak,
                note=f"{result['peak_rss_mb'] - result['baseline_rss_mb']:+.0f} MiB RSS over the process after set-up",
            ))
        time_growth = measured[4]["seconds"] / measured[1]["seconds"]
        key = "device_peak_mb" if device.is_cuda else "peak_rss_mb"
        memory_growth = measured[4][key] / measured[1][key] - 1
        short = "training" if job == "train_epoch" else "extraction"
        results.targets.append(Target(f"{short} memory flat 1x -> 4x", "peak within 10%",
                                      f"{memory_growth:+.1%} (time x{time_growth:.2f} for 4x the data)",
                                      abs(memory_growth) <= 0.10))
    results.note(SECTION, "Each row is one fresh process (`benchmarks/worker.py`); peak memory is its peak RSS (`VmHWM`) "
                          "(or `torch.cuda.max_memory_allocated` on GPU). Linear time means the 4x row takes ~4x "
                          "the 1x row; the per-process set-up (imports, model build) is outside the timed part.")
