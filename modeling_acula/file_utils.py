"""Small file helpers shared by the caches, the leakage guard and the training script."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
# The variable naming the development pack (a folder holding `metadata.csv`), for the tests, benchmarks and the
# dev-pack evaluation tasks; without it they look beside the repository (`../shared/data/auscultation-dev`).
DEV_PACK_ENV = "ACULA_DEV_PACK"
IN_TREE_DEV_PACK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "auscultation-dev"
# The variable that moves every acula cache (converted starts, spectrograms, teacher vectors, embeddings).
CACHE_ENV = "ACULA_CACHE"


def acula_cache_dir(subfolder: str | None = None) -> Path:
    """The one place acula keeps its caches: `$ACULA_CACHE` when set (read at each call), else the Hugging Face
    assets cache (`huggingface_hub.cached_assets_path("acula")`, under `$HF_HOME`), so `HF_HOME` moves it too.

    Args:
        subfolder (`str`, *optional*): a named cache inside it (`"pretrained"`, `"spectrograms"`, `"teacher"`,
            `"embeddings"`). The folder is not created.
    """
    if os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV]).expanduser()
    else:
        from huggingface_hub import constants

        # cached_assets_path(library_name="acula") without its mkdir: a lookup must not create folders.
        root = Path(constants.HF_ASSETS_CACHE) / "acula" / "default" / "default"
    return root / subfolder if subfolder else root


def default_dev_pack() -> Path:
    """The development pack folder: `$ACULA_DEV_PACK` when set (read at each call), else
    `../shared/data/auscultation-dev` beside the repository. The folder is not checked to exist."""
    return Path(os.environ.get(DEV_PACK_ENV) or IN_TREE_DEV_PACK).expanduser()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# sha256 of the files already hashed in this process, keyed on (real path, size, mtime_ns, inode).
_KNOWN_SHA256: dict[tuple[str, int, int, int], str] = {}
_KNOWN_SHA256_LOCK = threading.Lock()


def memoized_file_sha256(path: str | os.PathLike) -> str:
    """`file_sha256`, read once per process per file version: a file whose real path, size, mtime and inode are
    unchanged is not read again (caches key every epoch's lookups on content; the leakage guard hashes every
    evaluated recording once per model). Thread-safe."""
    stat = os.stat(path)
    memo_key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _KNOWN_SHA256_LOCK:
        known = _KNOWN_SHA256.get(memo_key)
    if known is None:
        known = file_sha256(path)
        with _KNOWN_SHA256_LOCK:
            _KNOWN_SHA256[memo_key] = known
    return known


def verify_sha256s(folder: str | os.PathLike, recorded: Iterable[tuple[str, str]], record_name: str, *,
                   error: type[Exception] = ValueError, mismatch: str = "damaged") -> None:
    """Check files of `folder` against the sha256 a record file lists for them, in the record's order.

    Args:
        folder (`str` or `os.PathLike`): the folder the names are relative to.
        recorded (`Iterable[tuple[str, str]]`): `(relative path, hex sha256)` pairs, as `record_name` lists them.
        record_name (`str`): the record's file name, for the messages (e.g. `"release.json"`).
        error (`type`, *optional*, defaults to `ValueError`): the exception to raise.
        mismatch (`str`, *optional*, defaults to `"damaged"`): what a file whose sha256 differs is called.

    Raises:
        `error`: at the first file that is missing (the message names it and its recorded sha256) or whose sha256
            differs (the message names it, its sha256 and the recorded one).
    """
    for name, expected in recorded:
        path = Path(folder) / name
        if not path.is_file():
            raise error(f"{path} is missing (listed in {record_name} with sha256 {expected})")
        actual = file_sha256(path)
        if actual != expected:
            raise error(f"{path} is {mismatch}: its sha256 is {actual}, {record_name} records {expected}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write a file through `write(temporary_path)` and rename it to `path` only when complete.

    The temporary file lives in the same folder (so the rename is atomic on POSIX and Windows) and is removed if
    `write` fails: a crash leaves either the old file or the new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, payload: Any, indent: int = 2) -> None:
    """`json.dump` through [`atomic_write`], flushed to disk before the rename."""

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=indent, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)


__all__ = ["acula_cache_dir", "atomic_write", "default_dev_pack", "file_sha256", "memoized_file_sha256", "verify_sha256s",
           "write_json_atomic"]
