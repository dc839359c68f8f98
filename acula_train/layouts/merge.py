"""`acula-merge-manifests --output FILE A.csv:split B.csv:suggested_split` (or `python -m acula_train.layouts.merge`):
merge several acula manifests into one CSV, audio paths relative to it and each input's split column renamed to one
split column, ready for `train_acula.py --manifest FILE --split_column split`.

The inputs must not share a recording (same resolved audio file) or a patient (`group_id`): the leakage guard groups
rows by `group_id`, so an id used by two datasets would join patients who have nothing in common."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from ..manifest import Manifest, load_manifest
from .prepare import PATH_COLUMNS, summary, write_manifest_csv

GROUP_COLUMN = "group_id"
_MAX_LISTED = 10


def parse_input(text: str) -> tuple[str, str | None]:
    """`PATH:COLUMN` -> `(PATH, COLUMN)`; `PATH` (or an existing path that holds a colon) -> `(PATH, None)`."""
    if Path(text).expanduser().exists() or ":" not in text:
        return text, None
    path, _, column = text.rpartition(":")
    if not path or not column:
        raise ValueError(f"{text!r}: expected PATH or PATH:SPLIT_COLUMN.")
    return path, column


def _listing(problems: list[str]) -> str:
    shown = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return f"\n  {shown}{more}"


def _check_split_column(manifest: Manifest, column: str | None, split_column: str, default_split: str | None) -> None:
    columns = manifest.columns
    if column is not None and column not in columns:
        raise ValueError(f"{manifest.source}: no split column {column!r}; columns are {columns}.")
    if column is None and default_split is None:
        raise ValueError(
            f"{manifest.source}: no split column named; write it as {manifest.source}:COLUMN (columns are {columns}) "
            "or give its rows a split with --default_split (default_split=...)."
        )
    if column != split_column and split_column in columns:
        raise ValueError(
            f"{manifest.source}: has a column {split_column!r}, which the merged split column would overwrite "
            f"({'its split column is ' + repr(column) if column else 'no split column was named'}); name "
            f"{split_column!r} as its split column ({manifest.source}:{split_column}) or choose another "
            "--split_column."
        )


def _check_disjoint(manifests: list[Manifest]) -> None:
    """No audio file and no `group_id` in two inputs; every collision is listed, naming both inputs."""
    owner_of_file: dict[Path, int] = {}
    owner_of_group: dict[str, int] = {}
    shared_files, shared_groups = [], []
    for index, manifest in enumerate(manifests):
        for row, path in zip(manifest.rows, manifest.audio_paths):
            first = owner_of_file.setdefault(path, index)
            if first != index:
                shared_files.append(f"{path}: in {manifests[first].source} and {manifest.source}")
            group = row.get(GROUP_COLUMN)
            if group is None:
                continue
            first = owner_of_group.setdefault(str(group), index)
            if first != index:
                shared_groups.append(f"{str(group)!r}: in {manifests[first].source} and {manifest.source}")
    if shared_files:
        raise ValueError(f"{len(shared_files)} audio file(s) are in two input manifests (a recording must be in "
                         f"one input only):" + _listing(shared_files))
    shared_groups = list(dict.fromkeys(shared_groups))  # one line per group id and pair of inputs
    if shared_groups:
        raise ValueError(
            f"{len(shared_groups)} {GROUP_COLUMN} value(s) are in two input manifests; patient ids must not collide "
            "across inputs (the leakage guard would take them for one patient): make them unique, e.g. prefix each "
            "dataset's ids with its name:" + _listing(shared_groups)
        )


def _records(manifest: Manifest, column: str | None, split_column: str, default_split: str | None) -> list[dict]:
    """The rows with absolute audio and path columns, the split in `split_column` (renamed in place)."""
    records = []
    for record in manifest.to_records(absolute_paths=True):
        for name in PATH_COLUMNS:
            if record.get(name):
                record[name] = str(manifest.root / str(record[name]))
        if column is None:
            record[split_column] = default_split
        else:
            record = {(split_column if key == column else key): value for key, value in record.items()}
        records.append(record)
    return records


def merge_manifests(
    inputs: Sequence[tuple[str | os.PathLike, str | None]],
    output: str | os.PathLike,
    split_column: str = "split",
    *,
    default_split: str | None = None,
    audio_column: str = "file",
    verbose: bool = True,
) -> Path:
    """
    Merge acula manifests into one CSV manifest.

    Args:
        inputs (`Sequence[tuple[str | os.PathLike, str | None]]`): `(manifest, split column)` pairs: a CSV/TSV, JSONL
            or `datasets` folder read with [`~acula_train.manifest.load_manifest`], and the column holding its rows'
            split (`None`: the input has none, its rows get `default_split`).
        output (`str` or `os.PathLike`): the CSV to write (atomically); audio and `segmentation` paths are written
            relative to its folder.
        split_column (`str`, *optional*, defaults to `"split"`): the merged split column; each input's own split
            column is renamed to it.
        default_split (`str`, *optional*): split of the rows of inputs without a split column.
        audio_column (`str`, *optional*, defaults to `"file"`): the audio column of every input.
        verbose (`bool`, *optional*, defaults to `True`): print rows and patients per input and per split.

    Returns:
        `Path`: the written manifest.

    Raises:
        `ValueError`: fewer than two inputs, a named split column that does not exist, an input without a split
            column and no `default_split`, or one audio file or `group_id` in two inputs (each error names the
            input manifests).
    """
    inputs = [(Path(path), column) for path, column in inputs]
    if len(inputs) < 2:
        raise ValueError(f"merging needs at least two manifests; got {len(inputs)}: {[str(p) for p, _ in inputs]}.")
    manifests = [load_manifest(path, audio_column=audio_column) for path, _ in inputs]
    for manifest, (_, column) in zip(manifests, inputs):
        _check_split_column(manifest, column, split_column, default_split)
    _check_disjoint(manifests)
    output = Path(output).expanduser().resolve()
    records = [record for manifest, (_, column) in zip(manifests, inputs)
               for record in _records(manifest, column, split_column, default_split)]
    merged = Manifest(rows=records, root=output.parent, source=output, audio_column=audio_column)
    written = write_manifest_csv(merged, output)
    if verbose:
        for manifest, (_, column) in zip(manifests, inputs):
            where = f"split column {column!r}" if column else f"no split column, every row {default_split!r}"
            print(f"{manifest.source}: {len(manifest)} recordings, {where}\n" + summary(manifest, column))
        print(f"{written}: {len(merged)} recordings from {len(manifests)} manifests, split column {split_column!r}\n"
              + summary(merged, split_column))
    return written


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="acula-merge-manifests",
        description="Merge acula manifests into one CSV (audio paths relative to it, one split column).",
    )
    parser.add_argument("inputs", nargs="+", metavar="MANIFEST[:SPLIT_COLUMN]",
                        help="a manifest (CSV, TSV, JSONL or datasets folder) and, after a colon, its split column")
    parser.add_argument("--output", required=True, help="the merged CSV manifest to write")
    parser.add_argument("--split_column", default="split", help="the merged split column (default: split)")
    parser.add_argument("--default_split", help="split of the rows of inputs named without a split column")
    parser.add_argument("--audio_column", default="file", help="the inputs' audio column (default: file)")
    args = parser.parse_args(argv)
    try:
        inputs = [parse_input(text) for text in args.inputs]
        return merge_manifests(inputs, args.output, args.split_column, default_split=args.default_split,
                               audio_column=args.audio_column)
    except ValueError as error:
        parser.exit(2, f"acula-merge-manifests: error: {error}\n")


if __name__ == "__main__":
    main()
