"""Write a release folder (a delta, or a rebuilt model) beside its target and rename it into place: an interrupted
export or rebuild never leaves half a folder where a good one is expected."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_folder(output: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty hidden sibling of `output` to write into; on success it replaces `output`.

    Args:
        output (`str` or `os.PathLike`): the folder to write.
        overwrite (`bool`, *optional*, defaults to `False`): replace a non-empty `output` (else refused up front).

    Raises:
        `FileExistsError`: `output` is a file, or a non-empty folder without `overwrite`.
    """
    output = Path(output).absolute()
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass --overwrite to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.staging-"))
    try:
        yield staging
        umask = os.umask(0)  # mkdtemp makes an owner-only folder; publish with the usual modes
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        if output.exists():
            previous = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.previous-"))
            os.replace(output, previous / output.name)
            os.replace(staging, output)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def folder_megabytes(folder: Path) -> float:
    """Size of the files under `folder`, in MB (10^6 bytes)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6


__all__ = ["folder_megabytes", "staged_folder"]
