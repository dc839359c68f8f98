"""Build `data/auscultation-mini`: the small CC BY 4.0 sample shipped for the default training run and the tests.

It takes recordings of the two CC BY 4.0 sources of the shared dev pack (KAUH lung sounds and Coswara), one per
patient or participant (skipping recordings that are digitally silent over the model window), keeps their first
8.2 s (one model window), and copies their metadata rows unchanged.

    python scripts/make_mini_pack.py --output data/auscultation-mini

The recordings are read with `modeling_acula.audio_utils.decode_audio` (at 16 kHz, mono) from `--dev_pack`, by
default `$ACULA_DEV_PACK`, else ../shared/data/auscultation-dev beside the repository.
"""

import argparse
import csv
import hashlib
from pathlib import Path

import numpy as np
import soundfile as sf

from modeling_acula.audio_utils import decode_audio
from modeling_acula.file_utils import default_dev_pack

WINDOW_SAMPLES = 131_000  # the model's 8 s + 3,000-sample window at 16 kHz
PLAN = {  # (source_dataset, suggested_split) -> number of recordings
    ("KAUH_lung_sounds", "train"): 24,
    ("KAUH_lung_sounds", "val"): 4,
    ("Coswara_20200413", "train"): 24,
    ("Coswara_20200413", "val"): 4,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev_pack", type=Path, default=None, help="default: $ACULA_DEV_PACK, else the in-tree pack")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    args.dev_pack = args.dev_pack or default_dev_pack()

    with open(args.dev_pack / "metadata.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames, list(reader)

    chosen, heads, seen_groups = [], {}, set()
    counts = dict.fromkeys(PLAN, 0)
    # A stable pseudo-random order (hash of the file name) mixes labels and participants reproducibly.
    for row in sorted(rows, key=lambda r: hashlib.sha256(r["file"].encode()).hexdigest()):
        key = (row["source_dataset"], row["suggested_split"])
        wanted = row["modality"] in ("lung", "cough", "breath")
        if key in PLAN and counts[key] < PLAN[key] and row["group_id"] not in seen_groups and wanted:
            head = decode_audio(args.dev_pack / row["file"], 16000)[:WINDOW_SAMPLES]
            if np.ptp(head) == 0:  # digitally silent over the model window: nothing to learn from
                continue
            chosen.append(row)
            heads[row["file"]] = head
            seen_groups.add(row["group_id"])
            counts[key] += 1

    audio_dir = args.output / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    for row in chosen:
        waveform, rate = heads[row["file"]], 16000
        target = Path("audio") / Path(row["file"]).name
        sf.write(args.output / target, waveform, rate, format="FLAC", subtype="PCM_16")
        row.update(file=str(target), duration_s=f"{len(waveform) / rate:.3f}",
                   truncated="1" if float(row["duration_s"]) > len(waveform) / rate else row["truncated"])

    with open(args.output / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(chosen)
    print(f"wrote {len(chosen)} recordings to {args.output}: {counts}")


if __name__ == "__main__":
    main()
