"""An on-disk cache of one tensor (or a few named tensors) per (identity, recording): the spectrograms that training
reads (identity = the feature extractor's settings), the frozen encoder prefix's states of the prefix cache (identity
= the start's weights, the layer, the spectrograms; see `prefix_cache.py`) and the embeddings that evaluation reads
(identity = the model).

Decoding + resampling + featurizing (or embedding) a recording gives the same tensor every time, so it is done
once and stored. Layout (one safetensors file per recording, written atomically):

    <folder>/<identity hash[:16]>/identity.json        the featurizer identity, for humans and checks
    <folder>/<identity hash[:16]>/<key[:2]>/<key>.safetensors

Choices:

- Key = sha256 of (featurizer identity hash, the audio file's sha256). Content, not path and mtime: data that is
  copied, moved or re-extracted (a shared dataset whose files get new mtimes at each mount) keeps its entries, and
  a file edited in place misses. Each file is read once per process (`memoized_file_sha256`; later lookups only
  `stat` it), about 1.5 s per GB, far below decoding. `key_mode="stat"` keys on (resolved path, size, mtime_ns)
  instead: no read at all, but every new mtime is a miss.
- A different featurizer identity gets its own sub-folder instead of being refused: several feature
  settings can share one cache folder, and a stale entry can never be read for the wrong settings.
- One file per key, written to a temporary file in the same folder and moved into place with
  `os.replace` (atomic on POSIX and Windows): several processes (DDP ranks, DataLoader workers) may
  write the same key at once; readers see either no file or a complete one. Two levels of folders
  keep directories small at 100k recordings.
- Every entry records each tensor's shape, dtype and CRC-32 in the safetensors metadata; `get` serves
  an entry only if the file parses, those match, and the values are finite. Anything else (a damaged
  file, NaN written into it, another tensor, an entry without these records) is logged and treated as
  a miss, so the spectrogram is recomputed and the entry rewritten.

Clearing: the cache is a plain folder. Deleting it, or one identity sub-folder, is always safe (the
spectrograms are recomputed on the next run); just do not delete it while a run is writing to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from modeling_acula.file_utils import atomic_write, memoized_file_sha256

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
KEY_MODES = ("stat", "content")
_TENSOR_NAME = "input_values"


def _checksum(tensor: torch.Tensor) -> str:
    """CRC-32 of a tensor's bytes (any dtype, bfloat16 included), as 8 hex digits."""
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def _tensor_records(metadata: Mapping[str, str]) -> dict[str, dict[str, Any]] | None:
    """The per-tensor records (shape, dtype, CRC-32) an entry's metadata holds, or None if it holds none."""
    if "tensors" in metadata:  # entries of several tensors (and every entry written since they exist)
        return json.loads(metadata["tensors"])
    if "shape" in metadata and "dtype" in metadata and "crc32" in metadata:  # one-tensor entries of version 1
        return {_TENSOR_NAME: {"shape": json.loads(metadata["shape"]), "dtype": metadata["dtype"],
                               "crc32": metadata["crc32"]}}
    return None


def _entry_problem(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], identity_sha256: str,
                   names: tuple[str, ...] = (_TENSOR_NAME,)) -> str | None:
    """Why a parsed entry must not be served, or None if it is sound."""
    for name in names:
        if name not in tensors:
            return f"no tensor {name!r}"
    if metadata.get("identity_sha256") != identity_sha256:
        return "written for another featurizer identity"
    records = _tensor_records(metadata)
    if records is None:
        return "no shape/dtype/checksum record (written by an older version or by something else)"
    for name in names:
        tensor, record = tensors[name], records.get(name)
        if record is None:
            return f"no shape/dtype/checksum record of {name!r}"
        if list(record["shape"]) != list(tensor.shape):
            return f"{name}: shape {list(tensor.shape)} != recorded {record['shape']}"
        if str(tensor.dtype) != record["dtype"]:
            return f"{name}: dtype {tensor.dtype} != recorded {record['dtype']}"
        if _checksum(tensor) != record["crc32"]:
            return f"{name}: checksum mismatch (damaged data)"
    # No finiteness check here: `put` refuses NaN/Inf, and the checksum says these are the bytes it wrote (the
    # check cost ~50 us of the ~200 us of a read).
    return None


def _json_default(value: Any) -> Any:
    """Make featurizer identities JSON-able: arrays (e.g. mel filter banks) become a digest of their bytes."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()
        return {"ndarray_sha256": digest, "shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, set)):
        return sorted(value) if isinstance(value, set) else list(value)
    raise TypeError(f"featurizer identity value of type {type(value).__name__} is not JSON-serializable: {value!r}")


def identity_hash(featurizer_identity: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a featurizer identity (sorted keys)."""
    if not isinstance(featurizer_identity, Mapping):
        raise TypeError(f"featurizer_identity must be a mapping, got {type(featurizer_identity).__name__}.")
    payload = {"cache_format": CACHE_FORMAT_VERSION, "featurizer": featurizer_identity}
    text = json.dumps(payload, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TensorCache:
    """
    Spectrograms on disk, one safetensors file per (featurizer identity, recording).

    Args:
        folder (`str` or `os.PathLike`): cache folder (created); entries go to a sub-folder per identity.
        featurizer_identity (`Mapping[str, Any]`): everything that decides the spectrogram, e.g.
            `feature_extractor.to_dict()` plus the sampling rate. Arrays are hashed by content.
        key_mode (`str`, *optional*, defaults to `"content"`): `"content"` keys on the file's sha256, `"stat"` on
            path + size + mtime_ns (see the module docstring).
        kind (`str`, *optional*, defaults to `"spectrogram"`): what the entries are, for messages (the prefix
            cache of `acula_train.prefix_cache` stores encoder states with the same layout).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        featurizer_identity: Mapping[str, Any],
        *,
        key_mode: str = "content",
        kind: str = "spectrogram",
    ) -> None:
        if key_mode not in KEY_MODES:
            raise ValueError(f"key_mode must be one of {KEY_MODES}, got {key_mode!r}.")
        self.key_mode = key_mode
        self.kind = kind
        self.identity = dict(featurizer_identity)
        self.identity_hash = identity_hash(featurizer_identity)
        self.root = Path(folder).expanduser().resolve()
        self.folder = self.root / self.identity_hash[:16]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_identity()

    def _write_identity(self) -> None:
        identity_file = self.folder / "identity.json"
        record = {"identity_sha256": self.identity_hash, "cache_format": CACHE_FORMAT_VERSION}
        record["featurizer"] = json.loads(json.dumps(self.identity, sort_keys=True, default=_json_default))
        if identity_file.exists():
            try:
                stored = json.loads(identity_file.read_text(encoding="utf-8")).get("identity_sha256")
            except (json.JSONDecodeError, OSError):
                stored = None
            if stored is not None and stored != self.identity_hash:
                raise ValueError(
                    f"{self.kind} cache {self.folder} belongs to featurizer identity {stored}, not "
                    f"{self.identity_hash}; remove the folder or use another cache folder."
                )
            if stored is not None:
                return
        atomic_write(identity_file, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2), "utf-8"))


    def key(self, path: str | os.PathLike) -> str:
        """Cache key of an audio file under this featurizer identity."""
        path = Path(path).expanduser().resolve()
        try:  # one stat per lookup: the content key's memo stats the file itself
            if self.key_mode == "content":
                parts: dict[str, Any] = {"sha256": memoized_file_sha256(path)}
            else:
                stat = path.stat()
                parts = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        except OSError as error:
            raise ValueError(f"{path}: cannot read the audio file for the {self.kind} cache ({error}).") from error
        parts["identity"] = self.identity_hash
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()

    def entry_path(self, path: str | os.PathLike) -> Path:
        """Where the spectrogram of `path` is (or would be) stored."""
        key = self.key(path)
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, path: str | os.PathLike) -> torch.Tensor | None:
        """The cached spectrogram of `path`, or `None` on a miss.

        An entry that cannot be parsed, or whose shape, dtype or checksum differ from what `put` recorded (which
        only writes finite values), counts as a miss (with a warning): it is never served."""
        tensors = self.get_tensors(path, (_TENSOR_NAME,))
        return None if tensors is None else tensors[_TENSOR_NAME]

    def get_tensors(self, path: str | os.PathLike, names: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
        """The cached tensors `names` of `path` (an entry written by [`put_tensors`]), or `None` on a miss (an
        entry that lacks one of them, or fails the checks of [`get`], is a miss)."""
        entry = self.entry_path(path)
        if not entry.is_file():
            return None
        try:
            with safe_open(str(entry), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            problem = _entry_problem(tensors, metadata, self.identity_hash, tuple(names))
        except (SafetensorError, OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
            problem = f"unreadable: {error}"
        if problem is not None:
            logger.warning("%s cache entry %s for %s is not usable (%s); recomputing it.", self.kind, entry, path,
                           problem)
            return None
        return {name: tensors[name] for name in names}

    def put(self, path: str | os.PathLike, tensor: torch.Tensor) -> Path:
        """Store the spectrogram of `path` atomically; returns the entry file."""
        return self.put_tensors(path, {_TENSOR_NAME: tensor})

    def put_tensors(self, path: str | os.PathLike, tensors: Mapping[str, torch.Tensor]) -> Path:
        """Store several named tensors of `path` as one entry, atomically; returns the entry file."""
        entry = self.entry_path(path)
        data, records = {}, {}
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{self.kind} {name!r} of {path} must be a torch.Tensor, got {type(tensor).__name__}.")
            stored = tensor.detach().cpu().contiguous()
            if stored.is_floating_point() and not torch.isfinite(stored).all():
                raise ValueError(f"{self.kind} {name!r} of {path} holds NaN or Inf values: it is not cached (nor to "
                                 "be trained on).")
            data[name] = stored
            records[name] = {"shape": list(stored.shape), "dtype": str(stored.dtype), "crc32": _checksum(stored)}
        metadata = {
            "audio_path": str(Path(path).resolve()),
            "identity_sha256": self.identity_hash,
            "tensors": json.dumps(records, sort_keys=True),
        }
        if _TENSOR_NAME in records:  # also the version-1 records, which older readers of the spectrogram cache check
            metadata.update(shape=json.dumps(records[_TENSOR_NAME]["shape"]), dtype=records[_TENSOR_NAME]["dtype"],
                            crc32=records[_TENSOR_NAME]["crc32"])
        atomic_write(entry, lambda tmp: save_file(data, tmp, metadata=metadata))
        return entry

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("??/*.safetensors"))
