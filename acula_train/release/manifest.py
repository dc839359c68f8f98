"""The manifest of a release delta (`release.json`): what the delta applies to, the sha256 of each of its files, and
the weights hashes the rebuild must reproduce."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from modeling_acula.file_utils import file_sha256, verify_sha256s, write_json_atomic

MANIFEST_NAME = "release.json"
MANIFEST_FORMAT = "acula-release/1"
# Files that would be pickles; a delta holds safetensors and JSON / Markdown only.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz"})


class ReleaseError(ValueError):
    """A delta, its base or its result is not what the release manifest records; the message says what differs."""


def list_files(folder: Path) -> list[str]:
    """The files of `folder` as sorted POSIX paths relative to it, hidden entries left out (a checkout's or an
    editor's files are no part of a release)."""
    names = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            names.append(relative.as_posix())
    return sorted(names)


def file_table(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """`{relative path: {"sha256", "bytes"}}` for the named files of `folder`."""
    return {name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size} for name in names}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write `manifest` (its file table already filled) as `folder/release.json`."""
    path = folder / MANIFEST_NAME
    write_json_atomic(path, {"format": MANIFEST_FORMAT, **manifest})
    return path


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check the manifest of a release folder and every file it lists.

    Args:
        folder (`str` or `os.PathLike`): the release (delta) folder.

    Returns:
        `dict`: the manifest.

    Raises:
        [`ReleaseError`]: the manifest is missing, unreadable or of another format; a listed file is missing or its
            sha256 differs (the message names the file and both hashes); a file is present that the manifest does
            not list, or a pickle is present.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ReleaseError(f"{path} is missing or unreadable ({error}): not an acula release folder") from error
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ReleaseError(f"{path} has format {manifest.get('format')!r}; this acula reads {MANIFEST_FORMAT}")
    verify_sha256s(folder, ((name, entry["sha256"]) for name, entry in files.items()), MANIFEST_NAME,
                   error=ReleaseError, mismatch="altered")
    unlisted = [name for name in list_files(folder) if name != MANIFEST_NAME and name not in files]
    if unlisted:
        raise ReleaseError(f"{folder} holds files its {MANIFEST_NAME} does not list: {', '.join(unlisted)}")
    pickles = [name for name in files if Path(name).suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ReleaseError(f"{folder} lists pickle files ({', '.join(pickles)}); a release holds safetensors and JSON")
    return manifest


__all__ = ["MANIFEST_NAME", "ReleaseError", "file_table", "list_files", "read_manifest", "write_manifest"]
