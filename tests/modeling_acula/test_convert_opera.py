"""OPERA-GT -> AculaModel conversion: equivalence with an independent timm-style forward, the key report,
safe loading of Lightning pickles, the written folder and the command line."""

import argparse
import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from modeling_acula.configuration_acula import AculaConfig
from modeling_acula.convert_opera_checkpoint import (
    convert_opera_checkpoint,
    convert_opera_gt_state_dict,
    load_checkpoint_state_dict,
    main,
)
from modeling_acula.modeling_acula import AculaModel

from tests.testing_utils import spectrograms, tiny_opera_config

PREFIX = "model.encoder."
HAS_FEATURE_EXTRACTOR = importlib.util.find_spec("modeling_acula.feature_extraction_acula") is not None


def decoder_shapes(width: int, num_positions: int, patch_dim: int, decoder_width: int = 16) -> dict[str, tuple]:
    """The MAE decoder part of an OPERA-GT state dict (a few of its Swin blocks' keys), which AcuLa drops."""
    return {
        "mask_token": (1, 1, decoder_width),
        "decoder_pos_embed": (1, num_positions, decoder_width),
        "decoder_embed.weight": (decoder_width, width),
        "decoder_embed.bias": (decoder_width,),
        "decoder_blocks.0.norm1.weight": (decoder_width,),
        "decoder_blocks.0.attn.qkv.weight": (3 * decoder_width, decoder_width),
        "decoder_blocks.0.attn.relative_position_bias_table": (49, 16),
        "decoder_norm.weight": (decoder_width,),
        "decoder_norm.bias": (decoder_width,),
        "decoder_pred.weight": (patch_dim, decoder_width),
        "decoder_pred.bias": (patch_dim,),
    }


def opera_state_dict(
    width: int = 32,
    depth: int = 2,
    patch: tuple[int, int] = (16, 16),
    spectrogram: tuple[int, int] = (256, 64),
    prefix: str = PREFIX,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random weights under OPERA-GT's timm ViT key names and shapes (decoder included); linear weights scaled by
    1 / sqrt(fan-in) so that activations stay in a range where float32 comparisons are meaningful at any width."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=0.2, offset=0.0):
        return offset + scale * torch.randn(*shape, generator=generator)

    num_positions = (spectrogram[0] // patch[0]) * (spectrogram[1] // patch[1]) + 1
    hidden_mlp = 4 * width
    weights = {
        "patch_embed.proj.weight": randn(width, 1, *patch, scale=(patch[0] * patch[1]) ** -0.5),
        "patch_embed.proj.bias": randn(width),
        "cls_token": randn(1, 1, width, scale=1.0),
        # Random rather than sin-cos: the test then shows the checkpoint's own table is what gets used.
        "pos_embed": randn(1, num_positions, width, scale=0.5),
        "norm.weight": randn(width, scale=0.1, offset=1.0),
        "norm.bias": randn(width, scale=0.1),
    }
    for i in range(depth):
        weights.update(
            {
                f"blocks.{i}.norm1.weight": randn(width, scale=0.1, offset=1.0),
                f"blocks.{i}.norm1.bias": randn(width, scale=0.1),
                f"blocks.{i}.attn.qkv.weight": randn(3 * width, width, scale=width**-0.5),
                f"blocks.{i}.attn.qkv.bias": randn(3 * width),
                f"blocks.{i}.attn.proj.weight": randn(width, width, scale=width**-0.5),
                f"blocks.{i}.attn.proj.bias": randn(width),
                f"blocks.{i}.norm2.weight": randn(width, scale=0.1, offset=1.0),
                f"blocks.{i}.norm2.bias": randn(width, scale=0.1),
                f"blocks.{i}.mlp.fc1.weight": randn(hidden_mlp, width, scale=width**-0.5),
                f"blocks.{i}.mlp.fc1.bias": randn(hidden_mlp),
                f"blocks.{i}.mlp.fc2.weight": randn(width, hidden_mlp, scale=hidden_mlp**-0.5),
                f"blocks.{i}.mlp.fc2.bias": randn(width),
            }
        )
    for name, shape in decoder_shapes(width, num_positions, patch[0] * patch[1]).items():
        weights[name] = randn(*shape)
    return {prefix + name: value for name, value in weights.items()}


def reference_opera_embedding(
    state_dict: dict[str, torch.Tensor],
    spectrogram: torch.Tensor,
    num_heads: int,
    prefix: str = PREFIX,
) -> torch.Tensor:
    """OPERA-GT's embedding computed directly from the timm-named tensors (MAE `forward_encoder_no_mask` with the
    final norm after mean pooling): no AcuLa code involved, attention and GELU written out."""
    w = {key[len(prefix) :]: value.double() for key, value in state_dict.items() if key.startswith(prefix)}
    x = spectrogram.double()
    eps = 1e-6

    def layer_norm(h, name):
        centred = h - h.mean(dim=-1, keepdim=True)
        return centred / torch.sqrt(centred.pow(2).mean(dim=-1, keepdim=True) + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def linear(h, name):
        return h @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    kernel = w["patch_embed.proj.weight"]
    patches = F.conv2d(x, kernel, w["patch_embed.proj.bias"], stride=tuple(kernel.shape[2:]))
    tokens = patches.flatten(2).transpose(1, 2) + w["pos_embed"][:, 1:, :]
    batch, _, width = tokens.shape
    cls = (w["cls_token"] + w["pos_embed"][:, :1, :]).expand(batch, -1, -1)
    h = torch.cat([cls, tokens], dim=1)
    length, head_dim = h.shape[1], width // num_heads
    depth = len({key.split(".")[1] for key in w if key.startswith("blocks.")})
    for i in range(depth):
        block = f"blocks.{i}"
        qkv = linear(layer_norm(h, f"{block}.norm1"), f"{block}.attn.qkv")
        q, k, v = qkv.reshape(batch, length, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        context = (attention @ v).transpose(1, 2).reshape(batch, length, width)
        h = h + linear(context, f"{block}.attn.proj")
        hidden = linear(layer_norm(h, f"{block}.norm2"), f"{block}.mlp.fc1")
        hidden = 0.5 * hidden * (1.0 + torch.erf(hidden / math.sqrt(2.0)))
        h = h + linear(hidden, f"{block}.mlp.fc2")
    return layer_norm(h[:, 1:, :].mean(dim=1), "norm").float()


def converted_model(new_state_dict: dict[str, torch.Tensor], config: AculaConfig) -> AculaModel:
    model = AculaModel(config).eval()
    model.load_state_dict(new_state_dict, strict=True)
    return model


# --- conversion ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [PREFIX, ""])
def test_converted_model_matches_independent_opera_forward(prefix):
    config = tiny_opera_config()
    state_dict = opera_state_dict(prefix=prefix)
    new_state_dict, report = convert_opera_gt_state_dict(state_dict, config)
    assert report.source_prefix == prefix
    assert report.missing_keys == [] and report.unknown_encoder_keys == []

    inputs = spectrograms(batch=2, seed=1)
    with torch.no_grad():
        pooled = converted_model(new_state_dict, config)(inputs).pooler_output
    expected = reference_opera_embedding(state_dict, inputs, config.num_attention_heads, prefix=prefix)
    assert pooled.shape == (2, 32)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)
    # Not a trivially matching output: the two recordings differ.
    assert (expected[0] - expected[1]).abs().max() > 1e-2


def test_report_lists_exactly_the_decoder_keys_and_counts():
    config = tiny_opera_config()
    state_dict = opera_state_dict()
    new_state_dict, report = convert_opera_gt_state_dict(state_dict, config)

    expected_unmapped = sorted(PREFIX + name for name in decoder_shapes(32, 65, 256))
    assert report.unmapped_keys == expected_unmapped
    assert report.unknown_encoder_keys == [] and report.missing_keys == []
    # 6 top-level keys + 12 per block; each fused qkv weight/bias becomes three AcuLa tensors.
    assert report.num_mapped_keys == 6 + 12 * 2
    assert set(new_state_dict) == set(AculaModel(config).state_dict())
    assert report.architecture == {
        "hidden_size": 32,
        "num_channels": 1,
        "patch_size": [16, 16],
        "num_hidden_layers": 2,
        "qkv_bias": True,
        "num_positions": 65,
        "intermediate_size": 128,
    }
    text = report.format()
    assert all(key in text for key in expected_unmapped) and "UNKNOWN" not in text


def test_qkv_is_split_in_query_key_value_order_and_pos_table_copied():
    config = tiny_opera_config()
    state_dict = opera_state_dict()
    new_state_dict, _ = convert_opera_gt_state_dict(state_dict, config)
    qkv = state_dict[PREFIX + "blocks.1.attn.qkv.weight"]
    for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(new_state_dict[f"encoder.layer.1.attention.{name}.weight"], qkv[32 * index : 32 * (index + 1)])
    assert torch.equal(new_state_dict["embeddings.position_embeddings"], state_dict[PREFIX + "pos_embed"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: sd.update(opera_state_dict(width=48)), "hidden_size: checkpoint 48, config 32"),
        (lambda sd: sd.update(opera_state_dict(depth=3)), "num_hidden_layers: checkpoint 3, config 2"),
        (lambda sd: sd.update(opera_state_dict(patch=(8, 8))), r"patch_size: checkpoint \[8, 8\], config \[16, 16\]"),
        (lambda sd: sd.update({PREFIX + "norm.weight": torch.ones(31)}), "Shape mismatch for 'model.encoder.norm.weight'"),
        (lambda sd: sd.update({PREFIX + "blocks.0.attn.qkv.weight": torch.ones(90, 32)}), "3 \\* hidden_size = 96"),
    ],
)
def test_shape_mismatch_gives_clear_error(mutate, message):
    state_dict = opera_state_dict()
    mutate(state_dict)
    with pytest.raises(ValueError, match=message):
        convert_opera_gt_state_dict(state_dict, tiny_opera_config())


def test_not_a_vit_state_dict_is_refused():
    with pytest.raises(ValueError, match="patch_embed.proj.weight"):
        convert_opera_gt_state_dict({"encoder.conv.weight": torch.zeros(3)}, tiny_opera_config())


def test_missing_and_unknown_encoder_keys_fail_strict_and_are_reported_otherwise(tmp_path):
    state_dict = opera_state_dict()
    del state_dict[PREFIX + "blocks.1.norm2.bias"]
    state_dict[PREFIX + "blocks.0.ls1.gamma"] = torch.ones(32)  # a LayerScale AcuLa has no slot for
    state_dict["head.weight"] = torch.ones(2, 32)  # another module of the Lightning file, outside the encoder
    path = tmp_path / "partial.pt"
    torch.save(state_dict, path)

    with pytest.raises(ValueError, match="encoder.layer.1.layernorm_after.bias") as error:
        convert_opera_checkpoint(path, tmp_path / "strict", config=tiny_opera_config())
    assert "blocks.0.ls1.gamma" in str(error.value) and not (tmp_path / "strict").exists()

    report = convert_opera_checkpoint(path, tmp_path / "lenient", config=tiny_opera_config(), strict=False)
    assert report.missing_keys == ["encoder.layer.1.layernorm_after.bias"]
    assert report.unknown_encoder_keys == [PREFIX + "blocks.0.ls1.gamma"]
    assert "head.weight" in report.unmapped_keys and "head.weight" not in report.unknown_encoder_keys
    assert (tmp_path / "lenient" / "model.safetensors").is_file()


# --- loading ---------------------------------------------------------------------------------------------------


def test_lightning_pickle_is_refused_without_opt_in_and_loads_with_it(tmp_path):
    state_dict = opera_state_dict()
    path = tmp_path / "encoder-operaGT.ckpt"
    # Lightning stores hyper-parameters as Python objects, which weights_only=True refuses.
    torch.save({"state_dict": state_dict, "hyper_parameters": argparse.Namespace(lr=1e-4), "epoch": 3}, path)

    with pytest.raises(ValueError, match="allow_unsafe_pickle=True") as error:
        load_checkpoint_state_dict(path)
    assert "--allow-unsafe-pickle" in str(error.value) and "arbitrary code" in str(error.value)

    loaded = load_checkpoint_state_dict(path, allow_unsafe_pickle=True)
    assert loaded.keys() == state_dict.keys()
    assert all(torch.equal(loaded[key], state_dict[key]) for key in state_dict)


def test_plain_tensor_checkpoints_and_safetensors_load_without_opt_in(tmp_path):
    state_dict = opera_state_dict()
    torch.save(state_dict, tmp_path / "plain.pt")
    torch.save({"state_dict": state_dict, "epoch": 3, "global_step": 10}, tmp_path / "lightning_tensors.ckpt")
    save_file(state_dict, tmp_path / "weights.safetensors")
    for name in ("plain.pt", "lightning_tensors.ckpt", "weights.safetensors"):
        loaded = load_checkpoint_state_dict(tmp_path / name)
        assert loaded.keys() == state_dict.keys(), name
        assert torch.equal(loaded[PREFIX + "pos_embed"], state_dict[PREFIX + "pos_embed"]), name


def test_bad_checkpoint_contents_are_refused(tmp_path):
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pt")
    with pytest.raises(TypeError, match="non-tensor entries"):
        load_checkpoint_state_dict(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint_state_dict(tmp_path / "absent.ckpt")


# --- written folder and command line ----------------------------------------------------------------------------


def test_output_folder_is_safetensors_and_json_and_reloads_identically(tmp_path):
    config = tiny_opera_config()
    state_dict = opera_state_dict()
    save_file(state_dict, tmp_path / "opera.safetensors")
    report = convert_opera_checkpoint(tmp_path / "opera.safetensors", tmp_path / "out", config=config)
    assert report.missing_keys == []

    files = {path.name for path in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors"} <= files
    # Weights only as safetensors, settings as JSON; the package's auto-class registration may add its .py files.
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"))], files
    assert all(name.endswith((".json", ".safetensors", ".py")) for name in files), files
    assert ("preprocessor_config.json" in files) == HAS_FEATURE_EXTRACTOR

    reloaded = AculaModel.from_pretrained(tmp_path / "out").eval()
    in_memory = converted_model(convert_opera_gt_state_dict(state_dict, config)[0], config)
    inputs = spectrograms(batch=2, seed=1)
    with torch.no_grad():
        assert torch.equal(reloaded(inputs).pooler_output, in_memory(inputs).pooler_output)
    torch.testing.assert_close(
        reloaded(inputs).pooler_output, reference_opera_embedding(state_dict, inputs, 2), atol=1e-5, rtol=1e-5
    )


def test_cli_converts_a_full_size_opera_gt_lightning_checkpoint(tmp_path, capsys):
    # The real OPERA-GT shapes (ViT-Small, 4 x 4 patches, 1,025 positions) against the "opera-gt" preset.
    state_dict = opera_state_dict(width=384, depth=12, patch=(4, 4), prefix="")
    checkpoint = tmp_path / "encoder-operaGT.ckpt"
    torch.save({"state_dict": state_dict, "hyper_parameters": argparse.Namespace(lr=1e-4)}, checkpoint)

    with pytest.raises(SystemExit) as refused:
        main([str(checkpoint), str(tmp_path / "refused")])
    assert refused.value.code != 0 and "--allow-unsafe-pickle" in capsys.readouterr().err

    assert main([str(checkpoint), str(tmp_path / "out"), "--allow-unsafe-pickle", "--preset", "opera-gt"]) == 0
    printed = capsys.readouterr().out
    assert "mask_token" in printed and "decoder_pred.weight" in printed

    model = AculaModel.from_pretrained(tmp_path / "out")
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.patch_size) == (384, 12, [4, 4])
    # Every saved weight is the converted one (a full-size forward pass costs seconds on CPU; the tiny tests above
    # show that the converted weights compute OPERA-GT's embedding).
    expected, _ = convert_opera_gt_state_dict(state_dict, AculaConfig.from_preset("opera-gt"))
    saved = model.state_dict()
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[key], expected[key]) for key in expected)
    assert torch.equal(saved["embeddings.position_embeddings"], state_dict["pos_embed"])


def test_cli_help_and_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as shown:
        main(["--help"])
    assert shown.value.code == 0
    help_text = capsys.readouterr().out
    assert "--allow-unsafe-pickle" in help_text and "--preset" in help_text and "OPERA-GT" in help_text

    tiny_opera_config().save_pretrained(tmp_path / "tiny")
    torch.save(opera_state_dict(), tmp_path / "tiny.pt")
    assert main([str(tmp_path / "tiny.pt"), str(tmp_path / "out"), "--config", str(tmp_path / "tiny")]) == 0
    assert AculaModel.from_pretrained(tmp_path / "out").config.hidden_size == 32
