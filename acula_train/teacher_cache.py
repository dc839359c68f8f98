"""Compute the frozen teacher's vectors once and keep them on disk.

The teacher and the reports are fixed, so each report's vector only needs computing once. A cache root
holds one sub-folder per teacher identity, so several teachers / layers / poolings / max lengths share
one root without ever mixing:

    <root>/<identity hash[:16]>/index.json      {"format_version", "identity", "entries": {key: [shard, row]}}
    <root>/<identity hash[:16]>/shard-<run>-p<i>of<n>.safetensors
                                                tensor "embeddings" (rows, hidden), float32; metadata
                                                "keys" = JSON list of the rows' keys, "truncated" = count
    <root>/<identity hash[:16]>/.lock           taken (filelock) while the index is merged

The identity is what `AculaTeacher.identity` says decides the vectors: layer, pooling, max_length,
dtype, hidden size, and for a Hub model its name, revision and (when known) resolved commit; for a local
folder its `content_hash` (a hash of its config, weights and tokenizer files) instead of its path, so
new weights in the same folder get a new sub-folder and a copy of the same files elsewhere reuses the
cached vectors. A key is sha256(identity JSON + "\\n" + text).

A root written before sub-folders existed (`<root>/index.json`) is still read when its identity is this
teacher's; a teacher of another identity ignores it and uses its own sub-folder.

Safety: every file is written to a temporary name in the same folder and moved into place with
`os.replace` (atomic), so a crash leaves at worst an unused shard, never a corrupt index or shard.
Several runs may share a root at once (also on a shared file system with working `flock`; on Windows
through filelock's native lock): the index is merged under an exclusive lock, re-reading what other runs
added, so no run loses another's entries. The lock is released by the OS if a run dies.

Clearing: the cache is a plain folder. Deleting it, or one identity sub-folder, is always safe (the
vectors are recomputed on the next run); just do not delete it while a run is writing to it.

Typical use: call `get_or_compute` once with all reports before training and keep the returned tensor
in memory (lookups read whole shards, so they are not meant for per-batch use).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import save_file

from modeling_acula.file_utils import atomic_write, write_json_atomic
from .teacher import AculaTeacher, validate_texts

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
LOCK_NAME = ".lock"
FORMAT_VERSION = 1
_TENSOR_NAME = "embeddings"
_TMP_PREFIX = ".tmp-"
# The fields every teacher identity must have.
IDENTITY_FIELDS = ("name_or_path", "revision", "layer", "pooling", "max_length", "dtype", "hidden_size")
# The fields that decide the vectors of a teacher loaded from a local folder: its files, not its path.
CONTENT_IDENTITY_FIELDS = ("content_hash", "layer", "pooling", "max_length", "dtype", "hidden_size")
_FIELD_ORDER = ("name_or_path", "revision", "content_hash", "layer", "pooling", "max_length", "dtype", "hidden_size")


@dataclass
class CacheStats:
    """What one `get_or_compute` call did (summed over all processes).

    Args:
        requested: number of texts asked for (duplicates included).
        unique: number of distinct texts among them.
        hits: requested texts whose vector was already in the cache.
        computed: distinct texts the teacher encoded in this call.
        truncated: of those, the texts longer than the teacher's max_length (cut before encoding).
    """

    requested: int = 0
    unique: int = 0
    hits: int = 0
    computed: int = 0
    truncated: int = 0


def _key_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity fields that decide the vectors (and so the keys and the sub-folder).

    A local-folder teacher (`content_hash` set) is identified by its files, not by its path or revision;
    a Hub teacher by its name and revision (the resolved commit is compared separately, when known)."""
    missing = [field for field in IDENTITY_FIELDS if field not in identity]
    if missing:
        raise ValueError(f"The teacher identity lacks the fields {missing} (expected {list(IDENTITY_FIELDS)}).")
    fields = CONTENT_IDENTITY_FIELDS if identity.get("content_hash") else IDENTITY_FIELDS
    return {field: identity[field] for field in fields}


def identity_folder_name(identity: dict[str, Any]) -> str:
    """Name of the sub-folder of a cache root that holds the vectors of this teacher identity."""
    payload = dict(_key_identity(identity))
    if identity.get("commit_hash"):
        payload["commit_hash"] = identity["commit_hash"]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _identity_differences(cached: dict[str, Any], teacher: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (cached value, teacher value)} for the fields that decide the vectors and differ."""
    old, new = _key_identity(cached), _key_identity(teacher)
    differences = {
        field: (old.get(field), new.get(field))
        for field in _FIELD_ORDER
        if (field in old or field in new) and old.get(field) != new.get(field)
    }
    # The resolved Hub commit only counts when both sides know it.
    cached_commit, teacher_commit = cached.get("commit_hash"), teacher.get("commit_hash")
    if cached_commit and teacher_commit and cached_commit != teacher_commit:
        differences["commit_hash"] = (cached_commit, teacher_commit)
    return differences


def _process_info(accelerator: Any) -> tuple[int, int]:
    """(process_index, num_processes) of an `accelerate.Accelerator` / `PartialState`, or (0, 1)."""
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


def folder_lock(folder: str | os.PathLike) -> FileLock:
    """Exclusive lock on a cache folder (`<folder>/.lock`) between processes, and between threads of this
    process; use it as a context manager. One lock object per folder (filelock's singleton), re-entrant within a
    thread, so nested use by two cache objects on the same folder in one thread cannot deadlock. The OS releases
    it if the process dies.

    Args:
        folder (`str` or `os.PathLike`): the folder to lock (spellings of one folder share one lock).
    """
    return FileLock(os.path.realpath(os.path.join(folder, LOCK_NAME)), is_singleton=True)


class TeacherEmbeddingCache:
    """Teacher vectors on disk, keyed by teacher identity and text.

    Args:
        folder: the cache root (created if needed). Each teacher identity gets its own sub-folder
            `<folder>/<identity hash[:16]>/` (see the module docstring), so one root holds any number of
            teachers, layers, poolings and max lengths; an old-layout root (`<folder>/index.json`) is
            used as is when it holds this identity.
        teacher_identity: `AculaTeacher.identity` (or the same dict as recorded in a saved model).

    Raises:
        ValueError: if the identity lacks fields, or the identity folder's index is unreadable.

    Attributes:
        root: the cache root given.
        folder: the folder that holds this identity's index and shards.
        last_stats: `CacheStats` of the latest `get_or_compute` call, for logging.
    """

    def __init__(self, folder: str | os.PathLike, teacher_identity: dict[str, Any]) -> None:
        self.root = Path(folder)
        self.identity = dict(teacher_identity)
        self._key_identity_json = json.dumps(_key_identity(self.identity), sort_keys=True)
        self.last_stats = CacheStats()
        self.root.mkdir(parents=True, exist_ok=True)
        self.folder = self._identity_folder()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, tuple[str, int]] = {}
        self._reload()

    def _identity_folder(self) -> Path:
        """`<root>/<identity hash>`, or the root itself when it is an old-layout cache of this identity."""
        legacy_index = self.root / INDEX_NAME
        if legacy_index.is_file():
            try:
                with open(legacy_index, encoding="utf-8") as file:
                    index = json.load(file)
                if index.get("format_version") != FORMAT_VERSION:
                    raise ValueError(f"format_version={index.get('format_version')!r}")
                differences = _identity_differences(index.get("identity", {}), self.identity)
            except (OSError, ValueError) as error:
                logger.warning("Ignoring the old-layout teacher cache %s (%s).", legacy_index, error)
            else:
                if not differences:
                    return self.root
                logger.info(
                    "The old-layout teacher cache %s holds another teacher (%s): ignored, this teacher's vectors "
                    "go to a sub-folder.", legacy_index, ", ".join(differences),
                )
        return self.root / identity_folder_name(self.identity)

    @property
    def index_path(self) -> Path:
        return self.folder / INDEX_NAME

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, text: str) -> bool:
        return self.key(text) in self._entries

    def key(self, text: str) -> str:
        """The cache key of `text` under this cache's teacher identity."""
        return hashlib.sha256((self._key_identity_json + "\n" + text).encode("utf-8")).hexdigest()

    def _check_identity(self, cached: dict[str, Any], teacher: dict[str, Any], source: str) -> None:
        differences = _identity_differences(cached, teacher)
        if differences:
            details = "; ".join(f"{field}: cache {old!r} != teacher {new!r}" for field, (old, new) in differences.items())
            raise ValueError(
                f"{source} was built for another teacher ({details}). Open a TeacherEmbeddingCache with this "
                f"teacher's identity (same root folder is fine: each identity has its own sub-folder)."
            )

    def _reload(self) -> None:
        """Read `index.json` (if any): the entries of every run that merged so far."""
        if not self.index_path.exists():
            self._entries = {}
            return
        try:
            with open(self.index_path, encoding="utf-8") as file:
                index = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.index_path} is not valid JSON ({error}): delete {self.folder}.") from error
        if index.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{self.index_path} has format_version={index.get('format_version')!r}, expected {FORMAT_VERSION}: "
                f"delete {self.folder} to rebuild it."
            )
        self._check_identity(index.get("identity", {}), self.identity, f"The teacher cache {self.index_path}")
        self._entries = {key: (shard, int(row)) for key, (shard, row) in index["entries"].items()}

    def _write_index(self) -> None:
        payload = {
            "format_version": FORMAT_VERSION,
            "identity": self.identity,
            "entries": {key: [shard, row] for key, (shard, row) in self._entries.items()},
        }
        write_json_atomic(self.index_path, payload, indent=1)

    def _write_shard(self, name: str, keys: list[str], embeddings: torch.Tensor, truncated: int = 0) -> None:
        metadata = {"keys": json.dumps(keys), "identity": self._key_identity_json, "truncated": str(int(truncated))}
        tensors = {_TENSOR_NAME: embeddings.to(torch.float32).contiguous()}
        atomic_write(self.folder / name, lambda temp_path: save_file(tensors, temp_path, metadata=metadata))

    def _shard_rows(self, names: list[str]) -> tuple[dict[str, tuple[str, int]], int]:
        """({key: (shard, row)}, truncated texts) of freshly written shards, from their metadata."""
        rows: dict[str, tuple[str, int]] = {}
        truncated = 0
        for name in names:
            path = self.folder / name
            if not path.exists():
                raise ValueError(f"Teacher cache shard {path} is missing: a process failed to write it.")
            with safe_open(path, framework="pt") as shard:
                metadata = shard.metadata() or {}
            if metadata.get("identity") != self._key_identity_json:
                raise ValueError(f"Teacher cache shard {path} was written for another teacher identity.")
            for row, key in enumerate(json.loads(metadata["keys"])):
                rows[key] = (name, row)
            truncated += int(metadata.get("truncated", 0))
        return rows, truncated

    def _merge_rows(self, rows: dict[str, tuple[str, int]]) -> None:
        """Add rows to `index.json` under the folder lock, keeping what other runs added meanwhile."""
        with folder_lock(self.folder):
            self._reload()  # the index as other runs left it, read inside the lock
            self._entries.update(rows)
            self._write_index()

    def _read(self, keys: list[str]) -> torch.Tensor:
        hidden_size = int(self.identity["hidden_size"])
        result = torch.empty(len(keys), hidden_size, dtype=torch.float32)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            shard, row = self._entries[key]
            by_shard.setdefault(shard, []).append((position, row))
        for shard, pairs in by_shard.items():
            with safe_open(self.folder / shard, framework="pt") as file:
                embeddings = file.get_tensor(_TENSOR_NAME)
            positions, rows = zip(*pairs)
            result[list(positions)] = embeddings[list(rows)]
        return result

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        """Cached vectors of `texts`, in order (also those other runs added since this object was made).

        Raises:
            KeyError: naming the indices of texts that are not cached.
        """
        texts = validate_texts(texts)
        keys = [self.key(text) for text in texts]
        if any(key not in self._entries for key in keys):
            known = self._entries
            self._reload()  # another run may have added them
            self._entries = {**known, **self._entries}
        missing = [index for index, key in enumerate(keys) if key not in self._entries]
        if missing:
            shown = missing[:20]
            more = f" (and {len(missing) - len(shown)} more)" if len(missing) > len(shown) else ""
            raise KeyError(f"{len(missing)} texts are not in the teacher cache {self.folder}: indices {shown}{more}.")
        return self._read(keys)

    def get_or_compute(
        self,
        texts: Sequence[str],
        teacher: AculaTeacher,
        batch_size: int = 32,
        accelerator: Any = None,
        show_progress: bool = True,
    ) -> torch.Tensor:
        """Vectors of `texts`, encoding only the distinct texts not cached yet.

        With several processes every process must call this with the same `texts`: the missing texts
        are split between processes, each writes its own shard, the main process merges the index after
        a barrier, and every process then reads the full result. Other runs may use the same folder at
        the same time: the index is merged under a file lock.

        Args:
            texts: the texts; none may be empty or whitespace-only.
            teacher: the teacher; its identity must be this cache's.
            batch_size: teacher batch size.
            accelerator: an `accelerate.Accelerator` or `PartialState`, or None for a single process.
            show_progress: show a progress bar (main process only).

        Returns:
            `(len(texts), hidden_size)` float32 tensor on CPU. `self.last_stats` says what was done.
        """
        texts = validate_texts(texts)
        self._check_identity(self.identity, teacher.identity, f"The teacher cache {self.folder}")
        process_index, num_processes = _process_info(accelerator)
        is_main = process_index == 0

        keys = [self.key(text) for text in texts]
        # Distinct missing texts in first-seen order: the same list on every process.
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in self._entries and key not in missing:
                missing[key] = text
        self.last_stats = CacheStats(
            requested=len(texts),
            unique=len(set(keys)),
            hits=sum(key in self._entries for key in keys),
            computed=len(missing),
        )

        if missing:
            missing_keys = list(missing)
            # A name shared by all processes without communication: derived from the work itself.
            run = hashlib.sha256("\n".join(missing_keys).encode("utf-8")).hexdigest()[:16]
            shard_names = [f"shard-{run}-p{index}of{num_processes}.safetensors" for index in range(num_processes)]
            if accelerator is None:
                own_keys = missing_keys
            else:
                with accelerator.split_between_processes(missing_keys) as split:
                    own_keys = list(split)
            if own_keys:
                embeddings = teacher.encode(
                    [missing[key] for key in own_keys], batch_size=batch_size, show_progress=show_progress and is_main
                )
                truncated = int(getattr(teacher, "last_truncated", 0) or 0)
                self._write_shard(shard_names[process_index], own_keys, embeddings, truncated)
            if accelerator is not None:
                accelerator.wait_for_everyone()
            # Processes that got no texts wrote no shard (split sizes differ by at most one).
            written = [name for index, name in enumerate(shard_names) if index < len(missing_keys)]
            rows, truncated_total = self._shard_rows(written)
            if is_main:
                self._merge_rows(rows)
            if accelerator is not None:
                accelerator.wait_for_everyone()
            self._reload()
            # This run's rows are read from its own shards whatever the index says meanwhile.
            self._entries.update(rows)
            self.last_stats.truncated = truncated_total
        return self._read(keys)
