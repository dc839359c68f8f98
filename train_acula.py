#!/usr/bin/env python
"""Align an audio encoder of body sounds with a frozen text teacher (AcuLa post-training).

    # the built-in demo: pretrained Whisper-base (converted offline on first use) aligned with LoRA on the 48 real
    # recordings shipped with acula, the PyPI MiniLM teacher
    python train_acula.py

    # your data, any number of GPUs or machines (DDP; FSDP/DeepSpeed through `accelerate config`); LoRA, lr 1e-4
    accelerate launch train_acula.py --manifest my_data/metadata.csv --split_column split \
        --output_dir outputs/my-acula --preset opera-gt --init_from path/to/converted-opera-gt

    # a `datasets` dataset: a Hub id, an audiofolder / csv builder (--data_dir, --data_files) or a save_to_disk folder
    python train_acula.py --dataset_name audiofolder --data_dir my_data --patient_column_name patient \
        --output_dir outputs/my-acula

    # the reference recipe (one GPU): --preset alone does not change the optimisation
    python train_acula.py --manifest my_data/metadata.csv --split_column split --output_dir outputs/acula-ref \
        --preset opera-gt --init_from path/to/converted-opera-gt --teacher google/medgemma-4b-pt \
        --full_finetune --learning_rate 1e-5 --warmup_steps 400 --lowercase_reports

The training app (`acula_train`) does the work; this script wires it: arguments (`acula_train.arguments`, the
training ones a `transformers.TrainingArguments`) -> `AlignmentTrainer` (manifest or dataset -> leakage guard -> reports ->
cached teacher vectors -> cached spectrograms -> Accelerate training loop with crash-safe checkpoints) -> a folder
that `AutoModel.from_pretrained` loads, with a model card and its readout, optionally pushed to the Hub.
"""

from __future__ import annotations

import sys
from pathlib import Path

import modeling_acula  # noqa: F401  (registers the Auto classes)
from acula_train.arguments import AlignmentTrainingArguments, DataArguments, ModelArguments, parse_args
from acula_train.trainer import AlignmentTrainer


def main(argv: list[str] | None = None) -> Path:
    """Run one alignment job; returns its output folder.

    Args:
        argv (`list[str]`, *optional*): the command line without the program name (default: `sys.argv[1:]`).
    """
    data_args, model_args, training_args = parse_args(argv)
    return AlignmentTrainer(data_args, model_args, training_args).run()


__all__ = ["AlignmentTrainingArguments", "DataArguments", "ModelArguments", "main", "parse_args"]


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FloatingPointError, FileNotFoundError) as error:
        print(f"train_acula.py: error: {error}", file=sys.stderr)
        sys.exit(1)
