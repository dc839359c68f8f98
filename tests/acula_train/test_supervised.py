"""The supervised ceiling (`--supervised_label_column`): the alignment recipe's trainable parameters trained with
cross-entropy on a label column of the shipped pack's lung recordings (normal / abnormal), on a tiny Whisper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

import modeling_acula  # noqa: F401  (registers the Auto classes)
from modeling_acula import AculaForAudioClassification, AculaForPreTraining, AculaModel
from acula_train.manifest import load_manifest
from acula_train.supervised import select_labelled_rows

from tests.testing_utils import REPO, read_log, run_in_process, run_script, tiny_args, tiny_whisper_config

DEMO_MANIFEST = REPO / "data" / "auscultation-mini" / "metadata.csv"
LUNG = ("--supervised_label_column", "label", "--supervised_label_values", "normal,abnormal",
        "--supervised_drop_other_labels")


@pytest.fixture(scope="module")
def tiny_whisper_start(tmp_path_factory) -> Path:
    from transformers import WhisperModel

    folder = tmp_path_factory.mktemp("whisper") / "tiny-whisper"
    torch.manual_seed(0)
    WhisperModel(tiny_whisper_config(encoder_layers=3)).save_pretrained(folder)
    return folder


def supervised_args(start: Path, output: Path, cache: Path, *extra: str) -> list[str]:
    """16 lung recordings of the pack, one optimiser step over all of them (8 x 2), LoRA on the top 2 of 3 layers."""
    args = tiny_args(output, cache, "--window_seconds", "2", "--lora_top_layers", "2", "--max_train_samples", "16",
                     "--learning_rate", "3e-3", "--warmup_steps", "0", "--checkpointing_steps", "0", *LUNG, *extra)
    args[args.index("--init_from") + 1] = str(start)
    args[args.index("--config_overrides") + 1] = json.dumps({"projection_hidden_size": 32, "projection_dim": 16})
    args[args.index("--gradient_accumulation_steps") + 1] = "2"
    return args


@pytest.fixture(scope="module")
def ceiling(tiny_whisper_start, tmp_path_factory):
    root = tmp_path_factory.mktemp("supervised")
    return run_in_process(supervised_args(tiny_whisper_start, root / "out", root / "cache", "--max_steps", "6")), root


def test_the_loss_decreases_and_the_preservation_term_is_on(ceiling):
    output, _ = ceiling
    log = read_log(output)
    assert len(log) == 6 and all(record["batch_size"] == 16 for record in log)
    losses = [record["supervised_loss"] for record in log]
    assert losses[-1] < 0.95 * losses[0] and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert log[-1]["preservation_loss"] > 0  # feature distillation, the start's default, still runs
    assert "alignment_loss" not in log[-1]


def test_the_folder_loads_like_an_aligned_one_with_its_classifier(ceiling, tiny_whisper_start):
    output, _ = ceiling
    encoder, extractor = AutoModel.from_pretrained(output).eval(), AutoFeatureExtractor.from_pretrained(output)
    assert isinstance(encoder, AculaModel) and type(encoder.backbone).__name__ == "WhisperEncoder"
    classifier = AutoModelForAudioClassification.from_pretrained(output, subfolder="classifier").eval()
    assert isinstance(classifier, AculaForAudioClassification)
    assert classifier.config.id2label == {0: "normal", 1: "abnormal"}
    inputs = extractor([torch.randn(16000).numpy(), torch.randn(24000).numpy()], sampling_rate=16000,
                       return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(classifier.acula(**inputs).pooler_output, encoder(**inputs).pooler_output)
        assert classifier(**inputs).logits.shape == (2, 2)
    # LoRA on the top 2 layers only: the merged encoder differs from the start in their attention alone
    start = AculaForPreTraining.from_audio_backbone(str(tiny_whisper_start), window_seconds=2.0,
                                                    teacher_hidden_size=384).acula.state_dict()
    changed = {name for name, value in encoder.state_dict().items() if not torch.equal(value, start[name])}
    assert changed and all("self_attn" in name and ".layers.0." not in name for name in changed), sorted(changed)
    # no alignment heads, readout or reports: nothing of a teacher
    assert not (output / "alignment").exists() and not (output / "reports.jsonl").exists()
    assert (output / "aligned_recordings.jsonl").is_file()  # the evaluator's leakage check still works


def test_the_objective_and_the_dropped_rows_are_recorded(ceiling):
    output, _ = ceiling
    summary = json.loads((output / "data_summary.json").read_text())
    objective = summary["objective"]
    assert objective["kind"] == "supervised" and objective["label_column"] == "label"
    assert objective["classes"] == ["normal", "abnormal"] and objective["preservation"] == "feature_distillation"
    # the pack's 48 train rows: 24 lung (normal / abnormal), 24 breath and cough recordings dropped by value
    assert objective["dropped_rows"] == {"breathing-deep": 6, "breathing-shallow": 7, "cough-heavy": 6,
                                         "cough-shallow": 5}
    assert summary["skipped"]["label_not_a_class"] == 24 and summary["rows_used"] == 16
    skipped = [json.loads(line) for line in (output / "skipped_rows.jsonl").read_text().splitlines()]
    assert len(skipped) == 24 and all("is not a class (--supervised_drop_other_labels)" in r["reason"] for r in skipped)
    card = (output / "README.md").read_text()
    assert "**supervised ceiling**" in card
    assert "against the manifest column `label`, classes `normal`, `abnormal`" in card
    assert "`cough-heavy` 6" in card
    args = json.loads((output / "training_args.json").read_text())
    assert args["data"]["supervised_label_column"] == "label"


def test_the_prefix_cache_serves_the_supervised_run_too(ceiling, tiny_whisper_start, capsys):
    output, root = ceiling
    uncached = run_in_process(supervised_args(tiny_whisper_start, root / "uncached", root / "cache", "--max_steps",
                                              "6", "--prefix_cache", "false"))
    assert "Prefix cache: off (--prefix_cache false)" in capsys.readouterr().out
    for a, b in zip(read_log(output), read_log(uncached)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    cached_weights = load_file(str(output / "model.safetensors"))
    uncached_weights = load_file(str(uncached / "model.safetensors"))
    for name, value in cached_weights.items():
        torch.testing.assert_close(value, uncached_weights[name], atol=1e-5, rtol=0, msg=name)


def test_preservation_can_be_switched_off(tiny_whisper_start, ceiling):
    _, root = ceiling
    output = run_in_process(supervised_args(tiny_whisper_start, root / "none", root / "cache", "--max_steps", "1",
                                            "--preservation_loss", "none"))
    assert "preservation_loss" not in read_log(output)[0]
    assert json.loads((output / "data_summary.json").read_text())["objective"]["preservation"] == "none"


# --- labels that are refused ---------------------------------------------------------------------------------------


def test_a_bad_label_column_names_the_columns_that_exist(tiny_whisper_start, tmp_path):
    args = supervised_args(tiny_whisper_start, tmp_path / "out", tmp_path / "cache", "--max_steps", "1")
    args[args.index("--supervised_label_column") + 1] = "murmur_at_site"
    with pytest.raises(ValueError, match=r"--supervised_label_column 'murmur_at_site': .*metadata\.csv has no such "
                                         r"column; its columns are: file, source_dataset, .*label, sublabel"):
        run_in_process(args)
    assert not (tmp_path / "cache" / "spectrograms").exists()  # refused before any work


def test_other_labels_are_refused_unless_dropped_explicitly():
    manifest = load_manifest(DEMO_MANIFEST)
    with pytest.raises(ValueError, match=r"28 rows have an empty label or one that is not among the classes "
                                         r"\['normal', 'abnormal'\] \('breathing-deep': 6, .*first: .*metadata\.csv "
                                         r"line 4: 'cough-heavy'.*Pass --supervised_drop_other_labels"):
        select_labelled_rows(manifest, "label", "normal,abnormal")
    kept, labels = select_labelled_rows(manifest, "label", "abnormal,normal", drop_others=True)
    assert len(kept) == 28 and sum(labels.dropped.values()) == 28 and len(labels.dropped_rows) == 28
    assert labels.label_ids(kept).tolist() == [1 if row["label"] == "normal" else 0 for row in kept.rows]
    # without --supervised_label_values the classes are the column's values, sorted; empty labels are refused
    automatic, every = select_labelled_rows(manifest, "modality")
    assert every.classes == ["breath", "cough", "lung"] and len(automatic) == 56
    with pytest.raises(ValueError, match=r"empty label .*\(''"):
        select_labelled_rows(manifest, "sublabel", "a,b")
    with pytest.raises(ValueError, match="at least two classes"):
        select_labelled_rows(manifest, "source_dataset", "KAUH_lung_sounds", drop_others=True)


def test_supervised_options_need_the_label_column(tmp_path):
    from acula_train.arguments import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--supervised_label_values", "a,b"])
    with pytest.raises(SystemExit):
        parse_args(["--supervised_label_column", "label", "--report_column", "report"])
    with pytest.raises(SystemExit):
        parse_args(["--preservation_loss", "mam"])


@pytest.mark.slow
def test_kill_and_resume_of_a_supervised_run_gives_the_uninterrupted_result(tiny_whisper_start, tmp_path):
    from tests.acula_train.test_train_acula import LAUNCHER

    launcher = tmp_path / "hooked_train_acula.py"
    launcher.write_text(LAUNCHER.format(repo=str(REPO)))
    common = ("--max_steps", "5", "--checkpointing_steps", "2", "--lora_dropout", "0.1")
    reference = run_script(supervised_args(tiny_whisper_start, tmp_path / "reference", tmp_path / "cache", *common))
    assert reference.returncode == 0, reference.stderr[-4000:]
    args = supervised_args(tiny_whisper_start, tmp_path / "run", tmp_path / "cache", *common,
                           "--resume_from_checkpoint", "latest")
    killed = run_script(args, env={"ACULA_TEST_KILL_AT": "after_step:3"}, script=launcher)
    assert killed.returncode == -9, killed.stderr[-4000:]
    resumed = run_script(args)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Resumed from" in resumed.stdout
    for name in ("model.safetensors", "classifier/model.safetensors"):
        final, expected = load_file(str(tmp_path / "run" / name)), load_file(str(tmp_path / "reference" / name))
        for key, value in expected.items():
            assert torch.equal(final[key], value), f"{name}: {key}"
