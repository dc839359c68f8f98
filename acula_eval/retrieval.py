"""Audio <-> report retrieval and zero-shot classification through an aligned model's projection heads.

An acula output folder keeps the heads in `alignment/` (an [`AculaForPreTraining`]) and the teacher's identity in
`teacher.json`; the teacher is reloaded with exactly that identity (layer, pooling, max length), so the text side
is the one the heads were trained against, and report texts are written from the fields the run's reports used
(`training_args.json`: `data.report_fields`).

Audio and text projections are compared through the folder's readout (`alignment/readout.json`, see
[`~acula_train.readout.AlignmentReadout`]): plain cosine for InfoNCE-trained heads, a map fitted on
the training pairs for CKA-trained heads (CKA leaves rotations and shifts of either projection free, so their plain
cosine is arbitrary). A CKA-trained folder without a readout gets no retrieval or zero-shot numbers: they are
reported as not valid.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from acula_train.readout import AlignmentReadout, recall_at_k
from acula_train.reports import write_report
from acula_train.teacher import load_teacher, resolve_teacher_path
from modeling_acula.losses import CKA_LOSSES

ZERO_SHOT_TEMPLATE = "a recording with {}"
# What retrieval and zero-shot cells say for heads whose projections cannot be compared (CKA, no readout).
NOT_VALID_NO_READOUT = "not valid (no readout)"


def has_alignment_heads(model_dir: str | os.PathLike) -> bool:
    """Whether a folder carries what retrieval needs: `alignment/` and `teacher.json`."""
    folder = Path(model_dir)
    return (folder / "alignment" / "config.json").is_file() and (folder / "teacher.json").is_file()


def resolve_readout(model_dir: str | os.PathLike, alignment_loss: str) -> tuple[AlignmentReadout | None, str | None]:
    """The readout the evaluator uses for a folder's heads, or `(None, why)` when none is valid.

    Args:
        model_dir (`str` or `os.PathLike`): an acula output folder.
        alignment_loss (`str`): the loss the heads were trained with (`alignment/config.json`).

    Returns:
        `(readout, None)`: the stored readout, or for InfoNCE-trained heads without one, cosine. `(None, reason)` for
        CKA-trained heads without a fitted readout.
    """
    folder = Path(model_dir)
    readout = AlignmentReadout.load(folder / "alignment")
    if readout is None and alignment_loss == "infonce":
        return AlignmentReadout.cosine(info={"source": "implicit: infonce-trained heads compare by cosine"}), None
    if alignment_loss in CKA_LOSSES and (readout is None or readout.is_identity):
        found = "no alignment/readout.json" if readout is None else "a cosine readout in alignment/readout.json"
        return None, (f"{NOT_VALID_NO_READOUT}: {folder} has {alignment_loss}-trained heads and {found}; CKA leaves "
                      "rotations and shifts of either projection free, so their cosine similarity is arbitrary. Fit "
                      f"a readout with `python -m acula_train.readout fit --model_dir {folder}`.")
    return readout, None


def trained_report_fields(model_dir: str | os.PathLike) -> list[str] | None:
    """The `--report_fields` a run's templated reports used (`training_args.json`), `None` for every field."""
    args_file = Path(model_dir) / "training_args.json"
    if not args_file.is_file():
        return None
    return json.loads(args_file.read_text(encoding="utf-8")).get("data", {}).get("report_fields") or None


class AlignedSpace:
    """
    The shared audio-text space of an aligned model, read through the folder's readout ([`resolve_readout`]).

    Args:
        model_dir (`str` or `os.PathLike`): an acula output folder (with `alignment/` and `teacher.json`).
        device (`str` or `torch.device`, *optional*): where heads and teacher run (default CPU).

    A space without a valid readout (`valid` is `False`, `invalid_reason` says why) refuses to project.
    """

    def __init__(self, model_dir: str | os.PathLike, device: str | torch.device | None = None):
        from modeling_acula.modeling_acula import AculaForPreTraining

        folder = Path(model_dir)
        if not has_alignment_heads(folder):
            raise ValueError(f"{folder} has no alignment/ folder or teacher.json: retrieval needs the projection heads "
                             "and the teacher identity that train_acula.py writes.")
        self.device = torch.device(device or "cpu")
        model = AculaForPreTraining.from_pretrained(folder / "alignment").eval()
        self.audio_projection = model.audio_projection.to(self.device)
        self.text_projection = model.text_projection.to(self.device)
        self.alignment_loss = model.config.alignment_loss
        self.readout, self.invalid_reason = resolve_readout(folder, self.alignment_loss)
        self.teacher = load_teacher(folder, self.device)
        self.teacher.check_compatible(model.config.teacher_hidden_size)
        self.report_fields = trained_report_fields(folder)

    def write_report(self, row: Mapping[str, Any]) -> str:
        """A row's templated report, from the fields the run's own reports were written from."""
        return write_report(row, fields=self.report_fields)

    @property
    def valid(self) -> bool:
        """Whether the projections can be compared (a readout valid for the heads' loss exists)."""
        return self.readout is not None

    @property
    def readout_record(self) -> dict[str, Any]:
        """What results record about the readout: its kind and source, or why there is none."""
        if self.readout is None:
            return {"kind": None, "alignment_loss": self.alignment_loss, "valid": False, "reason": self.invalid_reason}
        return {**self.readout.describe(), "alignment_loss": self.alignment_loss, "valid": True}

    def _require_valid(self) -> None:
        if self.readout is None:
            raise ValueError(self.invalid_reason)

    @torch.inference_mode()
    def project_audio(self, embeddings: np.ndarray) -> np.ndarray:
        """Pooled encoder embeddings -> audio projections in the readout's space, L2-normalised."""
        self._require_valid()
        tensor = torch.as_tensor(embeddings, dtype=torch.float32, device=self.device)
        return F.normalize(self.readout.audio(self.audio_projection(tensor)), dim=-1).cpu().numpy()

    @torch.inference_mode()
    def project_text(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> teacher vectors -> text projections in the readout's space, L2-normalised."""
        self._require_valid()
        vectors = self.teacher.encode(list(texts)).to(self.device)
        return F.normalize(self.readout.text(self.text_projection(vectors)), dim=-1).cpu().numpy()


def retrieval_for_rows(space: AlignedSpace, embeddings: np.ndarray, rows: Sequence[Mapping[str, Any]],
                       ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """Recall@k between recordings (pooled embeddings) and their templated reports (`AlignedSpace.write_report`:
    the fields the run's own reports used)."""
    reports = [space.write_report(row) for row in rows]
    keep = [i for i, report in enumerate(reports) if report.strip()]
    if len(keep) < 2:
        raise ValueError("Retrieval needs at least two recordings with a non-empty report.")
    reports = [reports[i] for i in keep]
    return recall_at_k(space.project_audio(embeddings[keep]), space.project_text(reports), reports, ks)


def zero_shot_scores(space: AlignedSpace, embeddings: np.ndarray, descriptions: Sequence[str],
                     template: str = ZERO_SHOT_TEMPLATE, temperature: float = 0.05) -> np.ndarray:
    """
    Class probabilities from the cosine similarity (through the space's readout) between each recording and one
    prompt per class.

    Args:
        space (`AlignedSpace`): the aligned model.
        embeddings (`np.ndarray`): `(n, hidden)` pooled encoder embeddings.
        descriptions (`Sequence[str]`): one description per class, in class order.
        template (`str`): prompt template (`"a recording with {}"`).
        temperature (`float`): softmax temperature over the similarities (AUROC of a binary task does not depend
            on it).

    Returns:
        `(n, num_classes)` probabilities.
    """
    audio = space.project_audio(embeddings)
    text = space.project_text([template.format(d) for d in descriptions])
    logits = torch.from_numpy(audio @ text.T) / temperature
    return torch.softmax(logits, dim=-1).numpy()


__all__ = [
    "NOT_VALID_NO_READOUT",
    "ZERO_SHOT_TEMPLATE",
    "AlignedSpace",
    "has_alignment_heads",
    "load_teacher",
    "recall_at_k",
    "resolve_readout",
    "resolve_teacher_path",
    "retrieval_for_rows",
    "trained_report_fields",
    "zero_shot_scores",
]
