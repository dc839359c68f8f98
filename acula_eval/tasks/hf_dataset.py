"""One evaluation task from a `datasets` dataset: an audio column, a label column, and either a train and a test split
or a patient column for grouped K-fold (`eval_acula.py --dataset_name ...`).

The rows are read as training reads them (`acula_train.hf_datasets`: audio never decoded by `datasets`, embedded
bytes written once into acula's cache), so a dataset aligned on and a dataset evaluated on are the same recordings,
and the evaluator's leakage check matches them by content.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acula_train.hf_datasets import (
    GROUP_COLUMN,
    SPLIT_COLUMN,
    dataset_manifest,
    dataset_root,
    load_dataset_dict,
    split_names,
)
from modeling_acula.file_utils import acula_cache_dir

from .specs import LoadContext, TaskSpec
from .split_policy import SplitPolicy

# Where recordings that a dataset holds only as bytes are written (content-addressed), as training does.
DATASETS_AUDIO_CACHE = "datasets-audio"


def default_task_name(dataset_name: str, label_column: str) -> str:
    """`heart-sounds/diagnosis` for a folder or Hub id `.../heart-sounds` and the label column `diagnosis`."""
    return f"{Path(dataset_name.rstrip('/')).name}/{label_column}"


def dataset_task(
    dataset_name: str,
    *,
    label_column: str,
    audio_column: str = "audio",
    dataset_config_name: str | None = None,
    data_dir: str | None = None,
    data_files: Sequence[str] | None = None,
    train_split_name: str | None = None,
    eval_split_name: str | None = None,
    patient_column: str | None = None,
    task_name: str | None = None,
    kind: str = "classification",
    n_splits: int = 5,
    audio_dir: str | os.PathLike | None = None,
) -> TaskSpec:
    """
    The [`TaskSpec`] of a dataset (not registered: pass it to [`load_task`] as it is).

    With `train_split_name` and `eval_split_name` the probe trains on the one and is tested on the other (the same
    split for every seed); otherwise the rows of `train_split_name` (default: every split) are cut into `n_splits`
    stratified folds grouped by `patient_column` (without one, each recording is its own patient).

    Args:
        dataset_name (`str`): a Hub id, a builder (`audiofolder`, `csv`, ...) or a `save_to_disk` folder.
        label_column (`str`): the column holding each recording's class (or target, for `kind="regression"`).
        audio_column (`str`, *optional*, defaults to `"audio"`): an `Audio` column or a column of file paths.
        dataset_config_name, data_dir, data_files: as `datasets.load_dataset` takes them (`data_files`: `a.csv` or
            `train=a.csv test=b.csv`).
        train_split_name (`str`, *optional*): the probe-training split (`train+validation` joins two).
        eval_split_name (`str`, *optional*): the test split; needs `train_split_name`.
        patient_column (`str`, *optional*): the patient / participant column (default: the dataset's `group_id`).
        task_name (`str`, *optional*): the task's name in the results (default: `<dataset>/<label column>`).
        kind (`str`, *optional*, defaults to `"classification"`): or `"regression"`.
        n_splits (`int`, *optional*, defaults to 5): folds of the grouped K-fold.
        audio_dir (`str` or `os.PathLike`, *optional*): where embedded bytes are written (default: acula's cache).
    """
    if eval_split_name and not train_split_name:
        raise ValueError("--eval_split_name needs --train_split_name (the split the probe trains on).")
    train, held_out = split_names(train_split_name), split_names(eval_split_name)
    if held_out:
        policy = SplitPolicy(kind="column", column=SPLIT_COLUMN, train_values=tuple(train),
                             test_values=tuple(held_out))
    else:
        policy = SplitPolicy(kind="group_kfold", n_splits=n_splits)
    name = task_name or default_task_name(dataset_name, label_column)

    def load(context: LoadContext) -> list[dict[str, Any]]:
        dataset_dict = load_dataset_dict(dataset_name, dataset_config_name, data_dir=data_dir, data_files=data_files)
        splits = [*train, *held_out] or list(dataset_dict)
        manifest = dataset_manifest(
            dataset_dict, splits=splits, audio_column=audio_column, patient_column=patient_column,
            required_columns={"--label_column_name": label_column}, source=dataset_name,
            root=dataset_root(dataset_name, data_dir, data_files),
            audio_dir=audio_dir if audio_dir is not None else acula_cache_dir(DATASETS_AUDIO_CACHE))
        # `target` is the task's label; the row's own columns stay as they are (a `label` column among them).
        return [{**row, "path": path, "target": row.get(label_column), "split": row[SPLIT_COLUMN],
                 "group_id": row.get(GROUP_COLUMN)} for path, row in zip(manifest.audio_paths, manifest.rows)]

    grouping = f"grouped {n_splits}-fold by {patient_column or GROUP_COLUMN}" if not held_out else (
        f"probe on {'+'.join(train)}, tested on {'+'.join(held_out)}")
    return TaskSpec(name=name, description=f"{label_column} of {dataset_name} ({grouping})", loader=load, kind=kind,
                    split=policy, metric="roc_auc" if kind == "classification" else "mae", family="datasets",
                    source=dataset_name)


__all__ = ["DATASETS_AUDIO_CACHE", "dataset_task", "default_task_name"]
