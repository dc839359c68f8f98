"""The prefix cache: the frozen bottom of a Whisper encoder, computed once per training window.

With LoRA on the top `k` layers of a Whisper encoder (`--lora_top_layers`, 2 of Whisper-base's 6 by default), the
convolution stem, the positions and the `depth - k` layers below the first adapter never change during a run: their
output is a fixed function of the window's spectrogram, and so is the frozen start's pooled embedding that the
feature-distillation (preservation) term compares with. Both are computed once, like the spectrograms and the
teacher vectors, and every training forward (the gradient-caching passes and the preservation term included) runs
only the top `k` layers, the final layer norm, the pooling and the heads.

One entry per recording, a float32 safetensors file through [`~acula_train.tensor_cache.TensorCache`] (same layout,
atomic writes, checksums; no pickles):

    hidden_states      (num_frames, d_model)  the output of the first `prefix_layers` layers
    audio_frame_mask   (num_frames,)          1.0 for the frames that hold audio (what the pooling averages)
    start_embedding    (d_model,)             the frozen start encoder's pooled embedding (preservation target)

The identity of an entry (its cache sub-folder; a changed one misses) is everything that decides its content: a
sha256 of the frozen prefix's weights and one of the whole start encoder's (the target runs the layers above
too), the layer index, the backbone settings that enter the computation (the window is its position count), the
spectrogram cache's identity (the feature-extractor settings and window) and the dtypes. A path names none of them:
the same start in another folder hits, another start in the same folder misses.

The cache applies only where the prefix is a fixed function of the window: a Whisper backbone trained with LoRA
(not `--full_finetune`) whose prefix draws no dropout or layer drop (Whisper-base's dropouts are all 0). The prefix
is computed in float32 whatever `--mixed_precision` says (the top layers then run under autocast as before).

Disk: `num_frames x d_model x 4` bytes per recording, 1.0 MB for Whisper-base on a 10 s window.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from modeling_acula.modeling_acula import is_whisper_config

from .tensor_cache import TensorCache

PREFIX_CACHE_FORMAT = 1
PREFIX_TENSORS = ("hidden_states", "audio_frame_mask", "start_embedding")
# Whisper settings that enter the prefix's computation (weights aside); the window is `max_source_positions`.
BACKBONE_FIELDS = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "activation_function",
                   "num_mel_bins", "max_source_positions", "scale_embedding", "dropout", "attention_dropout",
                   "activation_dropout", "encoder_layerdrop")
# The dropout settings that make a prefix a random function of its input in training mode.
RANDOM_FIELDS = ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop")


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes (in name order): the weights' identity, wherever
    they were loaded from."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}\n".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def frozen_prefix_layers(config, *, full_finetune: bool, top_layers: int | None) -> tuple[int | None, str]:
    """How many layers of the run's encoder form its frozen prefix, or `None` with the reason the prefix cache does
    not apply.

    Args:
        config ([`~modeling_acula.AculaConfig`]): the alignment model's configuration.
        full_finetune (`bool`): `--full_finetune` (every layer trains: nothing is frozen).
        top_layers (`int`, *optional*): the adapted top layers (`None`: adapters on every layer; the stem and
            positions are still frozen, a prefix of 0 layers).
    """
    backbone = config.audio_backbone_config
    if full_finetune:
        return None, "--full_finetune trains every layer"
    if not is_whisper_config(backbone):
        return None, "the prefix cache splits Whisper backbones only"
    random = {name: getattr(backbone, name, 0.0) for name in RANDOM_FIELDS if getattr(backbone, name, 0.0)}
    if random:
        return None, f"the Whisper backbone draws dropout or layer drop ({random}), so its prefix is not fixed"
    depth = backbone.encoder_layers
    return depth - (top_layers or depth), f"layers 0-{depth - (top_layers or depth) - 1} of {depth} are frozen"


def prefix_cache_identity(encoder: torch.nn.Module, prefix_layers: int, spectrogram_identity: str) -> dict[str, Any]:
    """Everything that decides a prefix-cache entry (see the module docstring).

    Args:
        encoder ([`~modeling_acula.AculaModel`]): the start encoder (before adapters are added).
        prefix_layers (`int`): the layers of the frozen prefix.
        spectrogram_identity (`str`): the spectrogram cache's `identity_hash` (feature-extractor settings, window).
    """
    backbone = encoder.config.audio_backbone_config
    state = encoder.state_dict()
    prefix_names = ("backbone.conv1.", "backbone.conv2.", "backbone.embed_positions.",
                    *(f"backbone.layers.{i}." for i in range(prefix_layers)))
    dtypes = sorted({str(value.dtype) for value in state.values()})
    return {
        "format": PREFIX_CACHE_FORMAT,
        "prefix_layers": prefix_layers,
        "prefix_weights_sha256": state_dict_sha256({k: v for k, v in state.items() if k.startswith(prefix_names)}),
        "start_encoder_sha256": state_dict_sha256(state),
        "backbone": {name: getattr(backbone, name, None) for name in BACKBONE_FIELDS},
        "attention": getattr(backbone, "_attn_implementation", None),
        "spectrograms": spectrogram_identity,
        "compute_dtype": dtypes,
        "stored_dtype": "float32",
    }


def prefix_cache(cache_dir: str | Path, encoder: torch.nn.Module, prefix_layers: int,
                 spectrograms: TensorCache) -> TensorCache:
    """The prefix cache of `encoder`'s first `prefix_layers` layers on `spectrograms`' windows, under
    `<cache_dir>/prefix` (a sub-folder per identity)."""
    identity = prefix_cache_identity(encoder, prefix_layers, spectrograms.identity_hash)
    return TensorCache(Path(cache_dir) / "prefix", identity, kind="encoder prefix")


@dataclass
class PrefixCacheStats:
    """What [`prepare_prefix_cache`] did (this process's share, and the whole cache's size)."""

    rows: int
    hits: int
    computed: int
    seconds: float
    folder: Path

    def disk_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.folder.glob("??/*.safetensors"))


@torch.no_grad()
def prepare_prefix_cache(manifest, encoder: torch.nn.Module, prefix_layers: int, spectrograms: TensorCache,
                         cache: TensorCache, accelerator: Accelerator, batch_size: int = 16) -> PrefixCacheStats:
    """Compute the entry of every row that the cache lacks (split across processes, in batches, from the cached
    spectrograms), so that training only reads. Every process waits for the others at the end.

    Args:
        manifest ([`~acula_train.manifest.Manifest`]): the rows to train on.
        encoder ([`~modeling_acula.AculaModel`]): the start encoder (before adapters are added); run in eval mode,
            and left on the accelerator's device.
        prefix_layers (`int`): the layers of the frozen prefix.
        spectrograms ([`TensorCache`]): the filled spectrogram cache.
        cache ([`TensorCache`]): see [`prefix_cache`].
        accelerator (`accelerate.Accelerator`): the run's; splits the rows between processes.
        batch_size (`int`, *optional*, defaults to 16): windows per forward pass.
    """
    started = time.time()
    was_training = encoder.training
    encoder.eval().to(accelerator.device)
    with accelerator.split_between_processes(list(range(len(manifest)))) as mine:
        todo = [index for index in mine if cache.get_tensors(manifest.audio_paths[index], PREFIX_TENSORS) is None]
        bar = tqdm(total=len(todo), desc="encoder prefix", unit="rec",
                   disable=not (todo and accelerator.is_local_main_process))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            inputs = []
            for index in chunk:
                spectrogram = spectrograms.get(manifest.audio_paths[index])
                if spectrogram is None:
                    raise ValueError(f"The prefix cache needs the spectrogram of {manifest.describe_row(index)}, "
                                     f"which is not in the spectrogram cache {spectrograms.folder}.")
                inputs.append(spectrogram)
            batch = torch.stack(inputs).to(accelerator.device)
            hidden, frame_mask = encoder.forward_prefix(batch, prefix_layers)
            start_embedding = encoder.forward_from_layer(hidden, prefix_layers, frame_mask,
                                                         return_dict=True).pooler_output
            for row, index in enumerate(chunk):
                cache.put_tensors(manifest.audio_paths[index], {
                    "hidden_states": hidden[row].float(), "audio_frame_mask": frame_mask[row].float(),
                    "start_embedding": start_embedding[row].float()})
            bar.update(len(chunk))
        bar.close()
        stats = PrefixCacheStats(rows=len(mine), hits=len(mine) - len(todo), computed=len(todo),
                                 seconds=0.0, folder=cache.folder)
    encoder.train(was_training)
    accelerator.wait_for_everyone()
    stats.seconds = time.time() - started
    return stats


class PrefixStateDataset(Dataset):
    """
    The training items of a run with the prefix cache: the cached prefix states of each row (read from disk per
    item, so that memory holds only the batches in flight) with its teacher vector.

    Args:
        manifest ([`~acula_train.manifest.Manifest`]): the rows, in training order.
        cache ([`TensorCache`]): the filled prefix cache (see [`prepare_prefix_cache`]).
        teacher_vectors (`torch.Tensor`, *optional*): `(len(manifest), teacher width)`.
        labels (`torch.Tensor`, *optional*): `(len(manifest),)` class indices (the supervised objective).

    Items are dicts `{"prefix_hidden_states", "audio_frame_mask", "preservation_target", "index"}` plus
    `"teacher_embeds"` and/or `"labels"` when given.
    """

    def __init__(self, manifest, cache: TensorCache, teacher_vectors: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None) -> None:
        for name, values in (("teacher_vectors", teacher_vectors), ("labels", labels)):
            if values is not None and values.shape[0] != len(manifest):
                raise ValueError(f"{name} must have one row per row of {manifest.source} ({len(manifest)}), got "
                                 f"{tuple(values.shape)}.")
        self.manifest, self.cache, self.teacher_vectors, self.labels = manifest, cache, teacher_vectors, labels

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.manifest):
            raise IndexError(f"index {index} out of range for {len(self.manifest)} recordings.")
        entry = self.cache.get_tensors(self.manifest.audio_paths[index], PREFIX_TENSORS)
        if entry is None:
            raise ValueError(f"The prefix cache {self.cache.folder} has no usable entry for "
                             f"{self.manifest.describe_row(index)} (deleted or damaged during the run?); run again: "
                             "the cache is refilled before training (or pass --prefix_cache false).")
        item: dict[str, Any] = {"prefix_hidden_states": entry["hidden_states"],
                                "audio_frame_mask": entry["audio_frame_mask"],
                                "preservation_target": entry["start_embedding"], "index": index}
        if self.teacher_vectors is not None:
            item["teacher_embeds"] = self.teacher_vectors[index]
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


__all__ = [
    "PREFIX_TENSORS",
    "PrefixCacheStats",
    "PrefixStateDataset",
    "frozen_prefix_layers",
    "prefix_cache",
    "prefix_cache_identity",
    "prepare_prefix_cache",
    "state_dict_sha256",
]
