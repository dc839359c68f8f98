"""The frozen bottom of a Whisper encoder, computed once for every model of an evaluation that shares it.

A start encoder and its top-layer LoRA runs (the aligned model, the supervised ceiling, every run of a recipe study)
carry bit-identical weights below their first adapted layer, so their first `num_layers` layers give the same hidden
states for the same window. [`SharedPrefixStore`] keeps those states on disk, one float32 safetensors file per window,
named by the sha256 of the window's spectrogram, in a folder named by the sha256 of the prefix weights
(`acula_train.prefix_cache.state_dict_sha256`) and the layer count. The first model computes them; every other
model with the same bottom reads them back and runs only its top layers (`AculaModel.forward_from_layer`), about a
third of Whisper-base's cost with `num_layers=4`. The embeddings are those of the whole encoder (a test holds them
to 1e-5); a model with other bottom weights (random weights, a full fine-tune) gets a folder of its own.

Disk: `frames x d_model x 4` bytes per window, 1.0 MB for Whisper-base on a 10 s window.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from acula_train.prefix_cache import state_dict_sha256
from modeling_acula.file_utils import atomic_write


class SharedPrefixStore:
    """
    Hidden states after the first `num_layers` layers of a Whisper-backed [`~modeling_acula.AculaModel`], stored per
    window and shared by every model with the same bottom weights.

    Args:
        model ([`~modeling_acula.AculaModel`]): the encoder (a Whisper backbone; anything else is a `ValueError`).
        num_layers (`int`): the layers of the shared bottom (Whisper-base with LoRA on its top 2 layers: 4).
        root (`str` or `os.PathLike`): the store's folder (a sub-folder per bottom).
    """

    def __init__(self, model: torch.nn.Module, num_layers: int, root: str | Path):
        model._whisper_backbone("SharedPrefixStore")
        model._check_prefix_layers(num_layers, "SharedPrefixStore")
        state = model.state_dict()
        names = ("backbone.conv1.", "backbone.conv2.", "backbone.embed_positions.",
                 *(f"backbone.layers.{i}." for i in range(num_layers)))
        identity = {"prefix_weights_sha256": state_dict_sha256({k: v for k, v in state.items() if k.startswith(names)}),
                    "num_layers": num_layers, "attention": getattr(model.config.audio_backbone_config,
                                                                   "_attn_implementation", None)}
        self.key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.model, self.num_layers = model, num_layers
        self.folder = Path(root) / self.key[:24]
        self.hits = self.computed = 0

    @staticmethod
    def window_digest(window: torch.Tensor) -> str:
        """sha256 of a window's spectrogram (shape, dtype and bytes)."""
        window = window.detach().cpu().contiguous()
        digest = hashlib.sha256(f"{window.dtype}|{list(window.shape)}\n".encode())
        digest.update(window.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def _load(self, path: Path) -> dict[str, torch.Tensor] | None:
        try:
            return load_file(str(path))
        except (OSError, SafetensorError):  # absent, or torn by a crash: computed again
            return None

    @torch.inference_mode()
    def hidden_states(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(hidden_states, audio_frame_mask)` of `windows` (spectrograms as `AculaModel.forward` takes them), read
        back where stored and computed with `forward_prefix` (then stored) where not."""
        paths = [self.folder / f"{self.window_digest(window)}.safetensors" for window in windows]
        entries = [self._load(path) for path in paths]
        missing = [i for i, entry in enumerate(entries) if entry is None]
        if missing:
            hidden, mask = self.model.forward_prefix(windows[missing], self.num_layers)
            for row, i in enumerate(missing):
                entry = {"hidden_states": hidden[row].float().cpu().contiguous(),
                         "audio_frame_mask": mask[row].cpu().contiguous()}
                atomic_write(paths[i], lambda temporary, entry=entry: save_file(entry, temporary))
                entries[i] = entry
        self.hits += len(windows) - len(missing)
        self.computed += len(missing)
        device = windows.device
        return (torch.stack([entry["hidden_states"] for entry in entries]).to(device),
                torch.stack([entry["audio_frame_mask"] for entry in entries]).to(device))

    def pooled(self, windows: torch.Tensor) -> torch.Tensor:
        """The encoder's `pooler_output` for `windows`, through the stored bottom and the model's own top layers."""
        hidden, mask = self.hidden_states(windows)
        return self.model.forward_from_layer(hidden, self.num_layers, mask).pooler_output
