"""`datasets` in: a Hub dataset, a builder (`audiofolder`, `csv`, ...) over local files, or a `save_to_disk` folder,
turned into the in-memory [`~acula_train.manifest.Manifest`] that training and evaluation already read.

The names follow transformers' audio examples (`--dataset_name`, `--dataset_config_name`, `--train_split_name`,
`--eval_split_name`, `--audio_column_name`). Each row of every split used becomes one manifest row: its metadata
columns feed the reports as a manifest's do, its split name goes into the column [`SPLIT_COLUMN`] (so that the leakage
guard treats the dataset's splits as it treats a manifest's split column), and a named patient column is copied to
`group_id` (the guard's and the evaluator's patient column).

Audio is never decoded by `datasets` (that needs torchcodec): every `Audio` column is cast to `decode=False`, a cell
with a path on disk is used as it is, and a cell holding only bytes (a Hub parquet or a `save_to_disk` folder embeds
them) is written once into a content-addressed folder, so that acula's one audio path (soundfile + soxr,
`modeling_acula.audio_utils.decode_audio`) reads every recording from a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from modeling_acula.file_utils import atomic_write

from .manifest import Manifest, _clean_value, validate_manifest

# The column that holds each row's dataset split name (the leakage guard's split column for a dataset).
SPLIT_COLUMN = "dataset_split"
# The patient column of the leakage guard and of the evaluator's leakage check.
GROUP_COLUMN = "group_id"


@contextlib.contextmanager
def _paths_without_torchcodec() -> Iterator[None]:
    """`datasets`' `Audio.encode_example` imports torchcodec even for a path or bytes, which it stores unchanged;
    builders that write examples one by one (`audiofolder`) then fail where torchcodec is not installed. Within this
    context those values are stored without it; anything that really needs encoding (an array) still goes through
    `datasets`."""
    from datasets.features.audio import Audio

    original = Audio.encode_example

    def encode_example(self, value):
        if isinstance(value, str):
            return {"bytes": None, "path": value}
        if isinstance(value, os.PathLike):
            return {"bytes": None, "path": str(Path(value).absolute())}
        if isinstance(value, (bytes, bytearray)):
            return {"bytes": bytes(value), "path": None}
        return original(self, value)

    Audio.encode_example = encode_example
    try:
        yield
    finally:
        Audio.encode_example = original


def parse_data_files(data_files: Sequence[str] | None) -> str | list[str] | dict[str, list[str]] | None:
    """`--data_files` as `load_dataset` takes them: `a.csv b.csv` (one `train` split) or `train=a.csv test=b.csv`."""
    if not data_files:
        return None
    named = [item for item in data_files if "=" in item]
    if not named:
        return list(data_files)
    if len(named) != len(data_files):
        raise ValueError(f"--data_files {list(data_files)}: name the split of every file (train=a.csv test=b.csv) "
                         "or of none.")
    files: dict[str, list[str]] = {}
    for item in data_files:
        split, path = item.split("=", 1)
        files.setdefault(split.strip(), []).append(path.strip())
    return files


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    path = Path(path).expanduser()
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_dataset_dict(
    dataset_name: str,
    dataset_config_name: str | None = None,
    *,
    data_dir: str | None = None,
    data_files: Sequence[str] | None = None,
    cache_dir: str | None = None,
):
    """
    The splits of a dataset as a `datasets.DatasetDict`.

    Args:
        dataset_name (`str`): a Hub id, a builder (`audiofolder`, `csv`, `json`, `parquet`, ...) or a folder written
            by `save_to_disk` (a single saved `Dataset` becomes the split `train`).
        dataset_config_name (`str`, *optional*): the dataset's configuration.
        data_dir (`str`, *optional*): the data folder of a builder (e.g. an `audiofolder` with `metadata.csv`).
        data_files (`Sequence[str]`, *optional*): files of a builder, `a.csv` or `train=a.csv test=b.csv`.
        cache_dir (`str`, *optional*): `datasets`' cache folder (default: its own).
    """
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    if is_saved_dataset(dataset_name):
        if data_dir or data_files or dataset_config_name:
            raise ValueError(f"--dataset_name {dataset_name} is a save_to_disk folder: --dataset_config_name, "
                             "--data_dir and --data_files do not apply.")
        loaded = load_from_disk(str(Path(dataset_name).expanduser()))
        return DatasetDict({"train": loaded}) if isinstance(loaded, Dataset) else loaded
    with _paths_without_torchcodec():
        loaded = load_dataset(dataset_name, dataset_config_name, data_dir=data_dir,
                              data_files=parse_data_files(data_files), cache_dir=cache_dir)
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def split_names(value: str | None) -> list[str]:
    """`train` or `train+validation` (transformers' examples' way of joining splits) as a list of names."""
    return [name.strip() for name in (value or "").split("+") if name.strip()]


def check_splits(splits: Mapping[str, Any], wanted: Sequence[str], source: str, option: str) -> None:
    """A `ValueError` naming the splits that exist when one of `wanted` is not among them."""
    missing = [name for name in wanted if name not in splits]
    if missing:
        raise ValueError(f"{source}: no split {', '.join(map(repr, missing))} ({option}); the splits are "
                         f"{list(splits)}.")


def check_column(columns: Sequence[str], column: str | None, source: str, option: str) -> None:
    """A `ValueError` naming `column` and the columns that exist when it is not among them."""
    if column is not None and column not in columns:
        raise ValueError(f"{source}: no column {column!r} ({option}); the columns are {list(columns)}.")


def _audio_file(cell: Any, audio_dir: Path, split: str, index: int) -> str | None:
    """The file of one audio cell: its path on disk, else its bytes written once under `audio_dir`."""
    if cell is None or isinstance(cell, (str, os.PathLike)):
        return None if cell is None else str(cell)
    path, data = cell.get("path"), cell.get("bytes")
    if data is None:
        return path
    if path and Path(path).is_absolute() and Path(path).is_file():
        return path  # the bytes of a file that is there: read it, no copy
    # One folder per content, one file per row in it: byte-identical recordings stay separate rows, which the
    # leakage guard then matches by content.
    digest = hashlib.sha256(data).hexdigest()
    target = audio_dir / digest[:2] / digest / f"{split}-{index}-{Path(path or 'audio').name}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda temporary: Path(temporary).write_bytes(data))
    return str(target)


def dataset_root(dataset_name: str, data_dir: str | None, data_files: Sequence[str] | None) -> Path:
    """The folder relative audio paths resolve against: the data folder, a local data file's folder or the saved
    dataset; else the working directory."""
    if data_dir:
        return Path(data_dir).expanduser().resolve()
    files = parse_data_files(data_files)
    first = (next(iter(files.values()))[0] if isinstance(files, dict) else files[0]) if files else None
    if first and Path(first).expanduser().exists():
        return Path(first).expanduser().resolve().parent
    if Path(dataset_name).expanduser().is_dir():
        return Path(dataset_name).expanduser().resolve()
    return Path.cwd()


def dataset_manifest(
    dataset_dict,
    *,
    splits: Sequence[str],
    audio_column: str = "audio",
    report_column: str | None = None,
    patient_column: str | None = None,
    required_columns: Mapping[str, str] | None = None,
    source: str = "dataset",
    root: str | os.PathLike | None = None,
    audio_dir: str | os.PathLike,
    check_files: bool = True,
) -> Manifest:
    """
    The rows of some splits of a `DatasetDict` as one [`Manifest`], with the split name of each row in
    [`SPLIT_COLUMN`].

    Args:
        dataset_dict (`datasets.DatasetDict`): the dataset.
        splits (`Sequence[str]`): the splits to read, in order; each must exist.
        audio_column (`str`, *optional*, defaults to `"audio"`): an `Audio` column or a column of file paths
            (relative paths resolve against `root`).
        report_column (`str`, *optional*): a column of ready-written reports.
        patient_column (`str`, *optional*): the patient / participant column, copied to `group_id` (default: the
            dataset's own `group_id`, if it has one).
        required_columns (`Mapping[str, str]`, *optional*): other columns that must exist, by the option naming them
            (e.g. `{"--label_column_name": "diagnosis"}`).
        source (`str`, *optional*): the dataset's name in messages and in the output folder.
        root (`str` or `os.PathLike`, *optional*): the folder relative paths resolve against (default: the
            working directory).
        audio_dir (`str` or `os.PathLike`): where recordings held only as bytes are written (content-addressed).
        check_files (`bool`, *optional*, defaults to `True`): require every audio file to exist.

    Raises:
        `ValueError`: a missing split (naming the splits there are), a missing column (naming the columns there are),
            a dataset column named like [`SPLIT_COLUMN`], an empty split, or any problem [`validate_manifest`] finds.
    """
    from datasets import Audio, ClassLabel

    check_splits(dataset_dict, splits, source, "--train_split_name / --eval_split_name")
    rows: list[dict[str, Any]] = []
    audio_dir = Path(audio_dir)
    for split in splits:
        dataset = dataset_dict[split]
        columns = list(dataset.column_names)
        where = f"{source} split {split!r}"
        check_column(columns, audio_column, where, "--audio_column_name")
        check_column(columns, report_column, where, "--report_column_name")
        check_column(columns, patient_column, where, "--patient_column_name")
        for option, column in (required_columns or {}).items():
            check_column(columns, column, where, option)
        if SPLIT_COLUMN in columns:
            raise ValueError(f"{where}: the column {SPLIT_COLUMN!r} is where acula records each row's split; rename "
                             "the dataset's column.")
        if patient_column not in (None, GROUP_COLUMN) and GROUP_COLUMN in columns:
            raise ValueError(f"{where}: --patient_column_name {patient_column!r} would replace the dataset's own "
                             f"{GROUP_COLUMN!r} column; rename one of them.")
        if len(dataset) == 0:
            raise ValueError(f"{where} has no rows.")
        audio_columns = [name for name, feature in dataset.features.items() if isinstance(feature, Audio)]
        for name in audio_columns:  # never decoded by `datasets`: decode_audio reads the files
            dataset = dataset.cast_column(name, Audio(decode=False))
        class_labels = {name: feature for name, feature in dataset.features.items() if isinstance(feature, ClassLabel)}
        for index, record in enumerate(dataset):
            row = {}
            for name, value in record.items():
                if name in class_labels and isinstance(value, int) and value >= 0:
                    value = class_labels[name].int2str(value)  # the class name is what a report and a probe read
                elif name in audio_columns and name != audio_column:
                    value = value.get("path") if isinstance(value, Mapping) else value  # no bytes kept in memory
                row[name] = _clean_value(value)
            row[audio_column] = _audio_file(record[audio_column], audio_dir, split, index)
            if row[audio_column] is None:
                raise ValueError(f"{where} row {index}: no audio in column {audio_column!r}.")
            row[SPLIT_COLUMN] = split
            if patient_column not in (None, GROUP_COLUMN):
                row[GROUP_COLUMN] = row.get(patient_column)
            rows.append(row)
    manifest = Manifest(rows=rows, root=Path(root).expanduser().resolve() if root is not None else Path.cwd(),
                        source=Path(source), audio_column=audio_column, report_column=report_column,
                        row_numbers=list(range(len(rows))), row_label="row")
    validate_manifest(manifest, check_files=check_files)
    return manifest


def load_dataset_manifest(
    dataset_name: str,
    *,
    dataset_config_name: str | None = None,
    data_dir: str | None = None,
    data_files: Sequence[str] | None = None,
    train_split_name: str = "train",
    eval_split_name: str | None = None,
    audio_column: str = "audio",
    report_column: str | None = None,
    patient_column: str | None = None,
    audio_dir: str | os.PathLike,
) -> tuple[Manifest, tuple[str, ...]]:
    """
    The alignment rows of a dataset: its training split(s) and its held-out splits, whose recordings and patients
    the leakage guard keeps out of training (guard it with `split_column=SPLIT_COLUMN` and the returned splits).

    Args:
        dataset_name, dataset_config_name, data_dir, data_files: see [`load_dataset_dict`].
        train_split_name (`str`, *optional*, defaults to `"train"`): the split(s) aligned on (`train+validation`
            joins two).
        eval_split_name (`str`, *optional*): the held-out split(s); default: every other split of the dataset.
        audio_column, report_column, patient_column, audio_dir: see [`dataset_manifest`].

    Returns:
        `(manifest, held_out_splits)`.
    """
    dataset_dict = load_dataset_dict(dataset_name, dataset_config_name, data_dir=data_dir, data_files=data_files)
    train = split_names(train_split_name)
    if not train:
        raise ValueError("--train_split_name is empty.")
    check_splits(dataset_dict, train, dataset_name, "--train_split_name")
    if eval_split_name is None:
        held_out = [name for name in dataset_dict if name not in train]
    else:
        held_out = split_names(eval_split_name)
        check_splits(dataset_dict, held_out, dataset_name, "--eval_split_name")
        both = sorted(set(train) & set(held_out))
        if both:
            raise ValueError(f"{dataset_name}: split(s) {both} are both trained on (--train_split_name) and held out "
                             "(--eval_split_name).")
    manifest = dataset_manifest(dataset_dict, splits=[*train, *held_out], audio_column=audio_column,
                                report_column=report_column, patient_column=patient_column, source=dataset_name,
                                root=dataset_root(dataset_name, data_dir, data_files), audio_dir=audio_dir)
    return manifest, tuple(held_out)


__all__ = [
    "GROUP_COLUMN",
    "SPLIT_COLUMN",
    "dataset_manifest",
    "dataset_root",
    "is_saved_dataset",
    "load_dataset_dict",
    "load_dataset_manifest",
    "parse_data_files",
    "split_names",
]
