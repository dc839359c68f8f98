"""Shared pieces of the benchmarks: sizes, timing, memory, devices, the machine description and result records."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# How much work each size does (the debiased CKA loss needs batches of at least 4). `tiny` exists for the test-suite
# (its numbers mean nothing); `default` is the size the "< 10 minutes on 2 CPU cores" applies to; `large`
# runs the data pipeline over the whole development pack.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(feat_clips=4, feat_files=4, pipeline_files=8, teacher_steps=1, teacher_batch=4, train_steps=1,
                 opera_batch=4, opera_steps=1, extract_files=4, opera_extract_files=1, growth_base=4, batch=4),
    "small": dict(feat_clips=32, feat_files=32, pipeline_files=96, teacher_steps=3, teacher_batch=8, train_steps=2,
                  opera_batch=4, opera_steps=1, extract_files=32, opera_extract_files=2, growth_base=24, batch=8),
    "default": dict(feat_clips=64, feat_files=64, pipeline_files=512, teacher_steps=4, teacher_batch=24,
                    train_steps=3, opera_batch=4, opera_steps=1, extract_files=96, opera_extract_files=4,
                    growth_base=48, batch=8),
    "large": dict(feat_clips=256, feat_files=256, pipeline_files=1990, teacher_steps=20, teacher_batch=24,
                  train_steps=10, opera_batch=8, opera_steps=3, extract_files=512, opera_extract_files=32,
                  growth_base=384, batch=8),
}


@dataclass
class Row:
    """One line of a result table.

    Args:
        section: the benchmark section (e.g. "featurisation").
        name: what was measured.
        seconds: median wall-clock seconds of one repetition.
        throughput: clips (or steps) per second, when that is the natural unit.
        unit: unit of `throughput`.
        ratio: speed-up over the section's reference (> 1 is faster), when there is one.
        peak_mb: peak memory in MiB (RSS for CPU, allocated device memory for CUDA), when measured.
        note: free text (sizes, what the reference is).
    """

    section: str
    name: str
    seconds: float | None = None
    throughput: float | None = None
    unit: str = "clips/s"
    ratio: float | None = None
    peak_mb: float | None = None
    note: str = ""


@dataclass
class Check:
    """A fast path compared with its reference: `value` (max abs difference) must be <= `tolerance`."""

    section: str
    name: str
    value: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.value)) and self.value <= self.tolerance


@dataclass
class Target:
    """A target of issue 5 and what this run measured for it; `met` is None when it was not measured here."""

    name: str
    target: str
    measured: str
    met: bool | None


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [asdict(row) for row in self.rows],
            "checks": [{**asdict(check), "passed": check.passed} for check in self.checks],
            "targets": [asdict(target) for target in self.targets],
            "notes": self.notes,
        }


@dataclass
class Timing:
    """Median wall-clock and process CPU seconds over the measured repetitions (after the warm-up ones)."""

    wall: float
    cpu: float
    walls: list[float]


def measure(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: "Device | None" = None) -> Timing:
    """Runs `fn` `warmup` times untimed, then `repeats` times timed; returns the medians.

    CPU time (all threads of this process) is reported beside wall time because the machine may be shared: a
    busy neighbour slows the wall clock much more than it changes the work done.
    """
    sync = device.synchronize if device is not None else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    walls, cpus = [], []
    for _ in range(max(1, repeats)):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - start_wall)
        cpus.append(time.process_time() - start_cpu)
    return Timing(float(np.median(walls)), float(np.median(cpus)), walls)


def measure_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, device: "Device | None" = None,
    warm_each: bool = False,
) -> dict[str, Timing]:
    """Like `measure` for several functions, alternating them (a, b, a, b, ...) so that a change of machine load
    during the run affects all of them alike; used where a ratio between them is the result.

    With `warm_each`, every timed call directly follows an untimed call of the same function, so each path is
    timed in the state a continuous job keeps it in. Without it, a path timed right after another pays for the
    other's after-effects: on the 2-vCPU VMs here, a 64-clip featurisation call ran at ~470 clips/s right after the
    librosa reference and ~1,450 clips/s right after itself (numpy's OpenBLAS workers keep spinning after the
    reference's mel product, and an idle vCPU has to be woken)."""
    sync = device.synchronize if device is not None else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            if warm_each:
                fn()
                sync()
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            walls[name].append(time.perf_counter() - start_wall)
            cpus[name].append(time.process_time() - start_cpu)
    return {name: Timing(float(np.median(walls[name])), float(np.median(cpus[name])), walls[name]) for name in fns}


class Device:
    """The device benchmarks run on; the few CUDA-only lines (synchronise, bf16 autocast, peak memory) live here.

    Args:
        name: "cpu" or "cuda" (or "cuda:N").
    """

    def __init__(self, name: str):
        self.torch_device = torch.device(name)
        if self.is_cuda and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: torch.cuda.is_available() is False on this machine.")

    @property
    def is_cuda(self) -> bool:
        return self.torch_device.type == "cuda"

    @property
    def description(self) -> str:
        if self.is_cuda:
            return torch.cuda.get_device_name(self.torch_device)
        return f"CPU ({cpu_model()}, {torch.get_num_threads()} torch threads)"

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.torch_device)

    def autocast(self):
        """bf16 autocast for training and extraction on GPU; full float32 on CPU (the reference precision)."""
        if self.is_cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def reset_peak_memory(self) -> None:
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.torch_device)

    def peak_memory_mb(self) -> float | None:
        if self.is_cuda:
            return torch.cuda.max_memory_allocated(self.torch_device) / 2**20
        return None


def _proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (Linux) in MiB, or None where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**10  # the kernel writes kB
    except (OSError, ValueError):
        pass
    return None


def current_rss_mb() -> float:
    """Resident set size of this process now."""
    value = _proc_status_mb("VmRSS")
    return value if value is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far.

    Linux's `VmHWM` belongs to the process's own address space. `ru_maxrss` is not used where VmHWM exists: Linux
    carries it over from the parent through fork + exec, so a worker started by a big parent would report the
    parent's size.
    """
    value = _proc_status_mb("VmHWM")
    if value is not None:
        return value
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def _cpuinfo(field: str) -> str | None:
    """The first `field` line of /proc/cpuinfo (e.g. "model name", "flags"); None where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (e.g. `amx_bf16`); empty where they cannot be read."""
    return set((_cpuinfo("flags") or "").split())


def machine_info(device: Device) -> dict[str, Any]:
    import librosa
    import transformers

    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "librosa": librosa.__version__,
        "device": device.description,
        "load_average_start": os.getloadavg(),
    }
