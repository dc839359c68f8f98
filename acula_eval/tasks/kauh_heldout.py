"""KAUH lung-sound diagnoses tested on held-out patients only (tasks with headroom): the dev pack's val-side
patients in patient-grouped folds, each fold's probe trained on every other row, so that a model aligned on the
train side can be evaluated without leakage."""

from __future__ import annotations

from .dev_pack import DEV_PACK_SOURCE, dev_pack_loader
from .registry import register_task
from .specs import TaskSpec
from .split_policy import SplitPolicy

_KAUH_HELD_OUT_NOTES = (
    "Diagnoses as recorded (pure diagnoses only: combined ones such as heart_failure+copd are left out). Tested on "
    "the suggested_split == val patients only, in 2 patient-grouped stratified folds (every fold holds every class; "
    "5 folds are impossible: the val side has 7 normal, 4 asthma and 2 heart-failure patients, and with 2 folds "
    "each fold's AUROC compares the most patients of one class with the other); each fold's probe trains on every "
    "other row of the task "
    "(all train-side patients + the other val folds), so models aligned on the train side are not refused. Every "
    "val recording is tested exactly once. Three stethoscope filter versions of each examination share a patient. "
    "`--split_policy kfold` gives a patient-grouped 5-fold over all patients instead (tests train-side patients: "
    "refused for models aligned on the dev pack). COPD vs normal is not a task: no COPD patient is on the val side "
    "(9 train-side COPD patients), so no leakage-free test exists in the dev pack."
)
# Every val patient tested once over 2 folds (the rarest class has 2 val patients), the probe trained on the rest.
KAUH_HELD_OUT_SPLIT = SplitPolicy(kind="heldout_group_kfold", column="suggested_split", train_values=("train",),
                                  test_values=("val",), n_splits=2)
_kauh_diagnosis_loader = dev_pack_loader(sources=["KAUH_lung_sounds"], label_column="diagnosis")
register_task(TaskSpec(
    name="kauh_asthma",
    description="KAUH lung sounds: asthma vs normal (held-out patients, grouped K-fold)",
    loader=_kauh_diagnosis_loader,
    label_map={"normal": "normal", "asthma": "asthma"},
    classes=("normal", "asthma"),
    label_descriptions={"normal": "normal lung sounds of a healthy patient", "asthma": "asthma"},
    split=KAUH_HELD_OUT_SPLIT,
    source=DEV_PACK_SOURCE,
    notes=_KAUH_HELD_OUT_NOTES + " Patients: normal 28 train + 7 val, asthma 28 train + 4 val (2 asthma "
          "patients per fold; at most 4 folds would be possible, with one asthma patient each).",
))
register_task(TaskSpec(
    name="kauh_heart_failure",
    description="KAUH lung sounds: heart failure vs normal (held-out patients, grouped K-fold)",
    loader=_kauh_diagnosis_loader,
    label_map={"normal": "normal", "heart_failure": "heart_failure"},
    classes=("normal", "heart_failure"),
    label_descriptions={"normal": "normal lung sounds of a healthy patient",
                        "heart_failure": "lung sounds of a patient with heart failure"},
    split=KAUH_HELD_OUT_SPLIT,
    source=DEV_PACK_SOURCE,
    notes=_KAUH_HELD_OUT_NOTES + " Patients: normal 28 train + 7 val, heart failure 16 train + 2 val (one "
          "heart-failure patient per fold: 2 folds is the most possible).",
))
register_task(TaskSpec(
    name="kauh_diagnosis",
    description="KAUH lung sounds: normal / asthma / heart failure, 3 classes (held-out patients, grouped K-fold)",
    loader=_kauh_diagnosis_loader,
    label_map={"normal": "normal", "asthma": "asthma", "heart_failure": "heart_failure"},
    classes=("normal", "asthma", "heart_failure"),
    label_descriptions={"normal": "normal lung sounds of a healthy patient", "asthma": "asthma",
                        "heart_failure": "lung sounds of a patient with heart failure"},
    split=KAUH_HELD_OUT_SPLIT,
    source=DEV_PACK_SOURCE,
    notes=_KAUH_HELD_OUT_NOTES + " Classes kept: those with patients on both sides (normal 28 + 7, asthma 28 + 4, "
          "heart failure 16 + 2); COPD (9 + 0), lung fibrosis (4 + 0), pneumonia (4 + 1), pleural effusion (2 + 0) "
          "and BRON (1 + 2) are left out. Macro one-vs-rest AUROC.",
))
