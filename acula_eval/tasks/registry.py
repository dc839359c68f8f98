"""The task registry (`TASKS`, filled by the task-family modules as they are imported) and [`load_task`], which runs
a task's loader and turns its rows into [`TaskData`]."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from modeling_acula.file_utils import default_dev_pack

from .specs import LoadContext, TaskData, TaskSpec, clean_value

TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task to the registry (names are unique)."""
    if spec.name in TASKS:
        raise ValueError(f"Task {spec.name!r} is already registered.")
    if spec.kind not in ("classification", "regression"):
        raise ValueError(f"Task {spec.name!r}: kind must be 'classification' or 'regression', got {spec.kind!r}.")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; available: {sorted(TASKS)} (see --list_tasks).")
    return TASKS[name]


def list_tasks(family: str | None = None) -> list[TaskSpec]:
    return [spec for spec in TASKS.values() if family is None or spec.family == family]



def load_task(
    spec: TaskSpec | str,
    *,
    dev_pack: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    circor: str | os.PathLike | None = None,
    max_recordings: int | None = None,
    seed: int = 0,
) -> TaskData:
    """
    Run a task's loader and turn its rows into [`TaskData`].

    Args:
        spec (`TaskSpec` or `str`): the task or its name.
        dev_pack (`str` or `os.PathLike`, *optional*): the dev pack folder (default: `$ACULA_DEV_PACK`, else
            `../shared/data/auscultation-dev` next to the repository).
        data_root (`str` or `os.PathLike`, *optional*): folder holding the public datasets of the OPERA tasks.
        circor (`str` or `os.PathLike`, *optional*): the CirCor DigiScope folder in its official layout (holding
            `training_data.csv`) of the CirCor tasks (default: `$ACULA_CIRCOR`).
        max_recordings (`int`, *optional*): subsample to at most this many units (recordings, or patients of a
            pooled task; stratified).
        seed (`int`, *optional*, defaults to 0): seed of the subsampling.
    """
    spec = get_task(spec) if isinstance(spec, str) else spec
    context = LoadContext(
        dev_pack=Path(dev_pack) if dev_pack is not None else default_dev_pack(),
        data_root=Path(data_root) if data_root is not None else None,
        **({"circor": Path(circor).expanduser()} if circor is not None else {}),
    )
    raw_rows = spec.loader(context)
    paths, labels, groups, known, rows, splits = [], [], [], [], [], []
    for row in raw_rows:
        raw = row["target"] if "target" in row else row.get("label")
        if spec.kind == "classification":
            raw = clean_value(raw)
            if raw is None:
                continue
            if spec.label_map is not None:
                if raw not in spec.label_map:
                    continue
                raw = spec.label_map[raw]
        else:
            try:
                raw = float(raw)
            except (TypeError, ValueError):
                continue
            if not np.isfinite(raw):
                continue
        path = Path(row["path"])
        group = clean_value(row.get("group_id"))
        paths.append(path)
        labels.append(raw)
        known.append(group is not None)
        groups.append(group if group is not None else f"recording:{os.path.realpath(path)}")
        rows.append(row)
        splits.append(clean_value(row.get("split")))
    if not paths:
        raise ValueError(f"Task {spec.name!r}: the loader found no usable recordings (after the label mapping).")
    members = None
    if spec.pool_by is not None:
        paths, labels, groups, known, rows, splits, members = _pool_units(
            spec, paths, labels, groups, known, rows, splits)
    if spec.kind == "classification":
        classes = list(spec.classes) if spec.classes else sorted(set(labels))
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise ValueError(f"Task {spec.name!r}: labels {unknown} are not among its classes {classes}.")
        label_array = np.array([classes.index(label) for label in labels], dtype=np.int64)
        present = sorted(set(label_array.tolist()))
        if len(present) < 2:
            raise ValueError(f"Task {spec.name!r}: only class {classes[present[0]]!r} is present; need two or more.")
    else:
        classes = []
        label_array = np.array(labels, dtype=np.float64)
    data = TaskData(
        spec=spec,
        paths=paths,
        labels=label_array,
        classes=classes,
        groups=np.array(groups, dtype=object),
        known_groups=np.array(known, dtype=bool),
        rows=rows,
        split_values=np.array(splits, dtype=object) if any(s is not None for s in splits) else None,
        members=members,
    )
    return data.subsample(max_recordings, seed) if max_recordings else data


def _pool_units(spec: TaskSpec, paths, labels, groups, known, rows, splits):
    """Merge the recordings sharing `spec.pool_by` into one unit (a patient): the unit's path is its first
    recording's, its row the values all its recordings share (plus `num_recordings`); label, group and split must be
    the same for all of them."""
    units: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        key = clean_value(row.get(spec.pool_by))
        if key is None:
            raise ValueError(f"Task {spec.name!r}: recording {paths[i]} has no {spec.pool_by!r} to pool by.")
        units.setdefault(key, []).append(i)
    pooled: tuple[list, ...] = ([], [], [], [], [], [], [])
    for key, indices in units.items():
        for name, values in (("label", labels), ("group", groups), ("split", splits)):
            found = {values[i] for i in indices}
            if len(found) > 1:
                raise ValueError(f"Task {spec.name!r}: the recordings of {spec.pool_by} {key} have different "
                                 f"{name}s {sorted(map(str, found))}; a pooled unit needs one.")
        first = indices[0]
        shared = {column: value for column, value in rows[first].items()
                  if column != "path" and all(rows[i].get(column) == value for i in indices)}
        shared["num_recordings"] = len(indices)
        for target, value in zip(pooled, (paths[first], labels[first], groups[first], known[first], shared,
                                          splits[first], tuple(paths[i] for i in indices))):
            target.append(value)
    return pooled
