"""Release delta and offline rebuild (acula_train.release) on a tiny Whisper start and a two-step LoRA run."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel, WhisperModel

from acula_train.release import ReleaseError, export_release, read_manifest, rebuild_release
from acula_train.release.__main__ import main as release_main
from acula_train.release.card import default_card_path, render_card
from acula_train.release.export import delta_files
from modeling_acula import AculaModel

from ..testing_utils import run_in_process, tiny_args, tiny_whisper_config


def save_tiny_whisper(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    WhisperModel(tiny_whisper_config(encoder_layers=3)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_whisper_start(tmp_path_factory) -> Path:
    """A tiny random 3-layer Whisper folder (as acula-convert-whisper writes one)."""
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny-whisper", seed=0)


@pytest.fixture(scope="module")
def trained(tiny_whisper_start, tmp_path_factory) -> Path:
    """A two-step LoRA alignment run (top 2 of 3 layers) from the tiny start, on 16 recordings of the mini pack."""
    root = tmp_path_factory.mktemp("run")
    args = tiny_args(root / "out", root / "cache", "--window_seconds", "2", "--lora_top_layers", "2",
                     "--max_train_samples", "16", "--max_steps", "2", "--checkpointing_steps", "0",
                     "--learning_rate", "1e-2", "--warmup_steps", "0")
    args[args.index("--init_from") + 1] = str(tiny_whisper_start)
    args[args.index("--config_overrides") + 1] = json.dumps({"projection_hidden_size": 32, "projection_dim": 16})
    return run_in_process(args)


@pytest.fixture(scope="module")
def released(trained, tiny_whisper_start, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("releases") / "acula-tiny"
    export_release(trained, output, whisper_dir=tiny_whisper_start, log=lambda _: None)
    return output


def embed(folder: Path, inputs: torch.Tensor) -> torch.Tensor:
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(inputs).pooler_output


def spectrograms(folder: Path) -> torch.Tensor:
    backbone = AutoModel.from_pretrained(folder).config.audio_backbone_config
    return torch.rand(3, 1, 2 * backbone.max_source_positions, backbone.num_mel_bins,
                      generator=torch.Generator().manual_seed(0))


def test_the_delta_holds_no_base_weights(released, trained):
    manifest = read_manifest(released)
    assert manifest["base"]["source"] == "whisper folder" and manifest["base"]["window_seconds"] == 2.0
    delta_weights = sum(entry["bytes"] for name, entry in manifest["files"].items() if name.endswith(".safetensors"))
    full_weights = sum((trained / name).stat().st_size for name in ("model.safetensors", "alignment/model.safetensors"))
    assert delta_weights < 0.25 * full_weights  # tiny heads are a large share of a tiny model; Whisper-base: 4 %
    assert not any(name.endswith(".py") or name.startswith(("checkpoints", "logs")) for name in manifest["files"])
    weights = [name for name in manifest["files"] if name.endswith(".safetensors")]
    assert "model.safetensors" not in weights and "alignment/model.safetensors" not in weights
    frozen = [f"backbone.layers.0.{part}" for part in ("fc1.weight", "self_attn.q_proj.weight")] + [
        "backbone.conv1.weight", "backbone.embed_positions.weight"]
    for name in weights:
        with safe_open(str(released / name), framework="pt") as handle:
            keys = list(handle.keys())
        assert not [key for key in keys for part in frozen if key.endswith(part)], (name, keys)
        assert not [key for key in keys if "lora_" not in key and "projection" not in key and "weight" in key
                    and "backbone" in key], keys  # of the encoder, only the adapters
    assert {"adapter/adapter_model.safetensors", "alignment/readout.json", "config.json", "teacher.json",
            "training_args.json", "README.md"} <= set(manifest["files"])
    card = (released / "README.md").read_text()
    assert "ODC-By 1.0" in card and "a 2 s window" in card and manifest["base"]["weights_sha256"] in card
    assert "{{" not in card and "<!--" not in card
    adapter_row = next(line for line in card.splitlines() if line.startswith("| adapter |"))
    assert adapter_row.replace("\\|", "").count("|") == 3  # the target regex's pipes do not split the table row


def test_the_rebuilt_folder_embeds_like_the_trained_one(released, trained, tiny_whisper_start, tmp_path):
    output = rebuild_release(released, tmp_path / "rebuilt", whisper_dir=tiny_whisper_start, log=lambda _: None)
    assert isinstance(AutoModel.from_pretrained(output), AculaModel)
    assert read_manifest(released)["merge_dtype"] == "float32"  # the run's own merge: its weights, bit for bit
    for name in ("model.safetensors", "alignment/model.safetensors"):
        ours, theirs = load_file(str(output / name)), load_file(str(trained / name))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)
    inputs = spectrograms(trained)
    torch.testing.assert_close(embed(output, inputs), embed(trained, inputs), atol=1e-6, rtol=0)
    for name in ("readout.json", "readout.safetensors"):
        assert (output / "alignment" / name).read_bytes() == (trained / "alignment" / name).read_bytes()
    assert (output / "README.md").read_text() == (released / "README.md").read_text()
    heads = AutoModel.from_pretrained(output / "alignment"), AutoModel.from_pretrained(trained / "alignment")
    for ours, theirs in zip(heads[0].state_dict().values(), heads[1].state_dict().values()):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_a_float64_merge_rebuilds_within_an_ulp(trained, tiny_whisper_start, tmp_path):
    release = tmp_path / "release"
    manifest = export_release(trained, release, whisper_dir=tiny_whisper_start, merge_dtype="float64",
                              log=lambda _: None)
    assert manifest["merge_dtype"] == "float64" and not manifest["trained_folder_agreement"]["tensors_stored_whole"]
    output = rebuild_release(release, tmp_path / "rebuilt", whisper_dir=tiny_whisper_start, log=lambda _: None)
    inputs = spectrograms(trained)
    torch.testing.assert_close(embed(output, inputs), embed(trained, inputs), atol=1e-6, rtol=0)


def test_a_tensor_trained_outside_the_adapter_goes_into_the_delta_whole(trained, tiny_whisper_start, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    for name, prefix in (("alignment/model.safetensors", "acula."), ("model.safetensors", "")):
        state = load_file(str(run / name))
        state[f"{prefix}backbone.layer_norm.weight"] += 0.01  # as if the final layer norm had trained in full
        save_file(state, str(run / name), metadata={"format": "pt"})
    manifest = export_release(run, tmp_path / "release", whisper_dir=tiny_whisper_start, log=lambda _: None)
    assert manifest["trained_folder_agreement"]["tensors_stored_whole"] == ["acula.backbone.layer_norm.weight"]
    assert "extra_weights.safetensors" in manifest["files"]
    output = rebuild_release(tmp_path / "release", tmp_path / "rebuilt", whisper_dir=tiny_whisper_start,
                             log=lambda _: None)
    assert not (output / "extra_weights.safetensors").exists()
    rebuilt, original = load_file(str(output / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert all(torch.equal(rebuilt[key], original[key]) for key in original)


def test_an_altered_or_missing_delta_file_is_named(released, tiny_whisper_start, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(released, altered)
    readout = altered / "alignment" / "readout.json"
    readout.write_text(readout.read_text().replace("procrustes", "ridge"))
    with pytest.raises(ReleaseError, match=r"readout\.json is altered: its sha256 is [0-9a-f]{64}, release\.json "
                                           r"records [0-9a-f]{64}"):
        rebuild_release(altered, tmp_path / "out", whisper_dir=tiny_whisper_start, log=lambda _: None)
    (altered / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(ReleaseError, match=r"adapter_model\.safetensors is missing"):
        read_manifest(altered)
    assert not (tmp_path / "out").exists()


def test_a_different_base_is_refused_by_its_hash(released, tmp_path, capsys):
    other = save_tiny_whisper(tmp_path / "other-whisper", seed=1)
    recorded = read_manifest(released)["base"]["weights_sha256"]
    with pytest.raises(ReleaseError, match=rf"weights sha256 is [0-9a-f]{{64}}, the release records {recorded}"):
        rebuild_release(released, tmp_path / "out", whisper_dir=other, log=lambda _: None)
    # the command line says the same in one line, exit status 2
    with pytest.raises(SystemExit) as exit_info:
        release_main(["rebuild", str(released), "--output", str(tmp_path / "out"), "--whisper_dir", str(other)])
    assert exit_info.value.code == 2 and recorded in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_folder_not_trained_from_the_base(trained, tmp_path):
    other = save_tiny_whisper(tmp_path / "other-whisper", seed=1)
    with pytest.raises(ReleaseError, match="was not trained from this base"):
        export_release(trained, tmp_path / "release", whisper_dir=other, log=lambda _: None)
    assert not (tmp_path / "release").exists()


def test_delta_files_leave_out_weights_code_and_local_state(trained):
    names = delta_files(trained)
    assert "adapter/adapter_model.safetensors" in names and "preprocessor_config.json" in names
    assert not [name for name in names if name.endswith(".py") or name.startswith(("checkpoints/", "logs/"))
                or name in ("model.safetensors", "alignment/model.safetensors", "README.md")]


def test_a_card_placeholder_the_export_does_not_know_is_refused(tmp_path):
    card = tmp_path / "card.md"
    card.write_text("<!-- a note to authors -->\n# {{name}} on {{ base_modle }}\n")
    assert render_card(card, {"name": "x", "base_modle": "z"}) == "# x on z\n"
    with pytest.raises(ReleaseError, match=r"unknown placeholders \['base_modle'\]"):
        render_card(card, {"name": "x", "base_model": "y"})
    fields = ("name", "base_model", "window_seconds", "base_weights_sha256", "weights_sha256", "teacher", "adapter",
              "acula_version")  # what card_facts fills
    assert "ODC-By 1.0" in render_card(default_card_path("no-such-release"), {name: "v" for name in fields})
