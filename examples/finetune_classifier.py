#!/usr/bin/env python
"""Fine-tune an aligned acula encoder for audio classification with LoRA, `datasets`, `evaluate` and `Trainer`.

The data is anything `load_dataset` reads: a Hub id, an `audiofolder` (one folder per split, one sub-folder per
label), or `csv` / `json` files with an audio path column and a label column. For example, on a CSV of paths:

    python examples/finetune_classifier.py \
        --model_name_or_path outputs/acula-aligned \
        --dataset_name csv --data_files train=train.csv validation=validation.csv \
        --audio_column_name audio --label_column_name label \
        --output_dir outputs/acula-murmur-lora --do_train --do_eval --num_train_epochs 3 --learning_rate 1e-3 \
        --per_device_train_batch_size 16 --eval_strategy epoch --save_strategy no

The encoder gets LoRA adapters (peft) on its attention projections; the new linear classifier is trained in full.
The output folder holds the adapter, the label names and the feature extractor; `--merge_adapter` also writes a
merged, plain classifier to `<output_dir>/merged` that `pipeline("audio-classification", model=...)` loads.
With `--push_to_hub --hub_model_id user/name` the adapter folder goes to the Hub.
"""

import io
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import evaluate
import numpy as np
import soundfile as sf
import torch
from datasets import (
    Array2D,
    Array3D,
    Array4D,
    Audio,
    ClassLabel,
    DatasetDict,
    Features,
    Sequence,
    Value,
    load_dataset,
)
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

import modeling_acula  # noqa: F401  (registers the acula classes with the Auto classes)
from acula_eval.metrics import load_metric
from acula_train.hf_datasets import _paths_without_torchcodec as paths_without_torchcodec
from modeling_acula.audio_utils import decode_audio, resample
from modeling_acula.lora import encoder_target_modules, whisper_target_modules

logger = logging.getLogger(__name__)

# Hub metrics cannot be downloaded offline: accuracy is a local `evaluate` module beside this script, AUROC is acula's
# own (acula_eval/metrics/roc_auc.py, with a patient-level bootstrap interval).
ACCURACY = Path(__file__).resolve().parent / "metrics" / "accuracy"


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on, and how to read it."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset id, or a builder name (`audiofolder`, `csv`, `json`) used with --data_dir or "
                          "--data_files."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset configuration name."})
    data_dir: str | None = field(
        default=None, metadata={"help": "The data folder of a builder (e.g. an `audiofolder`)."}
    )
    data_files: list[str] | None = field(
        default=None,
        metadata={"help": "Data files as `split=path` (e.g. `train=train.csv validation=val.csv`); relative audio "
                          "paths in them are read from the first file's folder."},
    )
    train_split_name: str = field(default="train", metadata={"help": "The training split."})
    eval_split_name: str = field(default="validation", metadata={"help": "The evaluation split."})
    audio_column_name: str = field(
        default="audio", metadata={"help": "The column holding the audio (an `Audio` feature or a file path)."}
    )
    label_column_name: str = field(default="label", metadata={"help": "The column holding the class."})
    max_length_seconds: float | None = field(
        default=None,
        metadata={"help": "Keep the first N seconds of each recording (default: the feature extractor's window; "
                          "longer recordings are cropped to it)."},
    )
    group_column_name: str | None = field(
        default=None,
        metadata={"help": "A patient column: the AUROC interval then resamples patients (with --bootstrap_samples)."},
    )
    bootstrap_samples: int = field(
        default=0, metadata={"help": "Bootstrap resamples of a 95% interval around the evaluation AUROC."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation examples."})
    preprocessing_batch_size: int = field(default=16, metadata={"help": "Recordings per feature-extraction batch."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes of the `map`."})


@dataclass
class ModelArguments:
    """Which encoder to start from and how to adapt it."""

    model_name_or_path: str = field(
        metadata={"help": "An aligned acula folder or Hub id (e.g. the output of train_acula.py)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are stored."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})
    use_lora: bool = field(default=True, metadata={"help": "Train LoRA adapters; `--use_lora false` trains it all."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={"help": "Regular expression of the module names to adapt (default: the encoder's attention "
                          "projections)."},
    )
    lora_top_layers: int | None = field(
        default=None,
        metadata={"help": "Whisper backbones: adapt only the top N encoder layers (the backward pass then stops "
                          "below them)."},
    )
    merge_adapter: bool = field(
        default=False, metadata={"help": "Also save the merged classifier (no peft needed) to <output_dir>/merged."}
    )


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataTrainingArguments, TrainingArguments]:
    """Parses `argv` (default: the command line), or a single `.json` file of arguments, as transformers' examples.

    Args:
        argv (`list[str]`, *optional*): the arguments; defaults to `sys.argv[1:]`.
    """
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def split_data_files(data_files: list[str] | None) -> dict[str, str] | None:
    """`["train=a.csv", "validation=b.csv"]` -> `{"train": "a.csv", "validation": "b.csv"}`."""
    if not data_files:
        return None
    pairs = {}
    for item in data_files:
        split, sep, path = item.partition("=")
        if not sep or not split or not path:
            raise ValueError(f"--data_files takes split=path entries, got {item!r}.")
        pairs[split] = path
    return pairs


def load_waveform(audio: dict | str, sampling_rate: int, quality: str, root: str | None) -> np.ndarray:
    """One audio cell as float32 mono at `sampling_rate`, through acula's audio path (soundfile + soxr, no FFmpeg).

    Args:
        audio (`dict` or `str`): an undecoded `Audio` cell (`{"path", "bytes"}`, as `Audio(decode=False)` gives it)
            or a file path.
        sampling_rate (`int`): the feature extractor's rate.
        quality (`str`): the feature extractor's soxr quality.
        root (`str`, *optional*): the folder relative paths are read from.
    """
    if isinstance(audio, str):
        audio = {"path": audio, "bytes": None}
    if audio.get("bytes") is not None:
        samples, rate = sf.read(io.BytesIO(audio["bytes"]), dtype="float32", always_2d=True)
        mono = samples.mean(axis=1)
        return mono if rate == sampling_rate else resample(mono, rate, sampling_rate, quality)
    path = audio["path"]
    if root is not None and not os.path.isabs(path):
        path = os.path.join(root, path)
    return decode_audio(path, sampling_rate, quality)


def label_names(dataset: DatasetDict, column: str) -> list[str]:
    """Class names: a `ClassLabel`'s own names (audiofolder), else the sorted values of every split, so that each
    split maps a name to the same id."""
    feature = next(iter(dataset.values())).features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return sorted({str(value) for split in dataset.values() for value in split[column]})


def feature_types(feature_extractor, names: list[str]) -> Features:
    """Fixed-shape `datasets` types of the feature extractor's outputs (read back ~5x faster than nested lists),
    found by featurising one second of silence, and the labels as a `ClassLabel`."""
    rate = feature_extractor.sampling_rate
    probe = feature_extractor([np.zeros(rate, dtype=np.float32)], sampling_rate=rate, return_tensors="np")
    array_types = {2: Array2D, 3: Array3D, 4: Array4D}
    types = {}
    for key, value in probe.items():
        shape = tuple(value.shape[1:])
        dtype = str(value.dtype)
        types[key] = array_types[len(shape)](shape, dtype) if len(shape) in array_types else Sequence(Value(dtype))
    return Features({**types, "labels": ClassLabel(names=names)})


def build_compute_metrics(num_labels: int, bootstrap_samples: int = 0, groups: list | None = None):
    """`compute_metrics` for `Trainer`: AUROC (of the positive class, id 1, for two classes; one-vs-rest macro
    average otherwise) and accuracy, through local `evaluate` modules.

    Args:
        num_labels (`int`): number of classes.
        bootstrap_samples (`int`, *optional*, defaults to 0): resamples of the AUROC's 95% interval (none if 0).
        groups (`list`, *optional*): the patient of each evaluation example, in order: the bootstrap then resamples
            patients, not recordings.
    """
    roc_auc = load_metric("roc_auc", "binary" if num_labels == 2 else "multiclass")
    accuracy = evaluate.load(str(ACCURACY))

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        probabilities = torch.from_numpy(np.asarray(logits, dtype=np.float64)).softmax(-1).numpy()
        scores = probabilities[:, 1] if num_labels == 2 else probabilities
        metrics = roc_auc.compute(prediction_scores=scores, references=labels, bootstrap_samples=bootstrap_samples,
                                  groups=groups)
        metrics.update(accuracy.compute(predictions=probabilities.argmax(-1), references=labels))
        return metrics

    return compute_metrics


def lora_target_modules(config, model_args: ModelArguments) -> str:
    """The encoder's attention projections (native ViT or Whisper module names), or the user's expression."""
    if model_args.lora_target_modules:
        return model_args.lora_target_modules
    backbone = getattr(config, "audio_backbone_config", None)
    if backbone is None:
        if model_args.lora_top_layers is not None:
            raise ValueError("--lora_top_layers applies to Whisper backbones only.")
        return encoder_target_modules()
    if getattr(backbone, "model_type", None) != "whisper":
        raise ValueError(f"No default LoRA targets for a {backbone.model_type} backbone: pass --lora_target_modules.")
    depth = backbone.encoder_layers
    top = model_args.lora_top_layers
    if top is not None and not 0 < top <= depth:
        raise ValueError(f"--lora_top_layers must be in 1..{depth}, got {top}.")
    return whisper_target_modules(layers=None if top is None else range(depth - top, depth))


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    set_seed(training_args.seed)

    # `audiofolder` stores each file through `Audio.encode_example`, which imports torchcodec even for a path
    with paths_without_torchcodec():
        raw = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            data_dir=data_args.data_dir,
            data_files=split_data_files(data_args.data_files),
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    splits = [data_args.train_split_name] * training_args.do_train + [data_args.eval_split_name] * training_args.do_eval
    if not splits:
        raise ValueError("Nothing to do: pass --do_train and/or --do_eval.")
    for split in splits:
        if split not in raw:
            raise ValueError(f"Split {split!r} not found; the dataset has {list(raw)}.")
    raw = DatasetDict({split: raw[split] for split in splits})
    columns = (data_args.audio_column_name, data_args.label_column_name, data_args.group_column_name)
    for column in filter(None, columns):
        if column not in raw[splits[0]].column_names:
            raise ValueError(f"Column {column!r} not found; the dataset has {raw[splits[0]].column_names}.")
    if data_args.max_train_samples is not None and data_args.train_split_name in raw:
        raw[data_args.train_split_name] = raw[data_args.train_split_name].select(
            range(min(data_args.max_train_samples, len(raw[data_args.train_split_name]))))
    if data_args.max_eval_samples is not None and data_args.eval_split_name in raw:
        raw[data_args.eval_split_name] = raw[data_args.eval_split_name].select(
            range(min(data_args.max_eval_samples, len(raw[data_args.eval_split_name]))))

    names = label_names(raw, data_args.label_column_name)
    label2id = {name: i for i, name in enumerate(names)}
    is_class_label = isinstance(raw[splits[0]].features[data_args.label_column_name], ClassLabel)

    feature_extractor = AutoFeatureExtractor.from_pretrained(
        model_args.model_name_or_path, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
        token=model_args.token,
    )
    window = feature_extractor.num_samples / feature_extractor.sampling_rate
    max_seconds = data_args.max_length_seconds or window
    if max_seconds > window:
        raise ValueError(f"--max_length_seconds={max_seconds} is longer than the model's window of {window} s.")
    max_samples = int(round(max_seconds * feature_extractor.sampling_rate))

    # relative paths of a CSV / JSON file are read from its folder (as train_acula.py reads them)
    data_files = split_data_files(data_args.data_files)
    audio_root = data_args.data_dir
    if data_files:
        first = next(iter(data_files.values()))
        audio_root = os.path.dirname(os.path.join(data_args.data_dir or "", first))
    if isinstance(raw[splits[0]].features[data_args.audio_column_name], Audio):
        # `{"path", "bytes"}` cells that acula decodes: `datasets` would decode through torchcodec (FFmpeg)
        raw = raw.cast_column(data_args.audio_column_name, Audio(decode=False))

    def preprocess(batch):
        waveforms = [
            load_waveform(audio, feature_extractor.sampling_rate, feature_extractor.resample_quality,
                          audio_root)[:max_samples]
            for audio in batch[data_args.audio_column_name]
        ]
        inputs = feature_extractor(waveforms, sampling_rate=feature_extractor.sampling_rate, return_tensors="np")
        labels = batch[data_args.label_column_name]
        inputs["labels"] = list(labels) if is_class_label else [label2id[str(value)] for value in labels]
        return inputs

    with training_args.main_process_first(desc="feature extraction"):
        dataset = raw.map(
            preprocess,
            batched=True,
            batch_size=data_args.preprocessing_batch_size,
            writer_batch_size=64,  # spectrograms are large: flush often
            remove_columns=raw[splits[0]].column_names,
            features=feature_types(feature_extractor, names),
            num_proc=data_args.preprocessing_num_workers,
            desc="Extracting features",
        )
    dataset = dataset.with_format("torch")

    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        num_labels=len(names),
        label2id=label2id,
        id2label={i: name for name, i in label2id.items()},
        finetuning_task="audio-classification",
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
    )
    model = AutoModelForAudioClassification.from_pretrained(
        model_args.model_name_or_path, config=config, cache_dir=model_args.cache_dir,
        revision=model_args.model_revision, token=model_args.token,
    )
    if model_args.use_lora:
        if training_args.gradient_checkpointing:
            # the frozen input layers give the checkpointed blocks no input gradient, hence no adapter gradient
            model.enable_input_require_grads()
        lora_config = LoraConfig(
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=lora_target_modules(model.config, model_args),
            modules_to_save=["classifier"],  # the new head is trained in full and saved with the adapter
            bias="none",
        )
        model = get_peft_model(model, lora_config)
        model.print_trainable_parameters()

    eval_groups = None
    if data_args.group_column_name and training_args.do_eval:
        # Trainer evaluates in dataset order, so the groups line up with the predictions
        eval_groups = [str(group) for group in raw[data_args.eval_split_name][data_args.group_column_name]]
    if training_args.label_names is None:
        # Trainer reads the label names off the forward signature, which a PeftModel hides
        training_args.label_names = ["labels"]
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset[data_args.train_split_name] if training_args.do_train else None,
        eval_dataset=dataset[data_args.eval_split_name] if training_args.do_eval else None,
        compute_metrics=build_compute_metrics(len(names), data_args.bootstrap_samples, eval_groups),
        processing_class=feature_extractor,
    )

    metrics: dict[str, float] = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()
        if isinstance(model, PeftModel) and training_args.should_save:
            # the adapter does not record the label names; the classifier's config beside it does
            model.get_base_model().config.save_pretrained(training_args.output_dir)
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        metrics.update(train_result.metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    if model_args.merge_adapter and model_args.use_lora and training_args.should_save:
        merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
        merged.save_pretrained(Path(training_args.output_dir) / "merged")
        feature_extractor.save_pretrained(Path(training_args.output_dir) / "merged")

    card = {"finetuned_from": model_args.model_name_or_path, "tasks": "audio-classification"}
    if data_args.dataset_name not in (None, "audiofolder", "csv", "json"):
        card.update(dataset=data_args.dataset_name, dataset_tags=data_args.dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    elif training_args.should_save:
        trainer.create_model_card(**card)
    return metrics


if __name__ == "__main__":
    main()
