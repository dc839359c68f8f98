"""train_acula.py end to end on the shipped recordings: outputs, caches, 2-process DDP, kill and resume."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState, PartialState
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor, AutoModel

import train_acula
from modeling_acula import AculaForPreTraining, AculaModel

REPO = Path(__file__).resolve().parents[1]
TINY = json.dumps({
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "decoder_hidden_size": 16,
    "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2, "projection_hidden_size": 32,
    "projection_dim": 16, "projection_dropout": 0.0,
})


def tiny_args(output_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [
        "--output_dir", str(output_dir), "--cache_dir", str(cache_dir), "--config_overrides", TINY,
        "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3",
        "--logging_steps", "1", "--lora_dropout", "0", *extra,
    ]


def run_in_process(args: list[str]) -> Path:
    try:
        return train_acula.main(args)
    finally:  # Accelerate's state is a process-wide singleton
        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()


def run_script(args: list[str], *, processes: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if processes == 1:
        command = [sys.executable, str(REPO / "train_acula.py"), *args]
    else:  # real multi-process DDP on gloo (see ENVIRONMENT.md: --cpu alone would run one process)
        environment["ACCELERATE_USE_CPU"] = "true"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(29500 + os.getpid() % 1000), str(REPO / "train_acula.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600, cwd=REPO)


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs" / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short LoRA run on the 48 training recordings of the shipped pack."""
    root = tmp_path_factory.mktemp("train")
    output = run_in_process(tiny_args(root / "out", root / "cache", "--max_steps", "4", "--checkpointing_steps", "2"))
    return output, root


def test_output_folder_loads_with_auto_classes(trained):
    output, _ = trained
    model = AutoModel.from_pretrained(output).eval()
    extractor = AutoFeatureExtractor.from_pretrained(output)
    assert type(model) is AculaModel
    alignment = AculaForPreTraining.from_pretrained(output / "alignment").eval()
    inputs = extractor([torch.randn(16000 * 3).numpy()], sampling_rate=16000, return_tensors="pt")
    # the top-level encoder is the merged LoRA encoder of the alignment model
    torch.testing.assert_close(model(**inputs).pooler_output, alignment.acula(**inputs).pooler_output)
    adapter = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 8


def test_output_records_data_teacher_and_card(trained):
    output, _ = trained
    summary = json.loads((output / "data_summary.json").read_text())
    assert summary["rows_in_manifest"] == 56 and summary["rows_used"] == 48
    assert summary["leakage"]["removed"] == {"split": 8}
    assert set(summary["sources"]) == {"KAUH_lung_sounds", "Coswara_20200413"} and summary["all_cc_by_4"]
    reports = [json.loads(line) for line in (output / "reports.jsonl").read_text().splitlines()]
    assert len(reports) == 48 and all(r["report"].strip() for r in reports)
    teacher = json.loads((output / "teacher.json").read_text())
    assert teacher["hidden_size"] == 384 and teacher["pooling"] == "mean"
    config = json.loads((output / "config.json").read_text())
    assert config["teacher_hidden_size"] == 384 and config["model_type"] == "acula"
    args = json.loads((output / "training_args.json").read_text())
    assert args["training"]["max_steps"] == 4
    card = (output / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert "not-for-diagnosis" in metadata["tags"] and metadata["license"] == "cc-by-4.0"
    assert "Not for diagnosis" in card and "KAUH_lung_sounds" in card and "all-MiniLM-L6-v2" in card
    log = read_log(output)
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in log)
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".pth")) for name in os.listdir(output))


def test_checkpoints_are_safetensors_and_json(trained):
    output, _ = trained
    checkpoints = sorted(p.name for p in (output / "checkpoints").iterdir())
    assert checkpoints == ["step-00000002"]  # step 4 is the end of the run: the output folder, not a checkpoint
    assert {p.name for p in (output / "checkpoints" / "step-00000002").iterdir()} == {
        "model.safetensors", "optimizer.safetensors", "trainer_state.json"}


def test_push_to_hub_uploads_exactly_the_model_files(trained):
    output, _ = trained
    files = train_acula.upload_file_list(output)
    expected = {
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json", "configuration_acula.py",
        "modeling_acula.py", "losses.py", "feature_extraction_acula.py", "training_args.json", "teacher.json",
        "data_summary.json", "reports.jsonl", "skipped_rows.jsonl", "adapter/README.md", "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors", "alignment/config.json", "alignment/model.safetensors",
        "alignment/configuration_acula.py", "alignment/modeling_acula.py", "alignment/losses.py",
    }
    assert set(files) == expected


def test_second_run_reuses_caches(trained, capsys, monkeypatch):
    _, root = trained

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached recording was decoded again")

    monkeypatch.setattr("modeling_acula.audio_batches.decode_audio", no_decoding)
    monkeypatch.setattr("modeling_acula.spectrogram_cache.decode_audio", no_decoding)
    run_in_process(tiny_args(root / "again", root / "cache", "--max_steps", "1", "--checkpointing_steps", "0"))
    out = capsys.readouterr().out
    assert "hits=48, computed=0" in out  # every report's teacher vector comes from the cache


def test_silent_recordings_are_skipped_and_listed(tmp_path):
    import csv

    import numpy as np
    import soundfile as sf

    rows = list(csv.DictReader(open(REPO / "data" / "auscultation-mini" / "metadata.csv", encoding="utf-8")))
    for row in rows:
        row["file"] = str(REPO / "data" / "auscultation-mini" / row["file"])
    silent = dict(rows[0], file=str(tmp_path / "silent.flac"), group_id="silent-1", suggested_split="train")
    sf.write(silent["file"], np.zeros(16000 * 5, dtype=np.float32), 16000)
    with open(tmp_path / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + [silent])
    output = run_in_process(tiny_args(tmp_path / "out", tmp_path / "cache", "--manifest", str(tmp_path / "manifest.csv"),
                                      "--split_column", "suggested_split", "--max_steps", "1"))
    skipped = [json.loads(line) for line in (output / "skipped_rows.jsonl").read_text().splitlines()]
    assert [Path(s["file"]).name for s in skipped] == ["silent.flac"] and "line 58" in skipped[0]["row"]
    summary = json.loads((output / "data_summary.json").read_text())
    assert summary["rows_used"] == 48 and summary["skipped"] == {"silent": 1}


def test_refuses_a_cache_of_another_teacher_setting(trained):
    _, root = trained
    with pytest.raises(ValueError, match="pooling"):
        from modeling_acula.teacher_cache import TeacherEmbeddingCache

        index = json.loads((root / "cache" / "teacher" / "index.json").read_text())
        TeacherEmbeddingCache(root / "cache" / "teacher", {**index["identity"], "pooling": "cls"})


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_global_batch(tmp_path):
    common = ["--max_steps", "3", "--checkpointing_steps", "0", "--log_batch_indices"]
    two = run_script(tiny_args(tmp_path / "ddp", tmp_path / "cache", *common), processes=2)
    assert two.returncode == 0, two.stderr[-4000:]
    # the single process sees the same global batch of 16 (2 x 8)
    one_args = tiny_args(tmp_path / "single", tmp_path / "cache", *common)
    one_args[one_args.index("--per_device_train_batch_size") + 1] = "16"
    one = run_script(one_args)
    assert one.returncode == 0, one.stderr[-4000:]

    def indices(folder: Path, rank: int) -> list[list[int]]:
        lines = (folder / "logs" / f"batch_indices_rank{rank}.jsonl").read_text().splitlines()
        return [record["indices"] for record in map(json.loads, lines) if "indices" in record]

    rank0, rank1, single = indices(tmp_path / "ddp", 0), indices(tmp_path / "ddp", 1), indices(tmp_path / "single", 0)
    for a, b, s in zip(rank0, rank1, single):
        assert not set(a) & set(b)  # different shards
        assert sorted(a + b) == sorted(s)  # together: the single process's batch
    # the loss is the single-process loss of the same global batch, step by step: exactly (up to float rounding)
    # for the first two steps; later, Adam's normalised update has turned rounding differences of near-zero
    # gradients into weight differences of up to lr (seen: 1.7e-4 relative at step 3 on an Intel Xeon with AMX,
    # below 1e-5 on an AMD EPYC), so later steps are compared at 1e-3.
    ddp_log, single_log = read_log(tmp_path / "ddp"), read_log(tmp_path / "single")
    assert len(ddp_log) == len(single_log) == 3
    for step, (d, s) in enumerate(zip(ddp_log, single_log)):
        tolerance = 1e-5 if step < 2 else 1e-3
        assert d["loss"] == pytest.approx(s["loss"], rel=tolerance)
        assert d["alignment_loss"] == pytest.approx(s["alignment_loss"], rel=tolerance)
    # parameters stayed equal across ranks, and equal the single-process ones
    checks = [json.loads((tmp_path / "ddp" / "logs" / f"batch_indices_rank{r}.jsonl").read_text().splitlines()[-1])
              for r in (0, 1)]
    assert checks[0]["parameter_checksum"] == checks[1]["parameter_checksum"]
    # and the trained models agree with the single-process one. (Weights are compared through outputs: Adam's
    # normalised update turns float-rounding differences of near-zero gradients into differences of up to lr.)
    ddp_model = AculaForPreTraining.from_pretrained(tmp_path / "ddp" / "alignment").eval()
    single_model = AculaForPreTraining.from_pretrained(tmp_path / "single" / "alignment").eval()
    spectrograms = torch.rand(4, 1, 256, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ddp_model(spectrograms).audio_embeds, single_model(spectrograms).audio_embeds,
                               atol=2e-3, rtol=1e-3)


KILL_RUN = ["--max_steps", "7", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2"]
# Two fixed kill points (between checkpoints; inside a checkpoint write) and one drawn afresh on every run.
RANDOM_FAULT = random.choice([f"after_step:{k}" for k in range(1, 8)] + [f"checkpoint_write:{k}" for k in (2, 4, 6)])


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    result = run_script(tiny_args(root / "reference", root / "cache", *KILL_RUN))
    assert result.returncode == 0, result.stderr[-4000:]
    return root


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["after_step:5", "checkpoint_write:4", RANDOM_FAULT])
def test_sigkill_and_resume_gives_the_uninterrupted_result(uninterrupted_run, tmp_path, fault):
    point, step = fault.split(":")
    step = int(step)
    args = tiny_args(tmp_path / "run", uninterrupted_run / "cache", *KILL_RUN, "--resume_from_checkpoint", "latest")
    killed = run_script(args, env={"ACULA_FAULT_INJECTION": fault})
    assert killed.returncode == -9, f"{fault}: {killed.stderr[-4000:]}"
    # whole checkpoints are the last two saved before the kill (every 2 steps, never at the final step 7; a kill
    # "after step k" comes before step k's checkpoint); a kill inside a write leaves that step only as a temporary
    # folder, never under a checkpoint name
    saved = [k for k in range(2, 7, 2) if k < step][-2:]
    expected = [f"step-{k:08d}" for k in saved] + ([f".tmp-step-{step:08d}"] if point == "checkpoint_write" else [])
    folder = tmp_path / "run" / "checkpoints"
    found = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert found == sorted(expected), fault
    assert not (tmp_path / "run" / "config.json").exists()  # no half-finished model

    resumed = run_script(args)
    assert resumed.returncode == 0, f"{fault}: {resumed.stderr[-4000:]}"
    assert ("Resumed from" in resumed.stdout) == bool(saved), fault
    final = load_file(str(tmp_path / "run" / "alignment" / "model.safetensors"))
    expected_weights = load_file(str(uninterrupted_run / "reference" / "alignment" / "model.safetensors"))
    for name, value in expected_weights.items():
        assert torch.equal(final[name], value), f"{fault}: {name}"
    assert read_log(tmp_path / "run")[-1] == read_log(uninterrupted_run / "reference")[-1], fault


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--spectrogram_dtype", "float16", "--spectrogram_dtype must be 'float32' or 'float64'"),
    ("--decode_workers", "-1", "--decode_workers must be >= 0"),
])
def test_bad_data_settings_are_refused_before_any_work(flag, value, message, capsys):
    with pytest.raises(SystemExit):
        train_acula.parse_args([flag, value])
    assert message in capsys.readouterr().err
