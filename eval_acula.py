#!/usr/bin/env python
"""Compare audio encoders with linear probes, retrieval and zero-shot classification.

    # every dev-pack task, two encoders side by side
    python eval_acula.py --models outputs/mam-only outputs/acula --output_dir outputs/eval

    # OPERA benchmark tasks over the public datasets
    python eval_acula.py --models outputs/acula --tasks T7 T10 T11 --data_root /data/opera

    # an aligned model beside its baselines: the frozen starting encoder, the same architecture with random weights
    # (seed 0) and per-mel-bin log-mel mean/std statistics (no network)
    python eval_acula.py --models outputs/acula outputs/whisper-base random:outputs/acula logmel-stats
    python eval_acula.py --models outputs/acula --add_baselines   # the same, start taken from training_args.json

    # only the tasks with headroom (the saturated ones are left out)
    python eval_acula.py --models logmel-stats outputs/acula --tasks headroom

    # CirCor DigiScope (held-out patients) and the cross-source heart tasks, beside every baseline row, a supervised
    # ceiling, few-label probes and the paired differences against the frozen start (aligned - frozen)
    python eval_acula.py --models outputs/acula ceiling:outputs/supervised --add_baselines --tasks circor \
        --circor /data/circor --few_shot 8,16,32 --few_shot_draws 20 --max_windows_per_recording 1

    # one task from a `datasets` dataset: probe on one split, test on another (or --patient_column_name: grouped K-fold)
    python eval_acula.py --models logmel-stats outputs/acula --dataset_name audiofolder --data_dir my_data \
        --label_column_name diagnosis --train_split_name train --eval_split_name test

    python eval_acula.py --list_tasks

Writes results.json, results.md (one row per task, one column per model in the order log-mel statistics, random
weights, frozen start, models, ceiling: mean ± std with the pooled bootstrap interval, best in bold, baselines and
ceiling marked, and a last row with each model's mean AUROC over the tasks with headroom; then the paired differences
against --reference (default: the frozen start) with patient-level paired bootstrap intervals, and the few-label
table), plots/*.png and model_index.yaml. Each recording is embedded once per model and reused by every task.
Tasks whose test recordings or patients were used for alignment are refused (see --no_refuse_leakage); recordings
are matched by the content hashes a model folder lists (aligned_recordings.jsonl), and a model that cannot be checked
is reported as "not checked" in every output. The work is done by `acula_eval`.
"""

from __future__ import annotations

import sys
from typing import Any

from transformers import HfArgumentParser

import modeling_acula  # noqa: F401  (registers the Auto classes)
from acula_eval.runner import (
    EvalArguments,
    describe_tasks,
    run_evaluation,
)


def parse_args(argv: list[str] | None = None) -> EvalArguments:
    parser = HfArgumentParser(EvalArguments, description=__doc__)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.list_tasks:
        print(describe_tasks())
        return None
    try:
        return run_evaluation(args)
    except ValueError as error:
        if argv is not None:  # called as a function (tests): let the caller see the exception
            raise
        print(f"eval_acula.py: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
