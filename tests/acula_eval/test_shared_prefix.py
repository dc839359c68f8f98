"""Sharing a Whisper encoder's frozen bottom across the models of an evaluation (acula_eval.shared_prefix)."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from acula_eval.embeddings import AudioEmbedder
from acula_eval.shared_prefix import SharedPrefixStore
from modeling_acula import AculaFeatureExtractor, AculaModel
from tests.testing_utils import tiny_whisper_backbone_config

WINDOW = 2.0


def _save(folder: Path, model: AculaModel) -> Path:
    model.save_pretrained(folder)
    AculaFeatureExtractor.for_whisper(WINDOW).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny Whisper start, a copy whose top layer moved (a top-layer LoRA run, merged), and one whose bottom
    layer moved too."""
    root = tmp_path_factory.mktemp("shared-prefix")
    torch.manual_seed(0)
    start = AculaModel(tiny_whisper_backbone_config(WINDOW)).eval()
    top_moved, bottom_moved = AculaModel(start.config).eval(), AculaModel(start.config).eval()
    top_moved.load_state_dict(start.state_dict())
    bottom_moved.load_state_dict(start.state_dict())
    with torch.no_grad():
        for parameter in top_moved.backbone.layers[1].parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        bottom_moved.backbone.layers[0].fc1.weight.add_(0.05)
    rng = np.random.default_rng(0)
    files = []
    for number, seconds in enumerate((1.3, 3.1, 2.0, 4.7)):
        path = root / f"clip{number}.wav"
        sf.write(path, rng.normal(scale=0.1, size=int(16000 * seconds)).astype(np.float32), 16000)
        files.append(path)
    return {"start": _save(root / "start", start), "top": _save(root / "top", top_moved),
            "bottom": _save(root / "bottom", bottom_moved), "files": files}


def test_shared_bottom_gives_the_whole_encoders_embeddings_and_is_computed_once(folders, tmp_path):
    files = folders["files"]
    plain = {name: AudioEmbedder(folders[name], cache_dir=False, show_progress=False).embed_files(files)
             for name in ("start", "top", "bottom")}
    assert not np.allclose(plain["start"], plain["top"], atol=1e-4)  # the models differ
    stores = {}
    for name in ("start", "top", "bottom"):
        embedder = AudioEmbedder(folders[name], cache_dir=tmp_path / name / "vectors", show_progress=False,
                                 shared_prefix_layers=1)
        embedder.prefix_store.folder = tmp_path / "store" / embedder.prefix_store.folder.name
        np.testing.assert_allclose(embedder.embed_files(files), plain[name], atol=1e-5)
        stores[name] = embedder.prefix_store
    windows = stores["start"].computed
    assert windows >= len(files) and stores["start"].hits == 0
    # The top-layer run reads every window of the start's bottom back; the moved bottom computes its own.
    assert (stores["top"].hits, stores["top"].computed) == (windows, 0)
    assert stores["top"].folder == stores["start"].folder != stores["bottom"].folder
    assert (stores["bottom"].hits, stores["bottom"].computed) == (0, windows)


def test_a_torn_entry_is_computed_again(folders, tmp_path):
    model = AculaModel.from_pretrained(folders["start"]).eval()
    store = SharedPrefixStore(model, 1, tmp_path)
    windows = torch.rand(2, 1, 200, 80)
    first = store.hidden_states(windows)
    next(store.folder.iterdir()).write_bytes(b"torn")
    again = store.hidden_states(windows)
    assert store.computed == 3 and store.hits == 1
    torch.testing.assert_close(first[0], again[0])


def test_other_encoders_are_refused(tmp_path):
    from tests.testing_utils import save_tiny_encoder

    with pytest.raises(ValueError, match="Whisper"):
        AudioEmbedder(save_tiny_encoder(tmp_path / "native"), cache_dir=tmp_path / "c", show_progress=False,
                      shared_prefix_layers=1)
    with pytest.raises(ValueError, match="needs a cache"):
        AudioEmbedder(save_tiny_encoder(tmp_path / "native2"), cache_dir=False, show_progress=False,
                      shared_prefix_layers=1)
