"""The prefix cache: a Whisper encoder's frozen bottom and the start's embedding computed once per window.

Equivalence is checked where it matters: the gradient of a gradient-cached step (both passes and the preservation
term), and whole tiny runs (one process, 2-process DDP, kill and resume) with and without the cache. The identity
tests change one thing at a time and expect a miss.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from safetensors import safe_open
from safetensors.torch import load_file

from modeling_acula import AculaFeatureExtractor, AculaForPreTraining, apply_lora
from acula_train.dataset import pair_dataset, spectrogram_cache
from acula_train.gradient_cache import backward_over_window
from acula_train.manifest import load_manifest
from acula_train.readout import check_prefix_states, fit_folder_readout, pair_projections
from acula_train.prefix_cache import (
    PREFIX_TENSORS,
    PrefixStateDataset,
    frozen_prefix_layers,
    prefix_cache,
    prepare_prefix_cache,
)
from acula_train.trainer import prepare_spectrograms

from tests.testing_utils import REPO, read_log, run_in_process, run_script, tiny_args, tiny_whisper_config

DEMO_MANIFEST = REPO / "data" / "auscultation-mini" / "metadata.csv"
WINDOW = 2.0


@pytest.fixture
def accelerator():
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


@pytest.fixture(scope="module")
def tiny_whisper_start(tmp_path_factory) -> Path:
    """A tiny random 3-layer Whisper folder (as acula-convert-whisper writes one)."""
    from transformers import WhisperModel

    folder = tmp_path_factory.mktemp("whisper") / "tiny-whisper"
    torch.manual_seed(0)
    WhisperModel(tiny_whisper_config(encoder_layers=3)).save_pretrained(folder)
    return folder


def start_model(folder: Path, window: float = WINDOW) -> AculaForPreTraining:
    return AculaForPreTraining.from_audio_backbone(str(folder), window_seconds=window, teacher_hidden_size=12,
                                                   projection_dim=8, projection_hidden_size=16,
                                                   projection_dropout=0.2)


@pytest.fixture(scope="module")
def rows():
    return load_manifest(DEMO_MANIFEST).select(range(10))


@pytest.fixture(scope="module")
def filled(tiny_whisper_start, rows, tmp_path_factory):
    """Spectrograms and prefix entries (1 frozen layer of 3) of 10 demo recordings, in a module cache."""
    cache_dir = tmp_path_factory.mktemp("cache")
    accelerator = Accelerator(cpu=True)
    try:
        extractor = AculaFeatureExtractor.for_whisper(WINDOW)
        spectrograms = spectrogram_cache(cache_dir, extractor)
        prepare_spectrograms(rows, extractor, spectrograms, accelerator)
        model = start_model(tiny_whisper_start)
        cache = prefix_cache(cache_dir, model.acula, 1, spectrograms)
        stats = prepare_prefix_cache(rows, model.acula, 1, spectrograms, cache, accelerator, batch_size=4)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
    return {"cache_dir": cache_dir, "extractor": extractor, "spectrograms": spectrograms, "cache": cache,
            "stats": stats}


# --- the cache: content, identity, fill ----------------------------------------------------------------------------


def test_entries_hold_the_prefix_states_the_frame_mask_and_the_start_embedding(filled, rows, tiny_whisper_start):
    cache, stats = filled["cache"], filled["stats"]
    assert (stats.rows, stats.computed, stats.hits) == (10, 10, 0) and len(cache) == 10
    assert stats.disk_bytes() > 10 * 100 * 32 * 4  # 100 frames x width 32 in float32 per recording
    with safe_open(str(cache.entry_path(rows.audio_paths[0])), framework="pt") as handle:  # safetensors, float32
        assert sorted(handle.keys()) == sorted(PREFIX_TENSORS)
        assert {handle.get_tensor(name).dtype for name in handle.keys()} == {torch.float32}
    model = start_model(tiny_whisper_start).eval()
    spectrograms = torch.stack([filled["spectrograms"].get(path) for path in rows.audio_paths[:3]])
    with torch.no_grad():
        hidden, frame_mask = model.acula.forward_prefix(spectrograms, 1)
        pooled = model.acula(spectrograms).pooler_output
    for row in range(3):
        entry = cache.get_tensors(rows.audio_paths[row], PREFIX_TENSORS)
        torch.testing.assert_close(entry["hidden_states"], hidden[row], atol=0, rtol=0)
        assert torch.equal(entry["audio_frame_mask"], frame_mask[row].float())
        torch.testing.assert_close(entry["start_embedding"], pooled[row], atol=1e-6, rtol=1e-6)
    item = PrefixStateDataset(rows, cache, teacher_vectors=torch.randn(10, 12))[2]
    assert item["prefix_hidden_states"].shape == (100, 32) and item["preservation_target"].shape == (32,)
    assert item["index"] == 2 and item["teacher_embeds"].shape == (12,)


def test_the_readout_projections_from_prefix_states_equal_the_full_encoders(filled, rows, tiny_whisper_start):
    model = start_model(tiny_whisper_start).eval()
    teacher = torch.randn(10, 12)
    full = pair_projections(model, pair_dataset(rows, filled["extractor"], filled["spectrograms"], teacher),
                            batch_size=4, show_progress=False)
    prefixed = pair_projections(model, PrefixStateDataset(rows, filled["cache"], teacher_vectors=teacher),
                                batch_size=4, show_progress=False, prefix_layers=1)
    for a, b in zip(full, prefixed):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="prefix_layers"):  # states of 1 layer read as 2
        check_prefix_states(model, PrefixStateDataset(rows, filled["cache"], teacher_vectors=teacher), 2)
    other = start_model(tiny_whisper_start)
    with torch.no_grad():
        other.acula.backbone.layers[0].fc1.weight.add_(0.01)  # another bottom: its states differ
    with pytest.raises(ValueError, match="prefix_weights_sha256"):
        pair_projections(other, PrefixStateDataset(rows, filled["cache"], teacher_vectors=teacher),
                         show_progress=False, prefix_layers=1)


def test_a_second_fill_only_reads_and_a_damaged_entry_is_recomputed(filled, rows, tiny_whisper_start, accelerator):
    cache = filled["cache"]
    damaged = cache.entry_path(rows.audio_paths[4])
    data = bytearray(damaged.read_bytes())
    data[-9] ^= 0xFF  # a flipped byte of the last tensor: its checksum fails
    damaged.write_bytes(bytes(data))
    stats = prepare_prefix_cache(rows, start_model(tiny_whisper_start).acula, 1, filled["spectrograms"], cache,
                                 accelerator)
    assert (stats.hits, stats.computed) == (9, 1)
    assert cache.get_tensors(rows.audio_paths[4], PREFIX_TENSORS) is not None


def test_every_part_of_the_key_decides_a_hit(filled, rows, tiny_whisper_start, tmp_path):
    cache_dir, spectrograms = filled["cache_dir"], filled["spectrograms"]
    path = rows.audio_paths[0]

    def entry(model, layers=1, spectrogram_cache_=spectrograms):
        return prefix_cache(cache_dir, model.acula, layers, spectrogram_cache_).get_tensors(path, PREFIX_TENSORS)

    # the same weights from another folder: a hit (the key is the weights' hash, not a path)
    copy = tmp_path / "copy-of-the-start"
    shutil.copytree(tiny_whisper_start, copy)
    assert entry(start_model(copy)) is not None
    # other start weights below the adapters, or above them (the start embedding runs every layer): misses
    for layer in (0, 2):
        model = start_model(tiny_whisper_start)
        with torch.no_grad():
            model.acula.backbone.layers[layer].fc1.weight[0, 0] += 1e-3
        assert entry(model) is None, layer
    # another frozen layer count, another window, other feature settings: misses
    assert entry(start_model(tiny_whisper_start), layers=2) is None
    four = AculaFeatureExtractor.for_whisper(4.0)
    four_seconds = spectrogram_cache(cache_dir, four)
    assert entry(start_model(tiny_whisper_start, window=4.0), spectrogram_cache_=four_seconds) is None
    float64 = spectrogram_cache(cache_dir, AculaFeatureExtractor.for_whisper(WINDOW, compute_dtype="float64"))
    assert entry(start_model(tiny_whisper_start), spectrogram_cache_=float64) is None
    # other weight dtype
    assert entry(start_model(tiny_whisper_start).to(torch.float64)) is None
    # and the unchanged key still hits
    assert entry(start_model(tiny_whisper_start)) is not None


def test_the_cache_applies_to_whisper_lora_with_a_deterministic_prefix(tiny_whisper_start):
    config = start_model(tiny_whisper_start).config
    assert frozen_prefix_layers(config, full_finetune=False, top_layers=2)[0] == 1
    assert frozen_prefix_layers(config, full_finetune=False, top_layers=None)[0] == 0  # the stem is still frozen
    assert frozen_prefix_layers(config, full_finetune=True, top_layers=2) == (None,
                                                                              "--full_finetune trains every layer")
    config.audio_backbone_config.dropout = 0.1
    layers, reason = frozen_prefix_layers(config, full_finetune=False, top_layers=2)
    assert layers is None and "dropout" in reason
    from tests.testing_utils import tiny_config

    assert frozen_prefix_layers(tiny_config(), full_finetune=False, top_layers=None)[0] is None


# --- a training step: both passes of gradient caching and the preservation term -----------------------------------


def test_a_gradient_cached_step_from_the_cache_equals_the_full_encoder(filled, rows, tiny_whisper_start, accelerator):
    # The heads' init is seeded here, not left to the tests that ran before: their order must not decide the weights.
    torch.manual_seed(0)
    model = start_model(tiny_whisper_start)
    model.snapshot_reference_encoder()
    peft = apply_lora(model, r=4, lora_dropout=0.2, top_layers=2)
    peft.get_base_model().disable_input_require_grads()
    peft.train()
    with torch.no_grad():  # adapters off their zero start: a non-zero preservation term and gradient
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    teacher = torch.randn(9, 12, generator=torch.Generator().manual_seed(3))
    spectrograms = [filled["spectrograms"].get(path) for path in rows.audio_paths[:9]]
    cached = PrefixStateDataset(rows, filled["cache"])
    seeds = [11, 12, 13]

    def step(window):
        peft.zero_grad(set_to_none=True)
        result = backward_over_window(peft, window, accelerator, seeds)
        return result, {name: p.grad.clone() for name, p in peft.named_parameters() if p.grad is not None}

    full, expected = step([{"input_values": torch.stack(spectrograms[i : i + 3]), "teacher_embeds": teacher[i : i + 3]}
                           for i in range(0, 9, 3)])
    items = [cached[i] for i in range(9)]
    fast, got = step([{"prefix_hidden_states": torch.stack([it["prefix_hidden_states"] for it in items[i : i + 3]]),
                       "audio_frame_mask": torch.stack([it["audio_frame_mask"] for it in items[i : i + 3]]),
                       "preservation_target": torch.stack([it["preservation_target"] for it in items[i : i + 3]]),
                       "prefix_layers": 1, "teacher_embeds": teacher[i : i + 3]} for i in range(0, 9, 3)])
    assert full.finite and fast.finite and fast.alignment_batch_size == full.alignment_batch_size == 9
    assert full.values["preservation_loss"] > 1e-6
    for name in ("loss", "alignment_loss", "preservation_loss"):
        assert fast.values[name] == pytest.approx(full.values[name], rel=1e-5, abs=1e-7), name
    assert set(got) == set(expected)
    assert any(".layers.1." in name for name in got) and not any(".layers.0." in name for name in got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)


# --- whole runs ------------------------------------------------------------------------------------------------------


def whisper_run_args(start: Path, output: Path, cache: Path, *extra: str, dropout: float = 0.1) -> list[str]:
    """The tiny Whisper run: LoRA on the top 2 of 3 layers, accumulation 2 (gradient caching), LoRA and projection
    dropout `dropout` (its draws are seeded per micro-batch and process)."""
    args = tiny_args(output, cache, "--window_seconds", str(WINDOW), "--lora_top_layers", "2", "--lora_dropout",
                     str(dropout), "--checkpointing_steps", "0", *extra)
    args[args.index("--init_from") + 1] = str(start)
    args[args.index("--config_overrides") + 1] = json.dumps({"projection_hidden_size": 32, "projection_dim": 16,
                                                              "projection_dropout": dropout})
    args[args.index("--gradient_accumulation_steps") + 1] = "2"
    return args


def assert_same_run(a: Path, b: Path, atol: float = 1e-5) -> None:
    """Equal losses at every step and equal final weights (to `atol`)."""
    log_a, log_b = read_log(a), read_log(b)
    assert len(log_a) == len(log_b)
    for record_a, record_b in zip(log_a, log_b):
        for name in ("loss", "alignment_loss", "preservation_loss"):
            assert record_a[name] == pytest.approx(record_b[name], rel=1e-5, abs=1e-7), (record_a, record_b)
    weights_a, weights_b = (load_file(str(folder / "alignment" / "model.safetensors")) for folder in (a, b))
    assert set(weights_a) == set(weights_b)
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], atol=atol, rtol=0, msg=name)


@pytest.fixture(scope="module")
def uncached_run(tiny_whisper_start, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    output = run_in_process(whisper_run_args(tiny_whisper_start, root / "uncached", root / "cache", "--max_steps", "4",
                                             "--prefix_cache", "false"))
    return root, output


def test_a_tiny_run_with_the_cache_ends_with_the_weights_of_one_without(uncached_run, tiny_whisper_start, capsys):
    root, uncached = uncached_run
    assert json.loads((uncached / "training_args.json").read_text())["data"]["prefix_cache"] is False
    cached = run_in_process(whisper_run_args(tiny_whisper_start, root / "cached", root / "cache", "--max_steps", "4"))
    out = capsys.readouterr().out
    assert "Prefix cache: layers 0-0 of 3 are frozen" in out and "48 computed" in out
    assert len(list((root / "cache" / "prefix").glob("*/??/*.safetensors"))) == 48
    start = AculaForPreTraining.from_audio_backbone(str(tiny_whisper_start), window_seconds=WINDOW,
                                                    teacher_hidden_size=384).state_dict()
    trained = load_file(str(cached / "alignment" / "model.safetensors"))
    assert any(not torch.equal(trained[name], start[name]) for name in trained if "backbone.layers.2" in name)
    assert_same_run(cached, uncached)
    assert json.loads((cached / "training_args.json").read_text())["data"]["prefix_cache"] is True
    # the readout is fitted from the cached states (only the top layers run) and equals the full encoder's
    readout_info = json.loads((cached / "alignment" / "readout.json").read_text())
    assert readout_info["encoded_from"] == "the run's prefix cache (1 layers)", readout_info
    assert "encoded_from" not in json.loads((uncached / "alignment" / "readout.json").read_text())
    readouts = [load_file(str(folder / "alignment" / "readout.safetensors")) for folder in (cached, uncached)]
    for name in readouts[1]:
        torch.testing.assert_close(readouts[0][name], readouts[1][name], atol=1e-4, rtol=1e-4, msg=name)
    # a refit of the finished folder finds the run's prefix cache by its weights and reads it
    refit = fit_folder_readout(cached, cache_dir=root / "cache", device="cpu", show_progress=False)
    assert refit.info["encoded_from"] == "the run's prefix cache (1 layers)"
    torch.testing.assert_close(refit.weight.float(), readouts[0]["weight"].float(), atol=1e-4, rtol=1e-4)
    elsewhere = fit_folder_readout(cached, cache_dir=root / "empty-cache", device="cpu", show_progress=False)
    assert "encoded_from" not in elsewhere.info
    torch.testing.assert_close(elsewhere.weight.float(), readouts[0]["weight"].float(), atol=1e-4, rtol=1e-4)
    # a second run reads the cache only
    again = run_in_process(whisper_run_args(tiny_whisper_start, root / "again", root / "cache", "--max_steps", "1"))
    assert "(48 hits, 0 computed" in capsys.readouterr().out and (again / "config.json").is_file()


@pytest.mark.slow
def test_two_process_ddp_with_the_cache_equals_one_process_without(uncached_run, tiny_whisper_start, tmp_path,
                                                                      monkeypatch):
    # Both processes fill their half of a fresh cache, wait for each other, and train on the global batch of 2 x 8
    # (x 2 accumulated); the one-process run without the cache has the same global batch. Plain SGD at lr 1 (as in
    # test_gradient_cache.py): a parameter's change is its gradient, so equal weights mean equal gradients (Adam
    # would turn rounding differences of near-zero gradients into differences of lr). Without dropout: its draws
    # depend on the process.
    from tests.acula_train.test_gradient_cache import SGD_LAUNCHER

    root, _ = uncached_run
    sgd = ("--max_steps", "2", "--warmup_steps", "0", "--learning_rate", "1", "--max_grad_norm", "1e9",
           "--weight_decay", "0")
    monkeypatch.setattr(torch.optim, "AdamW",
                        lambda params, lr, weight_decay=0.0, **kwargs: torch.optim.SGD(params, lr=lr))
    single = run_in_process(whisper_run_args(tiny_whisper_start, tmp_path / "single", root / "cache", *sgd,
                                             "--per_device_train_batch_size", "16", "--prefix_cache", "false",
                                             dropout=0.0))
    launcher = tmp_path / "sgd_train_acula.py"
    launcher.write_text(SGD_LAUNCHER.format(repo=str(REPO)))
    ddp = run_script(whisper_run_args(tiny_whisper_start, tmp_path / "ddp", tmp_path / "cache", *sgd, dropout=0.0),
                     processes=2, script=launcher)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    assert len(list((tmp_path / "cache" / "prefix").glob("*/??/*.safetensors"))) == 48
    # 48 rows make 3 global micro-batches of 16 per epoch: steps of 2 and 1 (the epoch's rest) micro-batches
    assert [record["alignment_batch_size"] for record in read_log(tmp_path / "ddp")] == [32, 16]
    assert [record["alignment_batch_size"] for record in read_log(single)] == [32, 16]
    start = AculaForPreTraining.from_audio_backbone(str(tiny_whisper_start), window_seconds=WINDOW,
                                                    teacher_hidden_size=384).state_dict()
    trained = load_file(str(single / "alignment" / "model.safetensors"))
    assert any(not torch.allclose(trained[name], start[name], atol=1e-3) for name in trained
               if "backbone.layers.2.self_attn" in name)  # the steps did move the adapted layers
    assert_same_run(tmp_path / "ddp", single, atol=1e-5)


@pytest.mark.slow
def test_kill_and_resume_with_the_cache_gives_the_uninterrupted_result(uncached_run, tiny_whisper_start, tmp_path):
    from tests.acula_train.test_train_acula import LAUNCHER

    root, _ = uncached_run
    launcher = tmp_path / "hooked_train_acula.py"
    launcher.write_text(LAUNCHER.format(repo=str(REPO)))
    common = ("--max_steps", "5", "--checkpointing_steps", "2")
    reference = run_script(whisper_run_args(tiny_whisper_start, tmp_path / "reference", root / "cache", *common))
    assert reference.returncode == 0, reference.stderr[-4000:]
    args = whisper_run_args(tiny_whisper_start, tmp_path / "run", root / "cache", *common,
                            "--resume_from_checkpoint", "latest")
    killed = run_script(args, env={"ACULA_TEST_KILL_AT": "after_step:3"}, script=launcher)
    assert killed.returncode == -9, killed.stderr[-4000:]
    resumed = run_script(args)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Resumed from" in resumed.stdout and "(48 hits, 0 computed" in resumed.stdout
    final = load_file(str(tmp_path / "run" / "alignment" / "model.safetensors"))
    expected = load_file(str(tmp_path / "reference" / "alignment" / "model.safetensors"))
    for name, value in expected.items():
        assert torch.equal(final[name], value), name
    assert read_log(tmp_path / "run")[-1] == read_log(tmp_path / "reference")[-1]
