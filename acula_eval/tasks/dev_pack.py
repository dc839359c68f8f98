"""The development-pack tasks: labels of the auscultation-dev pack's `metadata.csv`, split by its `suggested_split`
column or by patient-grouped K-fold."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from acula_train.manifest import Manifest, load_manifest

from .registry import register_task
from .specs import LoadContext, TaskSpec
from .split_policy import SplitPolicy

DEV_PACK_SOURCE = (
    "auscultation-dev (../shared/data/auscultation-dev): PASCAL CHSC 2011, Yaseen 2018, HLS-CMDS, KAUH lung sounds, "
    "Coswara 2020-04-13; see its README.md for licences and citations."
)
SUGGESTED_SPLIT = SplitPolicy(kind="column", column="suggested_split", train_values=("train",), test_values=("val",))


@functools.lru_cache(maxsize=4)
def _load_dev_pack_manifest(metadata: str, mtime_ns: int) -> Manifest:
    return load_manifest(metadata)


def _dev_pack_manifest(context: LoadContext) -> Manifest:
    folder = context.dev_pack
    if folder is None or not (Path(folder) / "metadata.csv").is_file():
        raise ValueError(
            f"Dev-pack task: no metadata.csv in {folder}; pass --dev_pack (or set ACULA_DEV_PACK) pointing at the "
            "auscultation-dev folder."
        )
    metadata = (Path(folder) / "metadata.csv").resolve()
    # Loaded (and every file checked) once per process; loaders copy the rows they keep.
    return _load_dev_pack_manifest(str(metadata), metadata.stat().st_mtime_ns)


def dev_pack_loader(
    *, sources: Sequence[str] | None = None, modalities: Sequence[str] | None = None, label_column: str = "label"
) -> Callable[[LoadContext], list[dict[str, Any]]]:
    """A loader over the dev pack's rows of some sources / modalities, with `label` taken from `label_column`."""

    def load(context: LoadContext) -> list[dict[str, Any]]:
        manifest = _dev_pack_manifest(context)
        rows = []
        for path, row in zip(manifest.audio_paths, manifest.rows):
            if sources is not None and row.get("source_dataset") not in sources:
                continue
            if modalities is not None and row.get("modality") not in modalities:
                continue
            rows.append({**row, "path": path, "label": row.get(label_column), "split": row.get("suggested_split")})
        return rows

    return load


def kauh_obstructive_label(diagnosis: str | None) -> str | None:
    """OPERA T10: healthy vs obstructive (asthma or COPD, also with a second diagnosis, as OPERA's file-name rule
    keeps them); other diseases (heart failure, pneumonia, fibrosis, effusion, BRON) are left out."""
    if diagnosis is None:
        return None
    parts = set(re.split(r"[+,;/ ]+", diagnosis.lower()))
    if diagnosis.lower() in ("normal", "n"):
        return "healthy"
    if parts & {"asthma", "copd"}:
        return "obstructive"
    return None


def _kauh_dev_loader(context: LoadContext) -> list[dict[str, Any]]:
    rows = dev_pack_loader(sources=["KAUH_lung_sounds"], label_column="diagnosis")(context)
    for row in rows:
        row["label"] = kauh_obstructive_label(row.get("diagnosis"))
    return rows


register_task(TaskSpec(
    name="pascal_murmur",
    description="PASCAL CHSC 2011 heart sounds: murmur vs normal",
    loader=dev_pack_loader(sources=["PASCAL_CHSC2011"]),
    label_map={"normal": "normal", "murmur": "murmur"},
    classes=("normal", "murmur"),
    label_descriptions={"normal": "normal heart sounds", "murmur": "a heart murmur"},
    split=SUGGESTED_SPLIT,
    source=DEV_PACK_SOURCE,
    notes="extrastole, artifact and extrahls rows are left out; noisy sublabels are kept.",
))
register_task(TaskSpec(
    name="yaseen_valve",
    description="Yaseen 2018 heart sounds: normal / mitral regurgitation / mitral stenosis / mitral valve prolapse",
    loader=dev_pack_loader(sources=["Yaseen2018"]),
    classes=("normal", "mitral_regurgitation", "mitral_stenosis", "mitral_valve_prolapse"),
    label_descriptions={
        "normal": "normal heart sounds",
        "mitral_regurgitation": "mitral regurgitation",
        "mitral_stenosis": "mitral stenosis",
        "mitral_valve_prolapse": "mitral valve prolapse",
    },
    split=SUGGESTED_SPLIT,
    source=DEV_PACK_SOURCE,
    notes="four classes: the dev pack holds no aortic stenosis clips of the five-class original; Yaseen has no "
          "patient ids, so every recording is its own group. Saturated: logmel-stats reaches 0.999 AUROC (a random "
          "encoder 0.99), so it is left out of the mean over tasks with headroom.",
    headroom=False,
))
register_task(TaskSpec(
    name="kauh_obstructive",
    description="KAUH lung sounds: healthy vs obstructive (asthma + COPD), as OPERA T10",
    loader=_kauh_dev_loader,
    classes=("healthy", "obstructive"),
    label_descriptions={"healthy": "normal lung sounds of a healthy patient",
                        "obstructive": "an obstructive airway disease such as asthma or COPD"},
    split=SUGGESTED_SPLIT,
    source=DEV_PACK_SOURCE,
    notes="obstructive = diagnosis includes asthma or COPD (also combined with heart failure or lung fibrosis, as "
          "OPERA's rule keeps them); heart failure, pneumonia, fibrosis, effusion and BRON alone are left out.",
))
register_task(TaskSpec(
    name="kauh_abnormal",
    description="KAUH lung sounds: normal vs abnormal",
    loader=dev_pack_loader(sources=["KAUH_lung_sounds"]),
    classes=("normal", "abnormal"),
    label_descriptions={"normal": "normal lung sounds", "abnormal": "abnormal lung sounds"},
    split=SUGGESTED_SPLIT,
    source=DEV_PACK_SOURCE,
))
register_task(TaskSpec(
    name="modality",
    description="Body-sound modality across the dev pack: heart / lung / cough / breath / speech",
    loader=dev_pack_loader(label_column="modality"),
    classes=("heart", "lung", "cough", "breath", "speech"),
    label_descriptions={"heart": "heart sounds", "lung": "lung sounds", "cough": "a cough",
                        "breath": "breathing sounds", "speech": "speech"},
    split=SUGGESTED_SPLIT,
    source=DEV_PACK_SOURCE,
    notes="recordings without a patient id (Yaseen, HLS-CMDS) are their own groups. Saturated: logmel-stats reaches "
          "0.990 AUROC, so it is left out of the mean over tasks with headroom.",
    headroom=False,
))
register_task(TaskSpec(
    name="coswara_sex",
    description="Coswara cough (heavy + shallow): female vs male, as OPERA T9",
    loader=dev_pack_loader(sources=["Coswara_20200413"], modalities=["cough"], label_column="sex"),
    classes=("male", "female"),
    label_descriptions={"male": "a cough of a male participant", "female": "a cough of a female participant"},
    split=SplitPolicy(kind="group_kfold", n_splits=5),
    source=DEV_PACK_SOURCE,
    notes="grouped 5-fold by participant: the suggested val side holds only 3 female participants. Coswara COVID-19 "
          "status is not a task: the pack has no COVID-positive participant (healthy 324, exposed 25, "
          "non-COVID respiratory illness 20 recordings).",
))
