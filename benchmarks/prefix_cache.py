#!/usr/bin/env python
"""One epoch of the default recipe over the dev pack's train rows, without and with the prefix cache.

    python benchmarks/prefix_cache.py [--steps 10] [--cache_dir DIR] [--manifest PATH] [--keep_cache]

The default recipe is `train_acula.py`'s: Whisper-base on a 10 s window, LoRA on its top 2 layers, feature
distillation, batch 24 x 2 accumulated (gradient caching), the MiniLM teacher. Both modes are built by the training
app itself (`AlignmentTrainer`: data, caches, model, LoRA, optimiser) on the same rows, and their optimiser steps
are timed in alternation (off, on, off, on, ...), so that a change in the machine's load falls on both alike:

- off: `--prefix_cache false`, every step runs the whole encoder (twice, for gradient caching) and the frozen
  reference encoder of the preservation term;
- on: the prefix cache is filled first (the one-off fill is timed on its own), then each step reads the frozen
  prefix's states and the preservation targets from it and runs the top 2 layers only.

A full epoch of the 1,650 train rows is 34 optimiser steps per mode (minutes each on 2 CPU cores), so by default the
benchmark times `--steps` steps per mode after one warm-up step each, on the first `(steps + 1) x 48` train rows, and
extrapolates the epoch and the fill to all train rows; the output says so. `--steps 0` runs the whole epoch. Each step
is timed from the end of the one before (its data loading included); wall time and this process's CPU time are
both reported (CPU time is less sensitive to other processes on a shared machine).

Needs the development pack (`$ACULA_DEV_PACK`, else ../shared/data/auscultation-dev) and the installed Whisper-base
and MiniLM wheels (requirements.txt).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import modeling_acula  # noqa: E402,F401  (registers the Auto classes)
from acula_train.arguments import parse_args as parse_training_args  # noqa: E402
from acula_train.leakage import apply_leakage_guard  # noqa: E402
from acula_train.manifest import load_manifest  # noqa: E402
from acula_train.trainer import AlignmentTrainer, accumulation_windows  # noqa: E402
from modeling_acula.file_utils import default_dev_pack  # noqa: E402

MODES = ("off", "on")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(default_dev_pack() / "metadata.csv"),
                        help="Manifest whose train rows make the epoch (default: the dev pack's).")
    parser.add_argument("--split_column", default="suggested_split", help="Split column (val/test rows are held out).")
    parser.add_argument("--steps", type=int, default=10,
                        help="Timed optimiser steps per mode, after one warm-up step (0: the whole epoch).")
    parser.add_argument("--cache_dir", default=None,
                        help="Cache folder (default: a fresh temporary one, so that the fill is timed; deleted after "
                             "unless --keep_cache).")
    parser.add_argument("--keep_cache", action="store_true", help="Keep the temporary cache folder.")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="Further train_acula.py arguments for both modes (after --extra).")
    args = parser.parse_args(argv)
    if args.steps < 0:
        parser.error("--steps must be >= 0.")
    return args


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def build_trainer(mode: str, args: argparse.Namespace, cache_dir: Path, output_root: Path,
                  max_rows: int | None) -> AlignmentTrainer:
    argv = ["--manifest", args.manifest, "--split_column", args.split_column, "--cache_dir", str(cache_dir),
            "--output_dir", str(output_root / f"prefix-cache-{mode}"), "--save_steps", "0",
            "--prefix_cache", "true" if mode == "on" else "false", *args.extra]
    if max_rows is not None:
        argv += ["--max_train_samples", str(max_rows)]
    trainer = AlignmentTrainer(*parse_training_args(argv))
    trainer.prepare_data()
    trainer.prepare_optimization()
    trainer.progress = tqdm(disable=True)  # `training_step` reports to it
    return trainer


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not Path(args.manifest).is_file():
        raise SystemExit(f"benchmarks/prefix_cache.py: {args.manifest} does not exist (the dev pack is needed; set "
                         "ACULA_DEV_PACK or --manifest).")
    manifest = load_manifest(args.manifest)
    train_rows = len(apply_leakage_guard(manifest, split_column=args.split_column)[0])
    temporary = args.cache_dir is None
    cache_dir = Path(tempfile.mkdtemp(prefix="acula-bench-prefix-")) if temporary else Path(args.cache_dir)
    output_root = Path(tempfile.mkdtemp(prefix="acula-bench-prefix-out-"))
    print(f"load average before: {load_average()} ({os.cpu_count()} CPUs, torch threads {torch.get_num_threads()})")
    try:
        trainers: dict[str, AlignmentTrainer] = {}
        # The train rows of the timed steps (all of them with --steps 0); the batch of a step is read from the first
        # trainer, whose arguments are the defaults.
        probe_rows = None
        if args.steps:
            # A 10% margin: silent recordings are skipped (18 of the dev pack's first 528 train rows), and every timed
            # step must be a full accumulation window.
            probe = parse_training_args(["--manifest", args.manifest, *args.extra])[2]
            probe_rows = math.ceil(1.1 * (args.steps + 1) * probe.per_device_train_batch_size
                                   * probe.gradient_accumulation_steps)
        for mode in MODES:
            trainers[mode] = build_trainer(mode, args, cache_dir, output_root, probe_rows)
        on = trainers["on"]
        if on.prefix_layers is None:
            raise SystemExit("benchmarks/prefix_cache.py: the prefix cache does not apply to these arguments.")
        used_rows = len(on.kept)
        stats = on.prefix_stats
        disk = stats.disk_bytes()
        entries = len(list(stats.folder.glob("??/*.safetensors")))
        batch, accumulation = on.args.per_device_train_batch_size, on.args.gradient_accumulation_steps
        depth = on.config.audio_backbone_config.encoder_layers
        window = on.extractor.num_samples / on.extractor.sampling_rate
        recipe = (f"{'the default recipe' if not args.extra else 'train_acula.py ' + ' '.join(args.extra)} "
                  f"({on.init_from and Path(on.init_from).name}, {window:g} s window, LoRA on the top "
                  f"{depth - on.prefix_layers} of {depth} layers, preservation {on.config.preservation_loss})")
        steps_per_epoch = math.ceil((train_rows // batch) / accumulation)
        timed = args.steps or (used_rows // batch) // accumulation - 1  # full windows after the warm-up one

        # Alternate the modes step by step, after one warm-up step each.
        iterators = {}
        for mode, trainer in trainers.items():
            trainer.dataloader.set_epoch(0)
            iterators[mode] = iter(accumulation_windows(trainer.dataloader, accumulation))
        wall = {mode: [] for mode in MODES}
        cpu = {mode: [] for mode in MODES}
        first_losses = {}
        for step in range(timed + 1):
            for mode in MODES:
                trainer = trainers[mode]
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                window = next(iterators[mode], None)
                if window is None or len(window) < accumulation:
                    raise SystemExit(f"benchmarks/prefix_cache.py: {used_rows} rows do not make {timed + 1} full "
                                     "accumulation windows; pass fewer --steps.")
                result = trainer.training_step(window, 0, step * accumulation)
                if step == 0:
                    first_losses[mode] = result.values
                else:
                    wall[mode].append(time.perf_counter() - start_wall)
                    cpu[mode].append(time.process_time() - start_cpu)
            print(f"step {step}{' (warm-up)' if step == 0 else ''}: "
                  + ", ".join(f"{mode} {trainers[mode].last_losses.get('loss', float('nan')):.6f}" for mode in MODES),
                  flush=True)
    finally:
        shutil.rmtree(output_root, ignore_errors=True)
        if temporary and not args.keep_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
        gc.collect()

    mean_wall = {mode: statistics.mean(wall[mode]) for mode in MODES}
    mean_cpu = {mode: statistics.mean(cpu[mode]) for mode in MODES}
    fill_per_row = stats.seconds / max(1, stats.computed) if stats.computed else None
    figures = {
        "train_rows": train_rows, "rows_used": used_rows, "steps_timed": timed, "steps_per_epoch": steps_per_epoch,
        "step_s": mean_wall, "step_cpu_s": mean_cpu,
        "epoch_s": {mode: mean_wall[mode] * steps_per_epoch for mode in MODES},
        "speedup_wall": mean_wall["off"] / mean_wall["on"], "speedup_cpu": mean_cpu["off"] / mean_cpu["on"],
        "recipe": recipe, "fill_s": stats.seconds, "fill_rows": stats.computed,
        "fill_epoch_s": fill_per_row * train_rows if fill_per_row else None,
        "disk_bytes": disk, "disk_epoch_bytes": disk / entries * train_rows, "first_losses": first_losses,
    }
    extrapolated = timed < steps_per_epoch
    print()
    print(f"Prefix cache benchmark: {recipe}, batch {batch} x {accumulation} with gradient caching, {args.manifest}")
    print(f"  train rows: {train_rows} -> {steps_per_epoch} optimiser steps per epoch; timed: {timed} steps per mode "
          f"(after 1 warm-up step) on the first {used_rows} train rows that are not silent, alternating the modes"
          + (f"; the epoch figures below are EXTRAPOLATED from them ({timed} of {steps_per_epoch} steps)"
             if extrapolated else ""))
    print(f"  first step's loss: off {first_losses['off'].get('loss'):.6f}, on {first_losses['on'].get('loss'):.6f} "
          "(the same step: the figures compare the same work)")
    for mode, label in (("off", "cache off (--prefix_cache false)"), ("on", "cache on (already filled)")):
        print(f"  {label}: {mean_wall[mode]:.2f} s per step (wall; CPU {mean_cpu[mode]:.2f} s), epoch "
              f"{'~' if extrapolated else ''}{figures['epoch_s'][mode] / 60:.1f} min")
    print(f"  speed-up: {figures['speedup_wall']:.2f}x wall, {figures['speedup_cpu']:.2f}x CPU time")
    if stats.computed:
        print(f"  one-off fill: {stats.seconds:.1f} s for {stats.computed} recordings ({fill_per_row:.3f} s each) -> "
              f"{'~' if used_rows < train_rows else ''}{figures['fill_epoch_s'] / 60:.1f} min for all {train_rows} "
              "train rows")
    else:
        print("  one-off fill: not timed (the cache was already filled: pass no --cache_dir to time it)")
    print(f"  disk: {disk / 2**20:.0f} MiB for {entries} recordings -> "
          f"{'~' if entries < train_rows else ''}{figures['disk_epoch_bytes'] / 2**30:.2f} GiB for all {train_rows} "
          "train rows (float32 safetensors)")
    print(f"  load average after: {load_average()}")
    return figures


if __name__ == "__main__":
    main()
