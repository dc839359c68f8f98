"""`acula-prepare-dataset NAME ROOT --output FILE` (or `python -m acula_train.layouts`): read a public dataset in its
own layout and write an acula manifest (CSV, one row per recording, audio paths relative to the manifest) with the
layout's deterministic patient-grouped split, ready for `train_acula.py --manifest FILE --split_column split`."""

from __future__ import annotations

import argparse
import csv
import os
from collections import Counter
from pathlib import Path

from .registry import LAYOUTS, get_layout, load_layout

# Columns other than the audio column that hold paths relative to the manifest (rewritten when a manifest moves).
PATH_COLUMNS = ("segmentation",)


def write_manifest_csv(manifest, output: Path) -> Path:
    """Write `manifest`'s rows to `output` (CSV), audio paths relative to `output`'s folder; written to a temporary
    file first and renamed, so an interrupted run never leaves half a manifest."""
    output = output.expanduser().resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    records = manifest.to_records()
    for record, path in zip(records, manifest.audio_paths):
        record[manifest.audio_column] = os.path.relpath(path, output.parent)
    for column in PATH_COLUMNS:  # other paths of the layout, relative to the manifest too
        for record in records:
            if record.get(column):
                record[column] = os.path.relpath(manifest.root / record[column], output.parent)
    temporary = output.with_name(output.name + ".partial")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=manifest.columns)
        writer.writeheader()
        for record in records:
            writer.writerow({key: "" if value is None else value for key, value in record.items()})
    temporary.replace(output)
    return output


def summary(manifest, split_column: str | None) -> str:
    """Counts per split: recordings, patients (groups) and the classes of the layout's main label."""
    lines = []
    sides = Counter(row.get(split_column) for row in manifest.rows) if split_column else Counter({None: len(manifest)})
    for side in sorted(sides, key=str):
        rows = [row for row in manifest.rows if not split_column or row.get(split_column) == side]
        groups = {row.get("group_id") for row in rows} - {None}  # rows without a patient id are no patient
        at_site = Counter(row.get("murmur_at_site") for row in rows if row.get("murmur_at_site"))
        extra = (" (murmur at site: " + ", ".join(f"{k} {v}" for k, v in sorted(at_site.items())) + ")") if at_site else ""
        lines.append(f"  {side or 'all'}: {len(rows)} recordings, {len(groups)} patients{extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(
        prog="acula-prepare-dataset",
        description="Write an acula manifest from a public dataset in its publisher's layout.",
    )
    parser.add_argument("layout", nargs="?", help=f"the dataset layout: {sorted(LAYOUTS)}")
    parser.add_argument("root", nargs="?", help="the dataset's folder as published (e.g. the folder holding "
                                                "training_data.csv for CirCor)")
    parser.add_argument("--output", help="the manifest to write (default: ROOT/acula_manifest.csv)")
    parser.add_argument("--split_seed", type=int, default=0, help="seed of the patient-grouped split")
    parser.add_argument("--no_verify_checksums", action="store_true", help="skip the SHA256SUMS.txt check")
    parser.add_argument("--list", action="store_true", help="list the layouts acula reads and exit")
    args = parser.parse_args(argv)
    if args.list or not args.layout:
        for name, layout in sorted(LAYOUTS.items()):
            print(f"{name}: {layout.description}\n  licence: {layout.licence}\n  cite: {layout.citation}")
        return None
    if not args.root:
        parser.error("ROOT (the dataset folder) is required.")
    layout = get_layout(args.layout)
    manifest = load_layout(args.layout, args.root, split_seed=args.split_seed,
                           verify_checksums=not args.no_verify_checksums)
    output = Path(args.output) if args.output else Path(args.root) / "acula_manifest.csv"
    written = write_manifest_csv(manifest, output)
    print(f"{written}: {len(manifest)} recordings of {layout.name}, split column {layout.split_column!r}\n"
          + summary(manifest, layout.split_column))
    print(f"Licence: {layout.licence}. Cite: {layout.citation}")
    return written


if __name__ == "__main__":
    main()
