"""Convert an OPERA-GT checkpoint (github evelyn0414/OPERA) into an [`AculaModel`] folder (config + safetensors).

OPERA-GT is a masked-autoencoder ViT-Small trained with PyTorch Lightning; its encoder keys follow timm's ViT names
(`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`),
next to the MAE decoder (`decoder_*`, `mask_token`). The released AcuLa training does reuse that Swin-style decoder
(it loads it from the OPERA-GT checkpoint, so masked-audio modeling starts from a pretrained decoder); acula's
decoder is a plain transformer started from random weights (see `--decoder_warmup_steps` of `train_acula.py`), so
this converter keeps the encoder only and lists the decoder keys it leaves out. Usage:

```bash
acula-convert-opera encoder-operaGT.ckpt ./opera-gt-acula
```

The source file is read with `torch.load(weights_only=True)`; a Lightning file whose extra entries are arbitrary
pickled objects is refused unless `--allow-unsafe-pickle` is given, because unpickling runs code from the file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import pickle
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers.initialization import no_init_weights
from transformers.utils import logging

from .configuration_acula import PRESETS, AculaConfig
from .modeling_acula import AculaModel

logger = logging.get_logger(__name__)

# The key that anchors the encoder: whatever precedes it is the checkpoint's prefix (`""`, `encoder.`, ...).
ANCHOR_KEY = "patch_embed.proj.weight"
# Keys of the MAE decoder (the Swin-style decoder of OPERA-GT): the released AcuLa reuses them, acula's plain
# decoder cannot, so they are left out and reported.
UNUSED_KEY_PATTERN = re.compile(r"^(decoder_.*|mask_token)$")
# Keys in the timm ViT encoder's namespace; one of these left unmapped would change the embedding if dropped
# (a LayerScale `ls1.gamma`, an `fc_norm`, a q/k norm), so strict conversion refuses it.
ENCODER_NAMESPACE_PATTERN = re.compile(r"^(patch_embed|cls_token|pos_embed|blocks|norm|fc_norm|reg_token|dist_token)(\.|$)")
BLOCK_KEY_PATTERN = re.compile(r"^blocks\.(\d+)\.(.+)$")

# timm name -> AcuLa name, outside the blocks and inside block N (`{i}`). The fused `attn.qkv` is split apart.
TOP_LEVEL_KEYS = {
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
BLOCK_KEYS = {
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
FUSED_QKV_KEYS = {"attn.qkv.weight": "weight", "attn.qkv.bias": "bias"}
UNSAFE_PICKLE_OPT_IN = "allow_unsafe_pickle=True (command line: --allow-unsafe-pickle)"


@dataclass
class OperaConversionReport:
    """What a conversion used, left out and could not fill.

    Args:
        source_prefix (`str`): prefix of the encoder keys in the source (`""` when there is none).
        num_mapped_keys (`int`): source keys converted into AcuLa weights (a fused qkv counts once).
        unmapped_keys (`list[str]`): every source key that was not converted, by its full source name.
        unknown_encoder_keys (`list[str]`): the unmapped keys in the encoder's own namespace (neither the MAE
            decoder nor another module), which strict conversion refuses.
        missing_keys (`list[str]`): every `AculaModel` weight that the source does not provide.
        architecture (`dict`): sizes read from the source tensors.
    """

    source_prefix: str
    num_mapped_keys: int
    unmapped_keys: list[str] = field(default_factory=list)
    unknown_encoder_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    architecture: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """A human-readable summary listing every unmapped and missing key."""
        lines = [
            f"OPERA-GT conversion: {self.num_mapped_keys} source keys mapped (encoder prefix {self.source_prefix!r}).",
            f"Architecture read from the checkpoint: {json.dumps(self.architecture)}",
            f"Unmapped source keys ({len(self.unmapped_keys)}; the MAE decoder's are expected):",
        ]
        lines += [
            f"  - {key}" + ("  [UNKNOWN encoder key]" if key in self.unknown_encoder_keys else "")
            for key in self.unmapped_keys
        ]
        lines.append(f"Missing AculaModel keys ({len(self.missing_keys)}):")
        lines += [f"  - {key}" for key in self.missing_keys]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def load_checkpoint_state_dict(
    path: str | Path, *, allow_unsafe_pickle: bool = False
) -> dict[str, torch.Tensor]:
    """Read the tensors of a `.safetensors` file or of a torch checkpoint (`.ckpt`, `.pt`, `.pth`, ...).

    A torch file is read with `torch.load(weights_only=True)`, which only rebuilds tensors and plain containers.
    PyTorch Lightning files often also pickle arbitrary objects (hyper-parameters, callbacks); unpickling those
    can run any code the file's author chose, so such a file is refused unless `allow_unsafe_pickle=True`. A
    `state_dict` entry (Lightning) is unwrapped.

    Args:
        path (`str` or `Path`): the checkpoint file.
        allow_unsafe_pickle (`bool`, *optional*, defaults to `False`):
            Fall back to `torch.load(weights_only=False)` for a file that the safe loader refuses. Only for files
            from a source you trust.

    Returns:
        `dict[str, torch.Tensor]`: the weights, on CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not allow_unsafe_pickle:
            raise ValueError(
                f"Refusing to load {str(path)!r}: besides tensors it holds pickled Python objects (typical of "
                "PyTorch Lightning hyper-parameters), and unpickling them can execute arbitrary code from the file. "
                f"If you trust where the file comes from, pass {UNSAFE_PICKLE_OPT_IN}. "
                f"Safe loader's message: {str(error).splitlines()[0]}"
            ) from error
        logger.warning(
            f"Loading {str(path)!r} with weights_only=False (allow_unsafe_pickle=True): this runs the file's pickled "
            "code; do this only for checkpoints from a trusted source."
        )
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return _unwrap_state_dict(checkpoint, path)


def _unwrap_state_dict(checkpoint: object, path: Path) -> dict[str, torch.Tensor]:
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"{str(path)!r} holds a {type(checkpoint).__name__}, not a state dict (a mapping of names to tensors, "
            "optionally under a 'state_dict' entry)."
        )
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise TypeError(
            f"{str(path)!r}: the state dict has non-tensor entries {not_tensors[:5]}; expected names mapped to "
            "tensors (a Lightning checkpoint keeps them under 'state_dict')."
        )
    return {str(key): value for key, value in state_dict.items()}


def detect_encoder_prefix(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The text before `patch_embed.proj.weight` (`""`, `"encoder."`, `"model.encoder."`, ...).

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): the source weights.
    """
    prefixes = sorted(
        key[: -len(ANCHOR_KEY)]
        for key in state_dict
        if key.endswith(ANCHOR_KEY) and (key == ANCHOR_KEY or key[: -len(ANCHOR_KEY)].endswith("."))
    )
    if not prefixes:
        raise ValueError(
            f"No '{ANCHOR_KEY}' key found: this is not a timm-style ViT (OPERA-GT) state dict. "
            f"First keys: {list(state_dict)[:8]}"
        )
    if len(prefixes) > 1:
        raise ValueError(f"Several ViT encoders in the state dict (prefixes {prefixes}); cannot tell which to convert.")
    return prefixes[0]


def _read_architecture(encoder: Mapping[str, torch.Tensor]) -> dict:
    """Sizes that the (prefix-stripped) timm ViT tensors determine; the number of heads is not among them."""
    patch = encoder[ANCHOR_KEY]
    if patch.dim() != 4:
        raise ValueError(f"'{ANCHOR_KEY}' must be a 4-D convolution kernel, got shape {tuple(patch.shape)}.")
    block_ids = sorted({int(match.group(1)) for key in encoder if (match := BLOCK_KEY_PATTERN.match(key))})
    if block_ids != list(range(len(block_ids))):
        raise ValueError(f"The checkpoint's encoder blocks are not numbered 0..N-1: found {block_ids}.")
    architecture = {
        "hidden_size": int(patch.shape[0]),
        "num_channels": int(patch.shape[1]),
        "patch_size": [int(patch.shape[2]), int(patch.shape[3])],
        "num_hidden_layers": len(block_ids),
        "qkv_bias": "blocks.0.attn.qkv.bias" in encoder,
    }
    if "pos_embed" in encoder:
        architecture["num_positions"] = int(encoder["pos_embed"].shape[1])
    if "blocks.0.mlp.fc1.weight" in encoder:
        architecture["intermediate_size"] = int(encoder["blocks.0.mlp.fc1.weight"].shape[0])
    return architecture


def _check_architecture(architecture: dict, config: AculaConfig) -> None:
    expected = {
        "hidden_size": config.hidden_size,
        "num_channels": config.num_channels,
        "patch_size": list(config.patch_size),
        "num_hidden_layers": config.num_hidden_layers,
        "qkv_bias": config.qkv_bias,
        "num_positions": config.num_patches + 1,
        "intermediate_size": config.intermediate_size,
    }
    mismatches = [
        f"{name}: checkpoint {architecture[name]}, config {value}"
        for name, value in expected.items()
        if name in architecture and architecture[name] != value
    ]
    if mismatches:
        raise ValueError(
            "The checkpoint does not match the AculaConfig ("
            + "; ".join(mismatches)
            + "). num_positions is 1 + the patch grid of spectrogram_size / patch_size "
            f"{config.spectrogram_size} / {config.patch_size}. Pass a config that describes this checkpoint."
        )


def _target_shapes(config: AculaConfig) -> dict[str, torch.Size]:
    # Built on the meta device: the key names and shapes come from the model itself, at no memory cost.
    with torch.device("meta"):
        model = AculaModel(config)
    return {key: value.shape for key, value in model.state_dict().items()}


def _map_encoder_key(name: str, tensor: torch.Tensor, hidden_size: int) -> dict[str, torch.Tensor] | None:
    """AcuLa weights for one prefix-stripped timm key, or `None` when the key has no AcuLa counterpart."""
    if name in TOP_LEVEL_KEYS:
        return {TOP_LEVEL_KEYS[name]: tensor}
    match = BLOCK_KEY_PATTERN.match(name)
    if match is None:
        return None
    layer, rest = match.groups()
    target = f"encoder.layer.{layer}."
    if rest in BLOCK_KEYS:
        return {target + BLOCK_KEYS[rest]: tensor}
    if rest in FUSED_QKV_KEYS:
        # timm's qkv Linear stacks the query, key and value outputs along dim 0, in that order.
        if tensor.shape[0] != 3 * hidden_size:
            raise ValueError(
                f"'{name}' has shape {tuple(tensor.shape)}; a fused qkv needs 3 * hidden_size = {3 * hidden_size} rows."
            )
        suffix = FUSED_QKV_KEYS[rest]
        return {
            f"{target}attention.{proj}.{suffix}": part.clone()
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0))
        }
    return None


def convert_opera_gt_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: AculaConfig
) -> tuple[dict[str, torch.Tensor], OperaConversionReport]:
    """Rename (and split) OPERA-GT's timm ViT weights into [`AculaModel`] weights.

    The encoder prefix is detected, the depth, width, patch size, channels, MLP width, qkv bias and position-table
    length are read from the tensors and checked against `config` (the number of heads cannot be read from weights
    and is taken from `config`), and every fused `attn.qkv` is split into `q_proj`, `k_proj` and `v_proj`.
    The checkpoint's own position table is kept.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): the source weights, e.g. from [`load_checkpoint_state_dict`].
        config ([`AculaConfig`]): the configuration the converted weights are for.

    Returns:
        `(new_state_dict, report)`: the `AculaModel` weights and an [`OperaConversionReport`] listing the mapped key
        count, every unmapped source key and every `AculaModel` key left missing.
    """
    if not config.uses_native_encoder:
        raise ValueError("OPERA-GT converts into the native AcuLa ViT; the config has an audio_backbone_config.")
    prefix = detect_encoder_prefix(state_dict)
    encoder = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    architecture = _read_architecture(encoder)
    _check_architecture(architecture, config)
    target_shapes = _target_shapes(config)

    new_state_dict: dict[str, torch.Tensor] = {}
    unmapped, unknown = [], []
    num_mapped = 0
    for source_key, tensor in state_dict.items():
        name = source_key[len(prefix) :] if source_key.startswith(prefix) else None
        mapped = _map_encoder_key(name, tensor, config.hidden_size) if name is not None else None
        if mapped is None:
            unmapped.append(source_key)
            if name is not None and ENCODER_NAMESPACE_PATTERN.match(name) and not UNUSED_KEY_PATTERN.match(name):
                unknown.append(source_key)
            continue
        for target_key, value in mapped.items():
            if target_key not in target_shapes:
                raise ValueError(f"'{source_key}' maps to '{target_key}', which AculaModel({config.model_type}) lacks.")
            if value.shape != target_shapes[target_key]:
                raise ValueError(
                    f"Shape mismatch for '{source_key}' -> '{target_key}': checkpoint {tuple(value.shape)}, "
                    f"AculaModel expects {tuple(target_shapes[target_key])}."
                )
            new_state_dict[target_key] = value
        num_mapped += 1

    report = OperaConversionReport(
        source_prefix=prefix,
        num_mapped_keys=num_mapped,
        unmapped_keys=sorted(unmapped),
        unknown_encoder_keys=sorted(unknown),
        missing_keys=sorted(set(target_shapes) - set(new_state_dict)),
        architecture=architecture,
    )
    return new_state_dict, report


def _resolve_config(config: AculaConfig | str | None) -> AculaConfig:
    if config is None:
        return AculaConfig.from_preset("opera-gt")
    if isinstance(config, str):
        return AculaConfig.from_preset(config)
    if not isinstance(config, AculaConfig):
        raise TypeError(f"config must be an AculaConfig, a preset name or None, got {type(config).__name__}.")
    return config


def _save_default_feature_extractor(output_dir: Path, config: AculaConfig) -> bool:
    # `feature_extraction_acula` is optional here: the weights are usable without it, so a missing module only
    # skips the preprocessor config (an import error inside an existing module still surfaces).
    if importlib.util.find_spec(f"{__package__}.feature_extraction_acula") is None:
        logger.warning("modeling_acula.feature_extraction_acula is not available; no preprocessor_config.json written.")
        return False
    from .feature_extraction_acula import AculaFeatureExtractor

    feature_extractor = AculaFeatureExtractor()
    if list(feature_extractor.spectrogram_size) != list(config.spectrogram_size):
        logger.warning(
            f"The default AculaFeatureExtractor makes {list(feature_extractor.spectrogram_size)} spectrograms but the "
            f"config expects {config.spectrogram_size}; no preprocessor_config.json written."
        )
        return False
    feature_extractor.save_pretrained(output_dir)
    return True


def convert_opera_checkpoint(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    *,
    config: AculaConfig | str | None = None,
    allow_unsafe_pickle: bool = False,
    strict: bool = True,
) -> OperaConversionReport:
    """Convert an OPERA-GT checkpoint into an [`AculaModel`] folder that `AculaModel.from_pretrained` loads.

    Writes `config.json` and `model.safetensors` (plus a default `preprocessor_config.json` when
    `modeling_acula.feature_extraction_acula` is available) and logs the conversion report.

    Args:
        checkpoint_path (`str` or `Path`): the OPERA-GT `.ckpt` (or a `.pt`/`.pth`/`.safetensors` of its weights).
        output_dir (`str` or `Path`): the folder to write.
        config ([`AculaConfig`] or `str`, *optional*): the target configuration or a preset name; defaults to the
            `"opera-gt"` preset.
        allow_unsafe_pickle (`bool`, *optional*, defaults to `False`): see [`load_checkpoint_state_dict`].
        strict (`bool`, *optional*, defaults to `True`): refuse a conversion that leaves an `AculaModel` weight
            missing or leaves an encoder weight unmapped. When `False` those are only reported and the missing weights
            keep their fresh initialisation.

    Returns:
        [`OperaConversionReport`]: the conversion report.
    """
    config = _resolve_config(config)
    state_dict = load_checkpoint_state_dict(checkpoint_path, allow_unsafe_pickle=allow_unsafe_pickle)
    new_state_dict, report = convert_opera_gt_state_dict(state_dict, config)
    if strict and (report.missing_keys or report.unknown_encoder_keys):
        raise ValueError(
            f"Incomplete conversion of {str(checkpoint_path)!r} (use strict=False / --no-strict to accept it):\n"
            + report.format()
        )

    # Random initialisation takes seconds at full size and is overwritten; skip it when every weight is loaded.
    with no_init_weights() if not report.missing_keys else contextlib.nullcontext():
        model = AculaModel(config)
    model.load_state_dict(new_state_dict, strict=strict)
    model.eval()
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    _save_default_feature_extractor(output_dir, config)

    if report.missing_keys or report.unknown_encoder_keys:
        logger.warning(report.format())
    else:
        logger.info(report.format())
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acula-convert-opera",
        description=(
            "Convert an OPERA-GT checkpoint (github evelyn0414/OPERA, e.g. encoder-operaGT.ckpt) into an AculaModel "
            "folder (config.json + model.safetensors [+ preprocessor_config.json]) that AculaModel.from_pretrained "
            "loads. The MAE decoder (decoder_*, mask_token) is left out and listed in the printed report."
        ),
    )
    parser.add_argument("checkpoint", help="OPERA-GT checkpoint: a Lightning .ckpt, a .pt/.pth, or a .safetensors file.")
    parser.add_argument("output_dir", help="Folder to write the converted AculaModel into.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        default="opera-gt",
        choices=sorted(PRESETS),
        help="AculaConfig preset describing the checkpoint's encoder (default: %(default)s).",
    )
    source.add_argument(
        "--config",
        help="An AculaConfig config.json (or a folder holding one) to use instead of a preset.",
    )
    parser.add_argument(
        "--allow-unsafe-pickle",
        action="store_true",
        help=(
            "Allow torch.load(weights_only=False) when the checkpoint pickles arbitrary Python objects (e.g. "
            "Lightning hyper-parameters). Unpickling can execute code from the file: use only for trusted files."
        ),
    )
    parser.add_argument(
        "--no-strict",
        action="store_true",
        help="Write the model even if some AculaModel weights are missing or encoder weights are unmapped.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point `acula-convert-opera`.

    Args:
        argv (`list[str]`, *optional*): arguments without the program name; defaults to `sys.argv[1:]`.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = AculaConfig.from_pretrained(args.config) if args.config else AculaConfig.from_preset(args.preset)
        report = convert_opera_checkpoint(
            args.checkpoint,
            args.output_dir,
            config=config,
            allow_unsafe_pickle=args.allow_unsafe_pickle,
            strict=not args.no_strict,
        )
    except (ValueError, TypeError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(report.format())
    print(f"Wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
