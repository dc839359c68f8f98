"""The committed release `releases/acula-whisper-base`: its delta is intact, its card is complete, and one command
rebuilds from it and the installed Whisper-base wheels the folder that was exported, bit for bit."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from acula_train.prefix_cache import state_dict_sha256
from acula_train.release import read_manifest, rebuild_release
from modeling_acula import AculaModel

RELEASE = Path(__file__).resolve().parents[2] / "releases" / "acula-whisper-base"
CARD = Path(__file__).resolve().parents[2] / "model_cards" / "acula-whisper-base.md"


def test_the_release_is_a_small_intact_delta_with_its_card():
    manifest = read_manifest(RELEASE)  # every listed file present with its sha256, no pickle, nothing unlisted
    assert manifest["base"]["source"] == "whisper-base wheels" and manifest["base"]["window_seconds"] == 10.0
    total = sum(entry["bytes"] for entry in manifest["files"].values())
    assert total < 20e6, f"the delta is {total / 1e6:.1f} MB: it should hold the trainable delta only"
    assert not any(name.endswith("model.safetensors") and "/" not in name for name in manifest["files"])
    card = (RELEASE / "README.md").read_text()
    assert "{{" not in card and "To be written" not in card and "_PARAGRAPH" not in card
    assert "ODC-By 1.0" in card and "Oliveira" in card and "Not for diagnosis" in card
    # the card names the recipe the delta was trained with
    args = json.loads((RELEASE / "training_args.json").read_text())
    assert args["data"]["report_fields"] == ["findings"] and "--report_fields findings" in card
    assert args["training"]["learning_rate"] == 1e-3 and manifest["exported_from"] in card
    # the committed card is the one model_cards/ holds, its placeholders filled
    assert card.splitlines()[-1] == CARD.read_text().splitlines()[-1]


@pytest.mark.slow
def test_the_release_rebuilds_offline_from_the_whisper_base_wheels(tmp_path):
    output = rebuild_release(RELEASE, tmp_path / "acula-whisper-base", log=lambda _: None)
    manifest = read_manifest(RELEASE)
    model = AutoModel.from_pretrained(output)
    assert isinstance(model, AculaModel)
    assert state_dict_sha256(model.state_dict()) == manifest["weights"]["model.safetensors"]["sha256"]
    with torch.no_grad():
        embedding = model(torch.zeros(1, 1, 1000, 80)).pooler_output
    assert embedding.shape == (1, 512) and torch.isfinite(embedding).all()
