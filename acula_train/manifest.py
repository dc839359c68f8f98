"""Manifests of recordings + metadata (CSV, JSONL or a `datasets` folder) and audio decoding.

A manifest is one row per recording. One column (`file` by default) holds the path of the audio
file, relative to the manifest's folder or absolute; the other columns are metadata that
`reports.py` turns into clinical text. Every problem is reported with the manifest file and the
row (1-based line number for CSV and JSONL), and no row is ever dropped silently.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any



_CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass
class Manifest:
    """
    Rows of a manifest with the absolute path of each row's recording.

    Args:
        rows (`list[dict[str, Any]]`): one dict per recording, as loaded (empty cells are `None`).
        root (`Path`): folder that relative audio paths were resolved against.
        source (`Path`): the manifest file or folder, named in error messages.
        audio_column (`str`): column holding the audio path.
        report_column (`str`, *optional*): column holding ready-written reports, if any.
        audio_paths (`list[Path]`): resolved absolute audio path of each row.
        row_numbers (`list[int]`): original row number of each row (1-based file line for CSV and
            JSONL, 0-based index for a `datasets` folder); kept through `select` for messages.
        row_label (`str`): what `row_numbers` count ("line" or "index").
    """

    rows: list[dict[str, Any]]
    root: Path
    source: Path
    audio_column: str = "file"
    report_column: str | None = None
    audio_paths: list[Path] = field(default_factory=list)
    row_numbers: list[int] = field(default_factory=list)
    row_label: str = "line"

    def __post_init__(self) -> None:
        if not self.audio_paths:
            self.audio_paths = [_resolve(self.root, row.get(self.audio_column)) for row in self.rows]
        if not self.row_numbers:
            self.row_numbers = list(range(len(self.rows)))
            self.row_label = "index"
        if not (len(self.rows) == len(self.audio_paths) == len(self.row_numbers)):
            raise ValueError(
                f"{self.source}: rows ({len(self.rows)}), audio_paths ({len(self.audio_paths)}) and "
                f"row_numbers ({len(self.row_numbers)}) must have the same length."
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    @property
    def columns(self) -> list[str]:
        """Column names in first-seen order over all rows."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def describe_row(self, index: int) -> str:
        """Where row `index` came from, for messages, e.g. `metadata.csv line 12`."""
        return f"{self.source} {self.row_label} {self.row_numbers[index]}"

    def select(self, indices: Iterable[int]) -> Manifest:
        """A new manifest with the rows at `indices` (in that order), keeping their row numbers."""
        indices = [int(i) for i in indices]
        for i in indices:
            if not -len(self.rows) <= i < len(self.rows):
                raise IndexError(f"{self.source}: row index {i} out of range for {len(self.rows)} rows.")
        return Manifest(
            rows=[self.rows[i] for i in indices],
            root=self.root,
            source=self.source,
            audio_column=self.audio_column,
            report_column=self.report_column,
            audio_paths=[self.audio_paths[i] for i in indices],
            row_numbers=[self.row_numbers[i] for i in indices],
            row_label=self.row_label,
        )

    def to_records(self, *, absolute_paths: bool = False) -> list[dict[str, Any]]:
        """
        Copies of the rows.

        Args:
            absolute_paths (`bool`, *optional*, defaults to `False`): replace the audio column by the
                resolved absolute path (useful to write a manifest elsewhere).
        """
        records = [dict(row) for row in self.rows]
        if absolute_paths:
            for record, path in zip(records, self.audio_paths):
                record[self.audio_column] = str(path)
        return records


def _resolve(root: Path, value: Any) -> Path:
    if isinstance(value, Mapping):  # a `datasets` Audio(decode=False) cell: {"path": ..., "bytes": ...}
        value = value.get("path")
    if value is None:
        return root  # reported as a missing audio path by validation
    # Absolute paths are resolved too (symlinks, `..`): one file reached through two spellings is one recording.
    path = Path(str(value)).expanduser()
    return (path if path.is_absolute() else root / path).resolve()


def _clean_value(value: Any) -> Any:
    """Empty strings and float NaN mean "not recorded": `None`, never the strings "" or "nan"."""
    if isinstance(value, str) and value.strip() == "":
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _read_csv(path: Path, encoding: str, delimiter: str) -> tuple[list[dict[str, Any]], list[int]]:
    # `utf-8-sig` also accepts (and strips) a byte-order mark that spreadsheet programs write.
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    try:
        with open(path, newline="", encoding=codec) as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            if reader.fieldnames is None:
                raise ValueError(f"{path}: the CSV file is empty (no header line).")
            header = list(reader.fieldnames)
            if len(set(header)) != len(header):
                dupes = sorted({name for name in header if header.count(name) > 1})
                raise ValueError(f"{path} line 1: duplicate column names {dupes}.")
            previous_end = reader.line_num
            for record in reader:
                start = previous_end + 1  # a quoted cell may span lines: report where the row starts
                previous_end = reader.line_num
                if None in record:
                    raise ValueError(
                        f"{path} line {start}: {len(header) + len(record[None])} fields, but the header has "
                        f"{len(header)} (an unquoted delimiter in a cell?)."
                    )
                if all(value is None or value == "" for value in record.values()):
                    raise ValueError(f"{path} line {start}: empty row (every cell is empty).")
                missing = [name for name, value in record.items() if value is None]
                if missing:
                    raise ValueError(
                        f"{path} line {start}: only {len(header) - len(missing)} of {len(header)} fields; "
                        f"missing {missing}."
                    )
                rows.append({key: _clean_value(value) for key, value in record.items()})
                numbers.append(start)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not valid {encoding} text ({error.reason} at byte {error.start}: "
            f"{error.object[error.start:error.start + 1]!r}). Save the file as UTF-8, or pass its encoding, "
            f"e.g. load_manifest(..., encoding='latin-1') (or `cp1252`)."
        ) from error
    return rows, numbers


def _read_jsonl(path: Path, encoding: str) -> tuple[list[dict[str, Any]], list[int]]:
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not valid {encoding} text ({error.reason} at byte {error.start}); pass its encoding, "
            f"e.g. load_manifest(..., encoding='latin-1')."
        ) from error
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {error.lineno}: invalid JSON ({error.msg}).") from error
        items = [(i, record) for i, record in enumerate(records)]
        label = "item"
    else:
        items = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number}: invalid JSON ({error.msg}).") from error
        label = "line"
    rows, numbers = [], []
    for number, record in items:
        if not isinstance(record, dict):
            raise ValueError(f"{path} {label} {number}: expected a JSON object, got {type(record).__name__}.")
        rows.append({key: _clean_value(value) for key, value in record.items()})
        numbers.append(number)
    return rows, numbers


def _read_datasets_folder(path: Path, split: str | None, audio_column: str) -> list[dict[str, Any]]:
    from datasets import Audio, DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if split is None:
            raise ValueError(f"{path}: a DatasetDict with splits {list(dataset)}; pass split=... to choose one.")
        if split not in dataset:
            raise ValueError(f"{path}: no split {split!r}; splits are {list(dataset)}.")
        dataset = dataset[split]
    if isinstance(dataset.features.get(audio_column), Audio):
        # Decoding here would need torchcodec; we only need the path (`audio_utils.decode_audio` reads it).
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    rows = []
    for index, record in enumerate(dataset):
        value = record.get(audio_column)
        if isinstance(value, Mapping):
            if value.get("path") is None:
                raise ValueError(
                    f"{path} index {index}: audio column {audio_column!r} holds embedded bytes without a path; "
                    "a manifest needs audio files on disk."
                )
            record[audio_column] = value["path"]
        rows.append({key: _clean_value(val) for key, val in record.items()})
    return rows


def load_manifest(
    path: str | os.PathLike,
    *,
    audio_column: str = "file",
    report_column: str | None = None,
    encoding: str = "utf-8",
    split: str | None = None,
    root: str | os.PathLike | None = None,
    check_files: bool = True,
) -> Manifest:
    """
    Load and validate a manifest: a CSV/TSV file, a JSONL file (or a `.json` array), or a folder
    written by `datasets.Dataset.save_to_disk`.

    Args:
        path (`str` or `os.PathLike`): the manifest file or folder.
        audio_column (`str`, *optional*, defaults to `"file"`): column with each row's audio path.
        report_column (`str`, *optional*): column with ready-written reports; must exist if given.
        encoding (`str`, *optional*, defaults to `"utf-8"`): text encoding of a CSV/JSONL file.
        split (`str`, *optional*): split to use when the folder holds a `DatasetDict`.
        root (`str` or `os.PathLike`, *optional*): folder relative audio paths resolve against; defaults
            to the manifest file's folder (for a `datasets` folder: that folder).
        check_files (`bool`, *optional*, defaults to `True`): require every audio file to exist. Turn off
            only for manifests used as a list of recordings (e.g. a leakage `--exclude` list).

    Returns:
        [`Manifest`]

    Raises:
        `ValueError`: unknown format, non-UTF-8 text, missing audio/report column, empty audio cells,
            missing files (all listed), duplicate audio paths, or an empty manifest.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise ValueError(f"manifest {path} does not exist.")
    if path.is_dir():
        rows = _read_datasets_folder(path, split, audio_column)
        numbers, label, default_root = list(range(len(rows))), "index", path
    elif path.suffix.lower() in _CSV_SUFFIXES:
        rows, numbers = _read_csv(path, encoding, _CSV_SUFFIXES[path.suffix.lower()])
        label, default_root = "line", path.parent
    elif path.suffix.lower() in _JSONL_SUFFIXES:
        rows, numbers = _read_jsonl(path, encoding)
        label, default_root = "line", path.parent
    else:
        raise ValueError(
            f"manifest {path}: unknown format {path.suffix!r}; use .csv, .tsv, .jsonl, .json or a folder "
            "written by `datasets.Dataset.save_to_disk`."
        )
    if not rows:
        raise ValueError(f"manifest {path} has no rows.")
    root_path = Path(root).expanduser().resolve() if root is not None else default_root
    manifest = Manifest(
        rows=rows,
        root=root_path,
        source=path,
        audio_column=audio_column,
        report_column=report_column,
        row_numbers=numbers,
        row_label=label,
    )
    validate_manifest(manifest, check_files=check_files)
    return manifest


def validate_manifest(manifest: Manifest, *, check_files: bool = True) -> None:
    """
    Check columns, empty audio cells, duplicates and (optionally) that every audio file exists.

    Each check lists every offending row before raising, so one run shows all problems of a kind.

    Args:
        manifest ([`Manifest`]): the manifest to check.
        check_files (`bool`, *optional*, defaults to `True`): require every audio file to exist.
    """
    source, column = manifest.source, manifest.audio_column
    if len(manifest) == 0:
        raise ValueError(f"manifest {source} has no rows.")
    columns = manifest.columns
    if column not in columns:
        raise ValueError(
            f"manifest {source}: no audio column {column!r}; columns are {columns}. Pass audio_column=... "
            "to name the column holding the audio file paths."
        )
    if manifest.report_column is not None and manifest.report_column not in columns:
        raise ValueError(f"manifest {source}: no report column {manifest.report_column!r}; columns are {columns}.")
    empty = [manifest.describe_row(i) for i, row in enumerate(manifest.rows) if row.get(column) is None]
    if empty:
        raise ValueError(f"{len(empty)} row(s) have no audio path in column {column!r}: " + "; ".join(empty))
    first_seen: dict[Path, int] = {}
    duplicates = []
    for i, audio_path in enumerate(manifest.audio_paths):
        if audio_path in first_seen:
            duplicates.append(
                f"{manifest.describe_row(i)} repeats {audio_path} of {manifest.row_label} "
                f"{manifest.row_numbers[first_seen[audio_path]]}"
            )
        else:
            first_seen[audio_path] = i
    if duplicates:
        raise ValueError(f"manifest {source}: {len(duplicates)} duplicate audio path(s): " + "; ".join(duplicates))
    if check_files:
        missing = [
            f"{manifest.describe_row(i)}: {audio_path}"
            for i, audio_path in enumerate(manifest.audio_paths)
            if not audio_path.is_file()
        ]
        if missing:
            raise ValueError(
                f"manifest {source}: {len(missing)} audio file(s) not found (relative paths resolve against "
                f"{manifest.root}):\n  " + "\n  ".join(missing)
            )


