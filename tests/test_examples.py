"""The examples run as documented (on tiny models and the shipped recordings)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sklearn.metrics import roc_auc_score

from modeling_acula import AculaFeatureExtractor, AculaForAudioClassification, AculaModel
from acula_train.manifest import load_manifest
from modeling_acula.audio_utils import decode_audio

from tests.testing_utils import save_tiny_encoder

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "data" / "auscultation-mini" / "metadata.csv"
sys.path.insert(0, str(REPO / "examples"))

import extract_embeddings  # noqa: E402
import finetune_classifier  # noqa: E402


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny-acula"))


def test_extract_embeddings_matches_direct_model_call(tiny_folder, tmp_path):
    output = tmp_path / "emb.safetensors"
    embeddings = extract_embeddings.main(["--model", str(tiny_folder), "--manifest", str(MINI), "--output",
                                          str(output), "--batch_size", "7"])
    assert embeddings.shape == (56, 32) and torch.isfinite(embeddings).all()
    with safe_open(str(output), "pt") as handle:
        assert handle.get_tensor("embeddings").shape == (56, 32)
        assert handle.metadata()["files"].startswith('["audio/')
    # the shipped clips are one window long, so windowing + averaging equals one direct forward
    model, extractor = AculaModel.from_pretrained(tiny_folder).eval(), AculaFeatureExtractor.from_pretrained(tiny_folder)
    first = extractor.load_audio(load_manifest(MINI).audio_paths[0])
    direct = model(**extractor(first[0], sampling_rate=first[1], return_tensors="pt")).pooler_output[0]
    torch.testing.assert_close(embeddings[0], direct, atol=1e-5, rtol=1e-5)


def test_finetune_classifier_with_trainer_and_lora(tiny_folder, tmp_path):
    result = finetune_classifier.main(["--model", str(tiny_folder), "--manifest", str(MINI), "--max_steps", "3",
                                       "--output_dir", str(tmp_path / "clf")])
    assert result["labels"] == ["abnormal", "normal"] and result["val_size"] == 4
    assert (tmp_path / "clf" / "model.safetensors").exists()
    # the reported AUROC and accuracy, recomputed with scikit-learn from the saved (merged) classifier's
    # predictions on the four KAUH validation recordings
    classifier = AculaForAudioClassification.from_pretrained(tmp_path / "clf").eval()
    extractor = AculaFeatureExtractor.from_pretrained(tmp_path / "clf")
    manifest = load_manifest(MINI)
    val = [i for i, row in enumerate(manifest.rows)
           if row["source_dataset"] == "KAUH_lung_sounds" and row["suggested_split"] == "val"]
    labels = np.array([result["labels"].index(manifest.rows[i]["label"]) for i in val])
    assert len(set(labels)) == 2
    waves = [decode_audio(manifest.audio_paths[i], extractor.sampling_rate) for i in val]
    with torch.no_grad():
        logits = classifier(**extractor(waves, sampling_rate=extractor.sampling_rate, return_tensors="pt")).logits
    probabilities = logits.softmax(-1).numpy()
    assert result["val_auroc"] == pytest.approx(roc_auc_score(labels, probabilities[:, 1]), abs=1e-9)
    assert result["val_accuracy"] == pytest.approx(np.mean(probabilities.argmax(-1) == labels))
