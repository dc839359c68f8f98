"""The registry of public dataset layouts acula reads as they are published ([`DatasetLayout`], [`register_layout`],
[`load_layout`]). One module per layout registers itself; adding a dataset is adding one file."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..manifest import Manifest, validate_manifest


@dataclass(frozen=True)
class DatasetLayout:
    """
    A dataset in its publisher's own layout.

    Args:
        name (`str`): registry key, e.g. `"circor"`.
        description (`str`): one line for `--list` and the README.
        read (`Callable[..., list[dict]]`): `read(root, **options)` returns one row per recording, its `file` relative
            to `root`, with a `group_id` (patient) column; it raises a `ValueError` naming every missing, unreadable or
            inconsistent file.
        expected_files (`tuple[str, ...]`): what `root` must hold (named in the error when it does not).
        citation (`str`): how to cite the dataset.
        licence (`str`): its licence, copied into every row's `license` column.
        split_column (`str`, *optional*): the column of the deterministic split the reader writes, if any.
    """

    name: str
    description: str
    read: Callable[..., list[dict[str, Any]]]
    expected_files: tuple[str, ...] = ()
    citation: str = ""
    licence: str = ""
    split_column: str | None = "split"

    def check_root(self, root: Path) -> None:
        if not root.is_dir():
            raise ValueError(f"{self.name}: {root} is not a folder.")
        missing = [name for name in self.expected_files if not (root / name).exists()]
        if missing:
            raise ValueError(
                f"{self.name}: {root} does not look like the {self.name} layout; missing {missing} "
                f"(expected {list(self.expected_files)})."
            )


LAYOUTS: dict[str, DatasetLayout] = {}


def register_layout(layout: DatasetLayout) -> DatasetLayout:
    """Add a layout to the registry (names are unique)."""
    if layout.name in LAYOUTS:
        raise ValueError(f"Dataset layout {layout.name!r} is already registered.")
    LAYOUTS[layout.name] = layout
    return layout


def get_layout(name: str) -> DatasetLayout:
    if name not in LAYOUTS:
        raise ValueError(f"Unknown dataset layout {name!r}; acula reads {sorted(LAYOUTS)}.")
    return LAYOUTS[name]


def load_layout(name: str, root: str | os.PathLike, **options: Any) -> Manifest:
    """
    Read a dataset in its own layout into a [`~acula_train.manifest.Manifest`] (one row per recording, audio paths
    relative to `root`), validated like any manifest.

    Args:
        name (`str`): the layout, e.g. `"circor"` (see `LAYOUTS`).
        root (`str` or `os.PathLike`): the dataset's top folder as published.
        **options: passed to the layout's reader (e.g. `split_seed`, `verify_checksums`).
    """
    layout = get_layout(name)
    root = Path(root).expanduser().resolve()
    layout.check_root(root)
    rows = layout.read(root, **options)
    if not rows:
        raise ValueError(f"{name}: no recordings found under {root}.")
    manifest = Manifest(rows=rows, root=root, source=root, row_numbers=list(range(len(rows))), row_label="recording")
    validate_manifest(manifest)
    return manifest
