"""CirCor DigiScope tasks (`--circor`): murmur detection per recording and per patient, and the murmur's systolic
descriptors, always tested on patients that alignment never sees.

The data is read by the training app's reader of the official layout (`acula_train.layouts`, `"circor"`): one row
per recording with the patient's metadata, `murmur_at_site` (`here` / `elsewhere` / `absent` / `unknown`), a
`group_id` per child (the two ids of a child recorded in both campaigns are one group) and a deterministic,
patient-grouped `split` (60 % train, 20 % val, 20 % test, stratified by the patient's murmur label). Alignment runs
train on the `train` patients only, so `val` and `test` patients are never seen by an aligned model (the leakage
check confirms it for every model folder that lists its aligned recordings).

`--circor` (or `$ACULA_CIRCOR`) names the CirCor folder holding `training_data.csv`, or a manifest already written
from it (`python -m acula_train.layouts circor ROOT`, a CSV / JSONL with the reader's columns).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from acula_train.manifest import Manifest, load_manifest

from .dev_pack import DEV_PACK_SOURCE
from .registry import register_task
from .specs import LoadContext, TaskSpec, clean_value
from .split_policy import SplitPolicy

CIRCOR_CITATION = (
    'J. Oliveira et al., "The CirCor DigiScope Dataset: From Murmur Detection to Murmur Classification", IEEE JBHI '
    "26(6), 2022"
)
CIRCOR_SOURCE = (
    "CirCor DigiScope Phonocardiogram Dataset (the George B. Moody PhysioNet Challenge 2022 training set, PhysioNet "
    f"circor-heart-sound 1.0.3: 942 patients, 3,163 recordings): {CIRCOR_CITATION}; licence ODC-By 1.0. Read from "
    "its official layout by acula_train.layouts ('circor'); pass --circor or set ACULA_CIRCOR."
)
CIRCOR_SOURCE_DATASET = "CirCor2022"

# The evaluation reads only the patients that alignment never sees (the reader's val and test sides): an aligned
# model's training recordings never enter a probe, and a Whisper model embeds 1,266 CirCor recordings, not 3,163.
CIRCOR_EVAL_SPLITS = ("val", "test")
# Probes fitted on the val patients, tested on the test patients (the murmur tasks).
CIRCOR_TEST_SPLIT = SplitPolicy(kind="column", column="split", train_values=("val",), test_values=("test",))
# The descriptor tasks: every held-out patient (val + test) tested once, in 5 patient-grouped stratified folds, each
# fold's probe fitted on the other folds.
CIRCOR_HELDOUT_SPLIT = SplitPolicy(kind="group_kfold", n_splits=5)

_MURMUR_DESCRIPTIONS = {"absent": "normal heart sounds without a murmur", "present": "a heart murmur"}


@functools.lru_cache(maxsize=4)
def _read_circor(location: str, stamp: int) -> Manifest:
    path = Path(location)
    if path.is_file():
        return load_manifest(path)
    from acula_train.layouts import load_layout

    return load_layout("circor", path)


def circor_manifest(context: LoadContext) -> Manifest:
    """
    The CirCor recordings as a [`~acula_train.manifest.Manifest`] (read once per process and folder).

    Args:
        context ([`LoadContext`]): `context.circor` is the CirCor folder (official layout, with `training_data.csv`)
            or a manifest file written from it.

    Raises:
        `ValueError`: no CirCor location was given, or it holds no `training_data.csv`.
    """
    location = context.circor
    if location is None:
        raise ValueError(
            "CirCor task: pass --circor PATH (the CirCor DigiScope folder holding training_data.csv and "
            "training_data/, e.g. PhysioNet's circor-heart-sound 1.0.3, or a manifest written from it by `python -m "
            "acula_train.layouts circor ROOT`), or set ACULA_CIRCOR."
        )
    location = Path(location).expanduser().resolve()
    stamp_file = location if location.is_file() else location / "training_data.csv"
    if not stamp_file.is_file():
        raise ValueError(f"CirCor task: {location} is neither a manifest file nor a CirCor folder holding "
                         "training_data.csv; pass --circor (or ACULA_CIRCOR) pointing at the CirCor DigiScope folder.")
    manifest = _read_circor(str(location), stamp_file.stat().st_mtime_ns)
    missing = sorted({"murmur_at_site", "murmur", "split", "group_id", "patient_id"} - set(manifest.columns))
    if missing:
        raise ValueError(f"CirCor task: {location} lacks the column(s) {missing} of acula's CirCor reader.")
    return manifest


def circor_rows(context: LoadContext) -> list[dict[str, Any]]:
    """The CirCor recordings of the patients alignment never sees (`CIRCOR_EVAL_SPLITS`) as loader rows: their
    metadata, `path`, and their `split` (val / test)."""
    manifest = circor_manifest(context)
    return [{**row, "path": path, "split": row.get("split")} for path, row in zip(manifest.audio_paths, manifest.rows)
            if (clean_value(row.get("split")) or "").lower() in CIRCOR_EVAL_SPLITS]


def circor_loader(label: Callable[[Mapping[str, Any]], str | None]) -> Callable[[LoadContext], list[dict[str, Any]]]:
    """A loader over the CirCor recordings whose task label (`target`) is `label(row)` (`None`: left out)."""

    def load(context: LoadContext) -> list[dict[str, Any]]:
        rows = circor_rows(context)
        for row in rows:
            row["target"] = label(row)
        return rows

    return load


def murmur_at_site_label(row: Mapping[str, Any]) -> str | None:
    """`present` for a recording at a site where the patient's murmur is heard, `absent` for a patient without a
    murmur; `None` (left out) for `elsewhere` and `unknown`."""
    return {"here": "present", "absent": "absent"}.get(clean_value(row.get("murmur_at_site")) or "")


def patient_murmur_label(row: Mapping[str, Any]) -> str | None:
    """The patient's murmur label (`Present` / `Absent`); `Unknown` is left out."""
    return {"present": "present", "absent": "absent"}.get((clean_value(row.get("murmur")) or "").lower())


def descriptor_label(column: str, mapping: Mapping[str, str]) -> Callable[[Mapping[str, Any]], str | None]:
    """A systolic descriptor's class (`mapping` of the recorded value) for a recording at a site where the murmur is
    heard; every other recording, and unlisted values, are left out."""

    def label(row: Mapping[str, Any]) -> str | None:
        if clean_value(row.get("murmur_at_site")) != "here":
            return None
        return mapping.get(clean_value(row.get(column)) or "")

    return label


_DESCRIPTOR_NOTES = (
    "Among murmur-present recordings at the sites where the murmur is heard (murmur_at_site == here); other rows "
    "are left out. Split: the test patients alone hold too few patients of the smaller class for a stable estimate "
    "(10 early-systolic, 12 blowing, 15 grade II-III), so every held-out patient (val + test) is tested once, in 5 "
    "patient-grouped stratified folds, each fold's probe fitted on the other folds. Counts on the full set "
    "(recordings / patient groups over val + test): "
)

register_task(TaskSpec(
    name="circor_murmur",
    description="CirCor: murmur heard at this recording's site vs no murmur (per recording, held-out patients)",
    loader=circor_loader(murmur_at_site_label),
    classes=("absent", "present"),
    label_descriptions=_MURMUR_DESCRIPTIONS,
    split=CIRCOR_TEST_SPLIT,
    family="circor",
    source=CIRCOR_SOURCE,
    notes="Per recording: present = a recording at a site where the patient's murmur is heard (murmur_at_site == "
          "here), absent = any recording of a patient without a murmur. Left out: recordings of murmur patients at "
          "sites where it is not heard (elsewhere, 117 recordings) and of patients whose murmur is Unknown (156). "
          "Probe fitted on the val patients, tested on the test patients (column split: the same split for every "
          "seed); the bootstrap resamples patients (group_id). Full set: val 103 present (33 patient groups) / 478 "
          "absent (132), test 97 present (32) / 479 absent (133) recordings.",
))

register_task(TaskSpec(
    name="circor_murmur_patient",
    description="CirCor: murmur present vs absent per patient (mean embedding of the patient's recordings)",
    loader=circor_loader(patient_murmur_label),
    classes=("absent", "present"),
    label_descriptions={"absent": "normal heart sounds without a murmur",
                        "present": "a heart murmur heard at one or more auscultation sites"},
    split=CIRCOR_TEST_SPLIT,
    family="circor",
    source=CIRCOR_SOURCE,
    pool_by="patient_id",
    notes="Per patient, the challenge's unit: the patient's murmur label (Present vs Absent; Unknown left out), one "
          "embedding per patient = the mean of the embeddings of all its recordings (every site, also those where "
          "the murmur is not heard: the challenge decides per patient from all of them; a plain mean, so a patient "
          "with 5 recordings counts once, like one with 2). The probe, the test AUROC and the bootstrap work on "
          "patients. The two ids of a child recorded in both campaigns stay two units in one group (one side of "
          "every split, resampled together). Probe fitted on the val patients, tested on the test patients. Full "
          "set: val 37 present / 140 absent patients, test 37 present / 141 absent.",
))

_DESCRIPTOR_TITLES = {
    "circor_murmur_timing": "timing, early-systolic vs holosystolic",
    "circor_murmur_grade": "grade, I/VI vs II/VI + III/VI",
    "circor_murmur_pitch": "pitch, low vs medium + high",
    "circor_murmur_quality": "quality, blowing vs harsh",
}
for _name, _column, _mapping, _classes, _descriptions, _counts in (
    ("circor_murmur_timing", "systolic_murmur_timing",
     {"Early-systolic": "early_systolic", "Holosystolic": "holosystolic"},
     ("early_systolic", "holosystolic"),
     {"early_systolic": "an early systolic heart murmur", "holosystolic": "a holosystolic heart murmur"},
     "early-systolic 61 / 25, holosystolic 110 / 35; mid- and late-systolic left out."),
    ("circor_murmur_grade", "systolic_murmur_grading",
     {"I/VI": "grade_1", "II/VI": "grade_2_3", "III/VI": "grade_2_3"},
     ("grade_1", "grade_2_3"),
     {"grade_1": "a soft grade I/VI systolic heart murmur",
      "grade_2_3": "a grade II/VI or III/VI systolic heart murmur"},
     "I/VI 84 / 43, II/VI + III/VI 116 / 28."),
    ("circor_murmur_pitch", "systolic_murmur_pitch",
     {"Low": "low", "Medium": "medium_high", "High": "medium_high"},
     ("low", "medium_high"),
     {"low": "a low-pitched systolic heart murmur", "medium_high": "a medium- or high-pitched systolic heart murmur"},
     "low 84 / 36, medium + high 116 / 31."),
    ("circor_murmur_quality", "systolic_murmur_quality",
     {"Blowing": "blowing", "Harsh": "harsh"},
     ("blowing", "harsh"),
     {"blowing": "a blowing systolic heart murmur", "harsh": "a harsh systolic heart murmur"},
     "blowing 82 / 32, harsh 110 / 34; musical left out."),
):
    register_task(TaskSpec(
        name=_name,
        description=f"CirCor: systolic murmur {_DESCRIPTOR_TITLES[_name]} (held-out patients, grouped K-fold)",
        loader=circor_loader(descriptor_label(_column, _mapping)),
        classes=_classes,
        label_descriptions=_descriptions,
        split=CIRCOR_HELDOUT_SPLIT,
        family="circor",
        source=CIRCOR_SOURCE,
        notes=_DESCRIPTOR_NOTES + _counts,
    ))


# ---------------------------------------------------------------------------------------------- across sources

# A row's side in the cross-source tasks: `heldout` rows are the only ones ever tested (CirCor's test patients, the
# dev pack's suggested_split == val rows); `fit` rows may only train a probe.
HELDOUT, FIT = "heldout", "fit"
CIRCOR_ABNORMAL = {"present": "abnormal", "absent": "normal"}


def cross_source_loader(sources: tuple[str, ...]) -> Callable[[LoadContext], list[dict[str, Any]]]:
    """
    Normal vs abnormal heart sound over some of CirCor, PASCAL and Yaseen, each row marked `heldout` or `fit`
    (its `split`; the source's own split value is kept as `source_split`).

    CirCor: murmur heard at the recording's site = abnormal, patient without a murmur = normal (elsewhere and
    unknown left out); PASCAL and Yaseen: the dev pack's normal-vs-abnormal mapping of the transfer tasks
    (`HEART_ABNORMAL_LABELS`).
    """
    from .transfer import _heart_abnormal_loader

    def load(context: LoadContext) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        dev_sources = [s for s in sources if s != CIRCOR_SOURCE_DATASET]
        if dev_sources:
            for row in _heart_abnormal_loader(context):
                if row.get("source_dataset") in dev_sources:
                    row["source_split"] = row.get("split")
                    row["split"] = HELDOUT if (clean_value(row.get("split")) or "").lower() == "val" else FIT
                    rows.append(row)
        if CIRCOR_SOURCE_DATASET in sources:
            for row in circor_rows(context):
                row["target"] = CIRCOR_ABNORMAL.get(murmur_at_site_label(row) or "")
                row["source_split"] = row.get("split")
                row["split"] = HELDOUT if (clean_value(row.get("split")) or "").lower() == "test" else FIT  # val: fit
                rows.append(row)
        return rows

    return load


def _cross_source_policy(fit: str, tested: str) -> SplitPolicy:
    # Probe-training side: every row of the fit source (probing on aligned recordings is not leakage); test side: the
    # target's held-out rows only.
    return SplitPolicy(kind="transfer", column="split", domain_column="source_dataset", train_domains=(fit,),
                       test_domains=(tested,), train_values=(FIT, HELDOUT), test_values=(HELDOUT,))


_CROSS_NOTES = (
    "Normal vs abnormal heart sound. CirCor: murmur heard at the recording's site = abnormal, recordings of patients "
    "without a murmur = normal (elsewhere and unknown left out); PASCAL: normal (incl. noisynormal) vs murmur, "
    "extrastole and extrahls (artifact left out); Yaseen: normal vs mitral regurgitation, stenosis and valve "
    "prolapse. The probe is fitted on every row of the fit source and tested only on held-out rows of the other: "
    "CirCor's test patients, the dev pack's suggested_split == val rows (never seen by alignment runs on the train "
    "sides). The same split for every seed. Different devices, sites, ages and label sets on the two sides: only "
    "what the encoder represents of 'abnormal' in general carries over. "
)
_CROSS_SOURCE_NAMES = {CIRCOR_SOURCE_DATASET: "CirCor", "PASCAL_CHSC2011": "PASCAL", "Yaseen2018": "Yaseen"}
_CROSS_COUNTS = {  # full sets
    CIRCOR_SOURCE_DATASET: ("the 1,157 CirCor rows of the held-out (val + test) patients (200 abnormal, 957 normal)",
                            "CirCor test patients' 576 rows (97 abnormal, 479 normal; 178 patients in 165 groups)"),
    "PASCAL_CHSC2011": ("all 545 PASCAL rows after leaving out artifact (351 normal, 194 abnormal)",
                        "PASCAL's 110 val rows (84 normal, 26 abnormal)"),
    "Yaseen2018": ("all 600 Yaseen rows (150 normal, 450 abnormal)", "Yaseen's 109 val rows (33 normal, 76 abnormal)"),
}

for _fit, _tested in ((CIRCOR_SOURCE_DATASET, "PASCAL_CHSC2011"), (CIRCOR_SOURCE_DATASET, "Yaseen2018"),
                      ("PASCAL_CHSC2011", CIRCOR_SOURCE_DATASET), ("Yaseen2018", CIRCOR_SOURCE_DATASET)):
    _fit_name, _test_name = _CROSS_SOURCE_NAMES[_fit], _CROSS_SOURCE_NAMES[_tested]
    register_task(TaskSpec(
        name=f"heart_{_fit_name.lower()}_to_{_test_name.lower()}",
        description=f"Abnormal heart sound across sources: probe fitted on {_fit_name}, tested on {_test_name}'s "
                    "held-out rows",
        loader=cross_source_loader((_fit, _tested)),
        classes=("normal", "abnormal"),
        label_descriptions={"normal": "normal heart sounds",
                            "abnormal": "abnormal heart sounds, such as a murmur, an extra heart sound or an "
                                        "arrhythmia"},
        split=_cross_source_policy(_fit, _tested),
        family="circor",
        source=f"{CIRCOR_SOURCE} Dev pack: {DEV_PACK_SOURCE}",
        notes=_CROSS_NOTES + f"Fitted on {_CROSS_COUNTS[_fit][0]}; tested on {_CROSS_COUNTS[_tested][1]}.",
    ))


__all__ = [
    "CIRCOR_CITATION",
    "CIRCOR_HELDOUT_SPLIT",
    "CIRCOR_SOURCE",
    "CIRCOR_TEST_SPLIT",
    "circor_loader",
    "circor_manifest",
    "circor_rows",
    "cross_source_loader",
    "descriptor_label",
    "murmur_at_site_label",
    "patient_murmur_label",
]
