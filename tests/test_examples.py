"""The examples run as documented (on tiny models and the shipped recordings)."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from modeling_acula import AculaFeatureExtractor, AculaModel
from acula_train.manifest import load_manifest

from tests.testing_utils import save_tiny_encoder

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "data" / "auscultation-mini" / "metadata.csv"
sys.path.insert(0, str(REPO / "examples"))

import extract_embeddings  # noqa: E402


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
