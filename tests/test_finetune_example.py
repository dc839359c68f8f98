"""examples/finetune_classifier.py as a Hub user runs it: `load_dataset`, a feature-extraction `map`, peft LoRA,
`Trainer` with `evaluate` metrics, on a tiny encoder and CirCor's murmur label (present / absent)."""

import csv
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Audio, ClassLabel, Features
from peft import PeftModel
from safetensors import safe_open
from sklearn.metrics import roc_auc_score
from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification

from acula_train.layouts.circor import read_circor
from modeling_acula.audio_utils import decode_audio

from tests.testing_utils import save_tiny_encoder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

import finetune_classifier  # noqa: E402

NAMES = ["absent", "present"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny-acula"))


@pytest.fixture(scope="module")
def circor_csv(circor_sample, tmp_path_factory):
    """train.csv / validation.csv with audio paths relative to their own folder (which links to CirCor's
    `training_data/`): the reader's train patients, and its val + test patients held out (no patient on both sides);
    patients whose murmur is "Unknown" are left out."""
    folder = tmp_path_factory.mktemp("circor-csv")
    (folder / "training_data").symlink_to(circor_sample / "training_data", target_is_directory=True)
    rows = {"train": [], "validation": []}
    for row in read_circor(circor_sample, verify_checksums=False, read_audio_info=False):
        if row["murmur"] in ("Present", "Absent"):
            split = "train" if row["split"] == "train" else "validation"
            rows[split].append({"audio": row["file"], "label": row["murmur"].lower(), "patient": row["patient_id"]})
    for split, split_rows in rows.items():
        with open(folder / f"{split}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["audio", "label", "patient"])
            writer.writeheader()
            writer.writerows(split_rows)
    assert {r["patient"] for r in rows["train"]}.isdisjoint(r["patient"] for r in rows["validation"])
    return folder, rows


def _args(model, output_dir, data, *extra):
    return ["--model_name_or_path", str(model), "--output_dir", str(output_dir), *data,
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--learning_rate", "5e-3",
            "--report_to", "none", "--save_strategy", "no", "--use_cpu", "--seed", "0", "--logging_steps", "1",
            "--dataloader_num_workers", "0", *extra]


@pytest.fixture(scope="module")
def circor_audiofolder(circor_sample, circor_csv, tmp_path_factory):
    """The same recordings as an `audiofolder`: `<split>/<label>/<file>.wav`."""
    folder = tmp_path_factory.mktemp("circor-audiofolder")
    paths = {}
    for split, rows in circor_csv[1].items():
        paths[split] = []
        for row in rows:
            target = folder / split / row["label"] / Path(row["audio"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(circor_sample / row["audio"], target)
            paths[split].append({"audio": target, "label": row["label"]})
    return folder, paths


def _validation_logits(model, extractor, rows):
    waves = [decode_audio(row["audio"], extractor.sampling_rate) for row in rows]
    with torch.no_grad():
        return model.eval()(**extractor(waves, sampling_rate=extractor.sampling_rate, return_tensors="pt")).logits


def test_finetune_lora_on_circor_audiofolder(tiny_folder, circor_audiofolder, tmp_path):
    folder, rows = circor_audiofolder
    output = tmp_path / "murmur"
    data = ["--dataset_name", "audiofolder", "--data_dir", str(folder), "--audio_column_name", "audio",
            "--label_column_name", "label"]
    metrics = finetune_classifier.main(_args(tiny_folder, output, data, "--do_train", "--do_eval",
                                             "--num_train_epochs", "3", "--merge_adapter", "true"))

    for key in ("eval_roc_auc", "eval_accuracy", "eval_loss", "train_loss"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["eval_roc_auc"] <= 1.0 and 0.0 <= metrics["eval_accuracy"] <= 1.0
    # the label names come from the folder names (a ClassLabel), and are written beside the adapter
    config = AutoConfig.from_pretrained(output)
    assert config.id2label == dict(enumerate(NAMES)) and config.label2id == {n: i for i, n in enumerate(NAMES)}
    assert json.loads((output / "adapter_config.json").read_text())["modules_to_save"] == ["classifier"]
    with safe_open(str(output / "adapter_model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
        assert any("classifier" in key for key in keys)
        lora_b = [handle.get_tensor(key) for key in keys if "lora_B" in key]
    assert lora_b and any(tensor.abs().sum() > 0 for tensor in lora_b), "the adapters did not train"

    # the saved adapter loads back (peft's own path) and reproduces the evaluation: the same cross-entropy and the
    # same AUROC / accuracy, recomputed with scikit-learn with "present" as the positive class
    base = AutoModelForAudioClassification.from_pretrained(tiny_folder, config=config)
    model = PeftModel.from_pretrained(base, output)
    extractor = AutoFeatureExtractor.from_pretrained(output)
    logits = _validation_logits(model, extractor, rows["validation"])
    labels = torch.tensor([NAMES.index(row["label"]) for row in rows["validation"]])
    assert len(set(labels.tolist())) == 2
    assert torch.nn.functional.cross_entropy(logits, labels).item() == pytest.approx(metrics["eval_loss"], abs=1e-4)
    probabilities = logits.softmax(-1).numpy()
    assert metrics["eval_roc_auc"] == pytest.approx(roc_auc_score(labels.numpy(), probabilities[:, 1]), abs=1e-6)
    assert metrics["eval_accuracy"] == pytest.approx(float(np.mean(probabilities.argmax(-1) == labels.numpy())))

    # the merged classifier loads without peft and gives the same logits
    merged = AutoModelForAudioClassification.from_pretrained(output / "merged")
    assert merged.config.id2label == dict(enumerate(NAMES))
    torch.testing.assert_close(_validation_logits(merged, extractor, rows["validation"]), logits,
                               atol=1e-5, rtol=1e-5)


def test_hub_style_audio_column_matches_path_column(tiny_folder, circor_sample, circor_csv, tmp_path):
    """A parquet split with an embedded-bytes `Audio` column and a `ClassLabel` (how Hub audio datasets are stored)
    is decoded by acula, not torchcodec, and evaluates exactly as the same recordings read from paths."""
    folder, rows = circor_csv
    eval_rows = rows["validation"]
    audio_type = pa.struct({"bytes": pa.binary(), "path": pa.string()})
    table = pa.table({
        "audio": pa.array([{"bytes": (circor_sample / r["audio"]).read_bytes(), "path": Path(r["audio"]).name}
                           for r in eval_rows], type=audio_type),
        "murmur": pa.array([NAMES.index(r["label"]) for r in eval_rows], type=pa.int64()),
    })
    features = Features({"audio": Audio(), "murmur": ClassLabel(names=NAMES)})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features.to_dict()}})})
    pq.write_table(table, tmp_path / "test.parquet")

    common = ["--do_eval", "--eval_split_name", "test"]
    parquet = ["--dataset_name", "parquet", "--data_files", f"test={tmp_path / 'test.parquet'}",
               "--label_column_name", "murmur"]
    paths = ["--dataset_name", "csv", "--data_files", f"test={folder / 'validation.csv'}", "--group_column_name",
             "patient", "--bootstrap_samples", "200"]
    from_bytes = finetune_classifier.main(_args(tiny_folder, tmp_path / "bytes", parquet, *common))
    from_paths = finetune_classifier.main(_args(tiny_folder, tmp_path / "paths", paths, *common))
    assert math.isfinite(from_bytes["eval_roc_auc"])
    # the interval resamples the 7 held-out patients and holds the point estimate
    assert from_paths["eval_roc_auc_ci_low"] <= from_paths["eval_roc_auc"] <= from_paths["eval_roc_auc_ci_high"]
    assert from_paths["eval_roc_auc_ci_low"] < from_paths["eval_roc_auc_ci_high"]
    for key in ("eval_loss", "eval_roc_auc", "eval_accuracy"):
        assert from_bytes[key] == pytest.approx(from_paths[key], abs=1e-6), key


def test_arguments_follow_transformers_examples():
    model_args, data_args, training_args = finetune_classifier.parse_args([
        "--model_name_or_path", "acula/aligned", "--dataset_name", "user/heart-sounds", "--output_dir", "out",
        "--max_length_seconds", "5", "--lora_top_layers", "2", "--push_to_hub", "--hub_model_id", "user/murmur-lora",
    ])
    assert model_args.model_name_or_path == "acula/aligned" and model_args.lora_top_layers == 2
    assert data_args.max_length_seconds == 5.0 and data_args.train_split_name == "train"
    assert training_args.push_to_hub and training_args.hub_model_id == "user/murmur-lora"
    assert finetune_classifier.split_data_files(["train=a.csv", "validation=b.csv"]) == {
        "train": "a.csv", "validation": "b.csv"}
    with pytest.raises(ValueError, match="split=path"):
        finetune_classifier.split_data_files(["a.csv"])


def test_lora_targets_exist_in_the_encoder(tiny_folder):
    """The default target expressions match real modules: the native encoder's attention projections, and only the
    top layers of a Whisper backbone with --lora_top_layers."""
    import re

    from tests.testing_utils import tiny_whisper_backbone_config

    model_args = finetune_classifier.ModelArguments(model_name_or_path=str(tiny_folder))
    native = AutoModelForAudioClassification.from_pretrained(tiny_folder, num_labels=2)
    pattern = finetune_classifier.lora_target_modules(native.config, model_args)
    matched = [name for name, _ in native.named_modules() if re.fullmatch(pattern, name)]
    assert len(matched) == 2 * 4 and all(".attention." in name for name in matched)

    whisper = AutoModelForAudioClassification.from_config(tiny_whisper_backbone_config(num_labels=2))
    model_args.lora_top_layers = 1
    pattern = finetune_classifier.lora_target_modules(whisper.config, model_args)
    matched = [name for name, _ in whisper.named_modules() if re.fullmatch(pattern, name)]
    assert matched and all(".layers.1.self_attn." in name for name in matched)
    model_args.lora_top_layers = 3
    with pytest.raises(ValueError, match="1..2"):
        finetune_classifier.lora_target_modules(whisper.config, model_args)
