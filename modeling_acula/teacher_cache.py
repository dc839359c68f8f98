"""Compute the frozen teacher's vectors once and keep them on disk.

The teacher and the reports are fixed, so each report's vector only needs computing once. A cache is
a folder of safetensors shards plus `index.json`:

    index.json                      {"format_version", "identity", "entries": {key: [shard, row]}}
    shard-<run>-p<i>of<n>.safetensors   tensor "embeddings" (rows, hidden), float32;
                                        metadata "keys" = JSON list of the rows' keys

A key is sha256(teacher identity JSON + "\\n" + text), so a vector is never reused for another teacher,
layer, pooling, truncation or dtype. Every file is written to a temporary name in the same folder and
then moved into place with `os.replace` (atomic), so a crash leaves at worst an unused shard, never a
corrupt index or shard.

Typical use: call `get_or_compute` once with all reports before training and keep the returned tensor
in memory (lookups read whole shards, so they are not meant for per-batch use).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .file_utils import atomic_write, write_json_atomic
from .teacher import AculaTeacher, validate_texts

INDEX_NAME = "index.json"
FORMAT_VERSION = 1
_TENSOR_NAME = "embeddings"
_TMP_PREFIX = ".tmp-"
# The fields that decide the vectors; a cache built with other values is refused.
IDENTITY_FIELDS = ("name_or_path", "revision", "layer", "pooling", "max_length", "dtype", "hidden_size")


@dataclass
class CacheStats:
    """What one `get_or_compute` call did (summed over all processes).

    Args:
        requested: number of texts asked for (duplicates included).
        unique: number of distinct texts among them.
        hits: requested texts whose vector was already in the cache.
        computed: distinct texts the teacher encoded in this call.
    """

    requested: int = 0
    unique: int = 0
    hits: int = 0
    computed: int = 0


def _key_identity(identity: dict[str, Any]) -> dict[str, Any]:
    missing = [field for field in IDENTITY_FIELDS if field not in identity]
    if missing:
        raise ValueError(f"The teacher identity lacks the fields {missing} (expected {list(IDENTITY_FIELDS)}).")
    return {field: identity[field] for field in IDENTITY_FIELDS}


def _process_info(accelerator: Any) -> tuple[int, int]:
    """(process_index, num_processes) of an `accelerate.Accelerator` / `PartialState`, or (0, 1)."""
    if accelerator is None:
        return 0, 1
    return accelerator.process_index, accelerator.num_processes


class TeacherEmbeddingCache:
    """Teacher vectors on disk, keyed by teacher identity and text.

    Args:
        folder: the cache folder (created if needed). One folder holds one teacher identity.
        teacher_identity: `AculaTeacher.identity` (or the same dict as recorded in a saved model).

    Raises:
        ValueError: if the folder's index was built for a different identity.

    Attributes:
        last_stats: `CacheStats` of the latest `get_or_compute` call, for logging.
    """

    def __init__(self, folder: str | os.PathLike, teacher_identity: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.identity = dict(teacher_identity)
        self._key_identity_json = json.dumps(_key_identity(self.identity), sort_keys=True)
        self.last_stats = CacheStats()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, tuple[str, int]] = {}
        self._reload()

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
        differences = {
            field: (cached.get(field), teacher.get(field))
            for field in IDENTITY_FIELDS
            if cached.get(field) != teacher.get(field)
        }
        # The resolved Hub commit only counts when both sides know it (a local folder has none).
        cached_commit, teacher_commit = cached.get("commit_hash"), teacher.get("commit_hash")
        if cached_commit and teacher_commit and cached_commit != teacher_commit:
            differences["commit_hash"] = (cached_commit, teacher_commit)
        if differences:
            details = "; ".join(f"{field}: cache {old!r} != teacher {new!r}" for field, (old, new) in differences.items())
            raise ValueError(
                f"{source} was built for another teacher ({details}). Use a new cache folder for this teacher, "
                f"or delete {self.folder} to rebuild it."
            )

    def _reload(self) -> None:
        """Read `index.json` (if any) and check it belongs to this teacher identity."""
        if not self.index_path.exists():
            self._entries = {}
            return
        try:
            with open(self.index_path, encoding="utf-8") as file:
                index = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.index_path} is not valid JSON ({error}): delete the cache folder.") from error
        if index.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{self.index_path} has format_version={index.get('format_version')!r}, expected {FORMAT_VERSION}: "
                "delete the cache folder to rebuild it."
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

    def _write_shard(self, name: str, keys: list[str], embeddings: torch.Tensor) -> None:
        metadata = {"keys": json.dumps(keys), "identity": self._key_identity_json}
        tensors = {_TENSOR_NAME: embeddings.to(torch.float32).contiguous()}
        atomic_write(self.folder / name, lambda temp_path: save_file(tensors, temp_path, metadata=metadata))

    def _merge_shards(self, names: list[str]) -> None:
        """Add the rows of freshly written shards to the index (main process only)."""
        for name in names:
            path = self.folder / name
            if not path.exists():
                raise ValueError(f"Teacher cache shard {path} is missing: a process failed to write it.")
            with safe_open(path, framework="pt") as shard:
                metadata = shard.metadata() or {}
            if metadata.get("identity") != self._key_identity_json:
                raise ValueError(f"Teacher cache shard {path} was written for another teacher identity.")
            for row, key in enumerate(json.loads(metadata["keys"])):
                self._entries[key] = (name, row)
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
        """Cached vectors of `texts`, in order.

        Raises:
            KeyError: naming the indices of texts that are not cached.
        """
        texts = validate_texts(texts)
        keys = [self.key(text) for text in texts]
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
        a barrier, and every process then reads the full result.

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
                self._write_shard(shard_names[process_index], own_keys, embeddings)
            if accelerator is not None:
                accelerator.wait_for_everyone()
            if is_main:
                # Processes that got no texts wrote no shard (split sizes differ by at most one).
                written = [name for index, name in enumerate(shard_names) if index < len(missing_keys)]
                self._merge_shards(written)
            if accelerator is not None:
                accelerator.wait_for_everyone()
            self._reload()
        return self._read(keys)
