"""The supervised ceiling: the alignment recipe's trainable parameters, fine-tuned with cross-entropy on a label.

`train_acula.py --supervised_label_column COLUMN` trains the same parameters as an alignment run (LoRA on the top
layers of the encoder) plus a linear classifier on the pooled embedding, with cross-entropy against a manifest
column instead of the alignment loss; no teacher is loaded. Everything else is the alignment run's: rows, leakage
guard, spectrogram and prefix caches, the preservation term (switchable with `--preservation_loss`), checkpoints
and resume, DDP, and the output folder, whose top level is the merged encoder that `AutoModel.from_pretrained`
loads exactly like an aligned folder's. The classifier is kept in `classifier/` as an
`AculaForAudioClassification` (encoder + head, with the class names as `id2label`).

A label must be one of the classes: `--supervised_label_values a,b` names them (in class-index order), else they
are every non-empty value of the column, sorted. A row with an empty label or another value is refused, naming the
row and the value, unless `--supervised_drop_other_labels` is given; the dropped rows are then counted by value in
the log, `data_summary.json` and the card, and listed in `skipped_rows.jsonl`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modeling_acula import AculaForAudioClassification

# The heads of the alignment model that a supervised run does not use (they stay frozen: no gradient, and no
# parameter that DDP would wait for).
ALIGNMENT_HEADS = ("audio_projection", "text_projection", "alignment_head", "mam_decoder")
CLASSIFIER_FOLDER = "classifier"


@dataclass
class SupervisedLabels:
    """
    The classes of a supervised run and the class of each kept row.

    Args:
        column (`str`): the manifest column.
        classes (`list[str]`): the class names; a row's label is the index of its value.
        dropped (`dict[str, int]`): rows dropped by value (`""` for an empty label), with
            `--supervised_drop_other_labels`.
        dropped_rows (`list[int]`): the manifest indices (of the rows given to [`select_labelled_rows`]) dropped.
    """

    column: str
    classes: list[str]
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_rows: list[int] = field(default_factory=list)

    def label_ids(self, manifest) -> torch.Tensor:
        """The class index of every row of `manifest` (whose labels were checked by [`select_labelled_rows`])."""
        index = {name: i for i, name in enumerate(self.classes)}
        return torch.tensor([index[_value(row, self.column)] for row in manifest.rows], dtype=torch.long)

    def describe(self) -> dict[str, Any]:
        return {"kind": "supervised", "label_column": self.column, "classes": list(self.classes),
                "dropped_rows": dict(self.dropped)}


def _value(row: dict, column: str) -> str:
    value = row.get(column)
    return "" if value is None else str(value).strip()


def select_labelled_rows(manifest, column: str, values: str | None = None, drop_others: bool = False):
    """Check the label column of `manifest` and keep the rows whose label is a class.

    Args:
        manifest ([`~acula_train.manifest.Manifest`]): the rows (after the leakage guard).
        column (`str`): `--supervised_label_column`.
        values (`str`, *optional*): `--supervised_label_values`, comma-separated, in class-index order.
        drop_others (`bool`): `--supervised_drop_other_labels`: drop rows with an empty or other label instead of
            refusing them.

    Returns:
        `(manifest, SupervisedLabels)`: the rows kept, and the classes with what was dropped.

    Raises:
        `ValueError`: a column the manifest lacks (naming the columns it has), fewer than two classes, or a row with
            an empty or other label without `drop_others` (naming the first rows and the values).
    """
    columns = list(dict.fromkeys(name for row in manifest.rows for name in row))  # JSONL rows may differ
    if column not in columns:
        raise ValueError(f"--supervised_label_column {column!r}: {manifest.source} has no such column; its columns "
                         f"are: {', '.join(columns)}.")
    labels = [_value(row, column) for row in manifest.rows]
    if values:
        classes = [value.strip() for value in values.split(",") if value.strip()]
        if len(set(classes)) != len(classes):
            raise ValueError(f"--supervised_label_values {values!r} names a class twice.")
    else:
        classes = sorted({label for label in labels if label})
    if len(classes) < 2:
        source = "--supervised_label_values" if values else f"the column of {manifest.source}"
        raise ValueError(f"--supervised_label_column {column!r}: cross-entropy needs at least two classes, got "
                         f"{classes} (from {source}).")
    wanted = set(classes)
    others = [i for i, label in enumerate(labels) if label not in wanted]
    dropped = Counter(labels[i] for i in others)
    if others and not drop_others:
        examples = "; ".join(f"{manifest.describe_row(i)}: {labels[i]!r}" for i in others[:5])
        counts = ", ".join(f"{value!r}: {n}" for value, n in sorted(dropped.items()))
        raise ValueError(
            f"--supervised_label_column {column!r}: {len(others)} rows have an empty label or one that is not among "
            f"the classes {classes} ({counts}); first: {examples}. Pass --supervised_drop_other_labels to drop them "
            "(they are counted and listed), or --supervised_label_values to name the classes.")
    other_set = set(others)
    kept = manifest.select([i for i in range(len(manifest)) if i not in other_set]) if others else manifest
    return kept, SupervisedLabels(column, classes, dict(sorted(dropped.items())), others)


class SupervisedCeiling(nn.Module):
    """
    The training module of a supervised run: the (LoRA-wrapped) alignment model as the encoder, with its alignment
    heads frozen, and a linear classifier on the pooled embedding. The forward takes the alignment model's inputs
    (spectrograms, or the prefix cache's states) and `labels`, and returns the cross-entropy plus the alignment
    model's own per-batch terms (the preservation term, when on).

    Args:
        model (`nn.Module`): the [`~modeling_acula.AculaForPreTraining`] (or its peft wrapper).
        num_classes (`int`): the classes.
    """

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        self.model = model
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        for name in ALIGNMENT_HEADS:
            head = getattr(inner, name, None)
            if head is not None:
                head.requires_grad_(False)
        self.classifier = nn.Linear(inner.config.audio_embedding_size, num_classes)
        nn.init.trunc_normal_(self.classifier.weight, std=inner.config.initializer_range)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, labels: torch.Tensor, **inputs) -> dict[str, torch.Tensor | None]:
        outputs = self.model(**inputs, teacher_embeds=None)
        logits = self.classifier(outputs.pooler_output)
        supervised = F.cross_entropy(logits, labels.to(logits.device))
        extra = outputs.loss  # the weighted preservation (or masked-audio) term, None without one
        return {"loss": supervised if extra is None else supervised + extra, "supervised_loss": supervised,
                "preservation_loss": outputs.preservation_loss, "mam_loss": outputs.mam_loss, "logits": logits}


def save_classifier(folder: Path, merged_model: nn.Module, classifier: nn.Linear, labels: SupervisedLabels) -> Path:
    """Write `<folder>/classifier/`: an [`AculaForAudioClassification`] of the merged encoder and the trained
    classifier, with the class names as `id2label` (`AutoModelForAudioClassification` and the audio-classification
    pipeline load it).

    Args:
        folder (`Path`): the (staged) output folder.
        merged_model (`nn.Module`): the alignment model with LoRA merged (its `.acula` is the encoder).
        classifier (`nn.Linear`): the trained head.
        labels ([`SupervisedLabels`]): the classes.
    """
    config = merged_model.acula.config.__class__.from_dict(merged_model.acula.config.to_dict())
    config.num_labels = len(labels.classes)
    config.id2label = dict(enumerate(labels.classes))
    config.label2id = {name: i for i, name in enumerate(labels.classes)}
    config.architectures = ["AculaForAudioClassification"]
    model = AculaForAudioClassification(config)
    model.acula.load_state_dict(merged_model.acula.state_dict())
    model.classifier.load_state_dict({name: value.detach().cpu() for name, value in classifier.state_dict().items()})
    target = Path(folder) / CLASSIFIER_FOLDER
    model.save_pretrained(target)
    return target


__all__ = ["SupervisedCeiling", "SupervisedLabels", "save_classifier", "select_labelled_rows"]
