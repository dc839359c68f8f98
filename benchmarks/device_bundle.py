"""Prepare what a lent GPU machine needs to run the benchmarks, as one folder to `carry` there.

The GPU machine (see ../.library/device) has PyTorch, accelerate and peft but not acula's audio stack, other versions
of transformers / huggingface_hub, no package index, and no copy of ../shared. This writes, under `--out`
(default `device_bundle/` in the current directory; run it from the repository root, where git ignores it):

- `wheels/`: the audio stack (soundfile, soxr, librosa and what they need) and the transformers version acula is
  tested with, pinned to this environment's versions, for Python 3.12 on x86-64 Linux;
- `dev-pack/`: the recordings the chosen benchmark size reads, as a development pack of its own (`metadata.csv`
  + audio), well under the 64 MiB a device call can carry;
- the one command to run there, printed at the end (install from the wheels without an index, then
  `benchmarks/run.py --device cuda` on that pack).

Usage:

    python benchmarks/device_bundle.py [--size small] [--out device_bundle]
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import data  # noqa: E402
from benchmarks.harness import SIZES  # noqa: E402
from benchmarks.reference import NUM_SAMPLES, SAMPLING_RATE  # noqa: E402
from modeling_acula.file_utils import default_dev_pack  # noqa: E402

# Missing on the GPU image (or there in another version than acula is tested with); the rest of acula's
# dependencies (torch, accelerate, peft, safetensors, numpy, scipy, scikit-learn, numba, tokenizers, ...) are there.
# huggingface_hub stays the image's (1.33 in 2026-11): transformers 5.23 accepts >= 1.31, and hub 2.x would need
# httpx2, which the image lacks.
CARRIED_PACKAGES = ("soundfile", "cffi", "pycparser", "soxr", "librosa", "audioread", "pooch", "decorator",
                    "transformers")
# The sections that measure the GPU targets (the teacher section needs the MiniLM package, 88 MB, and is a CPU
# comparison; the data pipeline's reference is librosa on the CPU).
GPU_SECTIONS = "featurisation,training,extraction,growth"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")


def download_wheels(folder: Path) -> list[Path]:
    """Wheels of `CARRIED_PACKAGES` at this environment's versions, for CPython 3.12 on x86-64 Linux."""
    folder.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in CARRIED_PACKAGES]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", "--dest", str(folder), *[f"--platform={p}" for p in PLATFORMS], *pins]
    subprocess.run(command, check=True)
    return sorted(folder.glob("*.whl"))


def rows_needed(size: dict[str, int]) -> list[int]:
    """Rows of the full pack, in the benchmarks' own order, that cover what a GPU run at `size` reads: its file
    counts (extraction takes 8x its files on a GPU) and its full-length clips."""
    manifest = data.dev_manifest()
    count = max(8 * size["extract_files"], size["pipeline_files"], size["feat_files"], 4 * size["growth_base"])
    first = data.subset(min(count, len(manifest)))
    long_enough = data.subset(size["feat_clips"], min_seconds=NUM_SAMPLES / SAMPLING_RATE)
    index = {str(path): i for i, path in enumerate(manifest.audio_paths)}
    wanted = {index[str(path)] for path in (*first.audio_paths, *long_enough.audio_paths)}
    return sorted(wanted)


def write_pack(folder: Path, rows: list[int]) -> int:
    """Copy `rows` of the development pack (metadata and audio) into `folder`; returns the bytes of audio copied."""
    pack = default_dev_pack()
    with open(pack / "metadata.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fieldnames, all_rows = reader.fieldnames, list(reader)
    folder.mkdir(parents=True, exist_ok=True)
    copied = 0
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        for number in rows:
            row = all_rows[number]
            target = folder / row["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(pack / row["file"], target)
            copied += target.stat().st_size
            writer.writerow(row)
    return copied


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="Benchmark size to carry data for.")
    parser.add_argument("--out", default="device_bundle", help="Folder to write (relative paths: to the current directory).")
    parser.add_argument("--no-wheels", dest="wheels", action="store_false", help="Only write the development pack.")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    wheels = download_wheels(out / "wheels") if args.wheels else []
    rows = rows_needed(SIZES[args.size])
    audio_bytes = write_pack(out / "dev-pack", rows)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {len(wheels)} wheels, {len(rows)} recordings ({audio_bytes / 2**20:.1f} MiB of audio); "
          f"{total / 2**20:.1f} MiB in all (a device call carries at most 64 MiB).")
    print("\nOn the GPU machine (one command; carry the folder):\n")
    print(f"    python3 -m pip install --no-index --no-deps {out}/wheels/*.whl && "
          f"ACULA_DEV_PACK={out}/dev-pack python3 benchmarks/run.py --device cuda --size {args.size} "
          f"--sections {GPU_SECTIONS} --output $OUT/BENCHMARKS.md")
    return out


if __name__ == "__main__":
    main()
