"""One memory-measured benchmark job, run by `run_worker` in a fresh process so that the peak RSS it reports is its
own: `python benchmarks/worker.py '{"job": "train", ...}'` prints one JSON line.

The sections import `run_worker` from here; the harness does not know this module, so the imports form no cycle.

Jobs:
    train        steps of AculaForPreTraining on fixed inputs (throughput, peak memory, whether SDPA ran)
    train_epoch  one training epoch over N cached spectrograms through the DataLoader (growth)
    extract      batched embedding extraction from N files (growth)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.harness import REPO_ROOT, Device, current_rss_mb, peak_rss_mb  # noqa: E402


def _train_step(model, optimizer, inputs, vectors, device: Device) -> None:
    with device.autocast():
        loss = model(input_values=inputs, teacher_embeds=vectors).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _uses_sdpa(model, inputs, device: Device) -> bool:
    """Whether a forward of the encoder dispatches to `scaled_dot_product_attention` (checked with the profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler, torch.no_grad():
        with device.autocast():
            model.acula(inputs[:1])
    return any("scaled_dot_product" in event.key for event in profiler.key_averages())


def _build(preset: str, device: Device):
    from modeling_acula import AculaConfig, AculaForPreTraining

    torch.manual_seed(0)
    model = AculaForPreTraining(AculaConfig.from_preset(preset)).to(device.torch_device).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def job_train(spec: dict, device: Device) -> dict:
    model, optimizer = _build(spec["preset"], device)
    batch = spec["batch"]
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(batch, 1, *model.config.spectrogram_size, generator=generator).to(device.torch_device)
    vectors = torch.randn(batch, model.config.teacher_hidden_size, generator=generator).to(device.torch_device)
    baseline = current_rss_mb()
    device.reset_peak_memory()
    sdpa = _uses_sdpa(model, inputs, device)
    for _ in range(spec.get("warmup", 1)):
        _train_step(model, optimizer, inputs, vectors, device)
    device.synchronize()
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        _train_step(model, optimizer, inputs, vectors, device)
        device.synchronize()
        times.append(time.perf_counter() - start)
    step = float(np.median(times))
    return {"step_s": step, "clips_per_s": batch / step, "sdpa": sdpa, "baseline_rss_mb": baseline}


def job_train_epoch(spec: dict, device: Device) -> dict:
    from torch.utils.data import DataLoader

    from benchmarks import data
    from modeling_acula import AculaFeatureExtractor
    from acula_train.dataset import AudioSpectrogramDataset
    from acula_train.tensor_cache import TensorCache

    manifest = data.subset(spec["count"])
    extractor = AculaFeatureExtractor()
    dataset = AudioSpectrogramDataset(
        manifest, lambda waveform, rate: extractor(waveform, sampling_rate=rate)["input_values"][0],
        cache=TensorCache(spec["cache_dir"], extractor.to_dict()),
        teacher_vectors=torch.randn(len(manifest), 384, generator=torch.Generator().manual_seed(0)),
    )
    model, optimizer = _build("cpu-small", device)
    loader = DataLoader(dataset, batch_size=spec["batch"], shuffle=True, drop_last=True, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    baseline = current_rss_mb()
    device.reset_peak_memory()
    start = time.perf_counter()
    clips = 0
    for batch in loader:
        _train_step(model, optimizer, batch["input_values"].to(device.torch_device),
                    batch["teacher_embeds"].to(device.torch_device), device)
        clips += batch["input_values"].shape[0]
    device.synchronize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "clips": clips, "baseline_rss_mb": baseline}


def job_extract(spec: dict, device: Device) -> dict:
    import tempfile
    from pathlib import Path

    from benchmarks import data
    from benchmarks.extraction import embedder, save_encoder

    paths = data.paths(data.subset(spec["count"]))
    with tempfile.TemporaryDirectory(prefix="acula-bench-extract-") as workdir:
        # The section's small batch, so that even the 1x run covers several batches (steady state).
        embed = embedder(save_encoder("cpu-small", Path(workdir)), device, batch_size=spec["batch"],
                         autocast_dtype="bfloat16" if device.is_cuda else None)
        baseline = current_rss_mb()
        device.reset_peak_memory()
        start = time.perf_counter()
        embeddings = embed.embed_files(paths)
        device.synchronize()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "clips": len(embeddings), "baseline_rss_mb": baseline}


JOBS = {"train": job_train, "train_epoch": job_train_epoch, "extract": job_extract}


def run_job(spec: dict) -> dict:
    """Runs `spec["job"]` on `spec["device"]`; adds the peak memory figures to its result."""
    if spec.get("job") not in JOBS:
        raise ValueError(f"Unknown benchmark job {spec.get('job')!r}; known: {sorted(JOBS)}.")
    device = Device(spec.get("device", "cpu"))
    result = JOBS[spec["job"]](spec, device)
    result["peak_rss_mb"] = peak_rss_mb()
    result["device_peak_mb"] = device.peak_memory_mb()
    return result


def run_worker(spec: dict[str, Any], isolate: bool = True) -> dict[str, Any]:
    """Runs one memory-measured job (see `JOBS`) in a fresh Python process running this file, so that its peak RSS
    is its own.

    With `isolate=False` (tests only) the job runs in this process and its memory figures are not meaningful.
    """
    if not isolate:
        return run_job(spec)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), json.dumps(spec)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"benchmark worker {spec.get('job')!r} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}"
        )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"benchmark worker {spec.get('job')!r} printed no JSON result:\n{completed.stdout[-2000:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    import modeling_acula  # noqa: F401  (registers the Auto classes)

    print(json.dumps(run_job(json.loads(sys.argv[1]))))
