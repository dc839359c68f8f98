"""The OPERA benchmark tasks (T1-T19 of `../shared/ACULA.md`) over the original public datasets under `--data_root`.

Each documents the layout it expects (`TaskSpec.layout`) and where the data comes from (`TaskSpec.source`), and fails
with a message naming the missing file when the data is absent. The authors' own split files are numpy pickles, which
acula never loads; where a task needs a published split it reads a small CSV instead (documented in the layout), and
otherwise uses a patient-grouped split with fixed seeds.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .dev_pack import kauh_obstructive_label
from .registry import TASKS, register_task
from .specs import LoadContext, TaskSpec, clean_value
from .split_policy import SplitPolicy

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".webm")


def _require(path: Path, task: str, layout: str) -> Path:
    if not path.exists():
        raise ValueError(f"Task {task!r}: {path} not found. Expected layout under --data_root:\n{layout}")
    return path


def _data_root(context: LoadContext, task: str, layout: str) -> Path:
    if context.data_root is None:
        raise ValueError(f"Task {task!r} reads a public dataset: pass --data_root. Expected layout:\n{layout}")
    return _require(context.data_root, task, layout)


def _read_csv(path: Path, delimiter: str = ",", fieldnames: Sequence[str] | None = None) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [dict(row) for row in csv.DictReader(handle, delimiter=delimiter, fieldnames=fieldnames)]


def _split_table(path: Path, key: str) -> dict[str, str]:
    """Optional `<key>,split` CSV with the published split (converted from the authors' split files)."""
    if not path.is_file():
        return {}
    return {row[key]: row["split"].strip().lower() for row in _read_csv(path)}


def _published_or_grouped(test_values: tuple[str, ...] = ("test",)) -> SplitPolicy:
    return SplitPolicy(kind="column", column="split", train_values=("train", "val"), test_values=test_values)


# T1, T2: UK COVID-19 Vocal Audio Dataset
_COVIDUK_LAYOUT = """covidUK/
  participant_metadata.csv   columns participant_identifier, covid_test_result (Positive | Negative)
  audio_metadata.csv         columns participant_identifier, exhalation_file_name, cough_file_name
  audio_selected/<file name> the recordings named in audio_metadata.csv
  splits.csv                 columns file_name, split (train | val | test): OPERA's published split"""


def _coviduk_loader(modality: str, task: str) -> Callable[[LoadContext], list[dict[str, Any]]]:
    def load(context: LoadContext) -> list[dict[str, Any]]:
        root = _data_root(context, task, _COVIDUK_LAYOUT) / "covidUK"
        participants = {
            row["participant_identifier"]: row.get("covid_test_result")
            for row in _read_csv(_require(root / "participant_metadata.csv", task, _COVIDUK_LAYOUT))
        }
        splits = _split_table(_require(root / "splits.csv", task, _COVIDUK_LAYOUT), "file_name")
        rows = []
        for row in _read_csv(_require(root / "audio_metadata.csv", task, _COVIDUK_LAYOUT)):
            name = clean_value(row.get(f"{modality}_file_name"))
            if name is None or name not in splits:
                continue  # OPERA evaluates only the files of its published split
            user = row["participant_identifier"]
            rows.append({"path": root / "audio_selected" / name, "label": participants.get(user), "group_id": user,
                         "split": splits[name], "modality": "cough" if modality == "cough" else "breath"})
        return rows

    return load


_COVID_LABELS = {"Negative": "negative", "Positive": "positive"}
_COVID_DESCRIPTIONS = {"negative": "a COVID-19 negative participant", "positive": "a COVID-19 positive participant"}
_COVIDUK_SOURCE = ("UK COVID-19 Vocal Audio Dataset (Budd et al., Sci. Data 2024; Coppock et al., Nat. Mach. Intell. "
                   "2024), distributed by the UK Health Security Agency on Zenodo (access on request).")
for _id, _modality in (("T1", "exhalation"), ("T2", "cough")):
    register_task(TaskSpec(
        name=f"covid_uk_{_modality}", description=f"UK COVID-19 Vocal Audio, {_modality}: COVID-19 positive vs negative",
        loader=_coviduk_loader(_modality, f"covid_uk_{_modality}"), label_map=_COVID_LABELS,
        classes=("negative", "positive"), label_descriptions=_COVID_DESCRIPTIONS, split=_published_or_grouped(),
        family="opera", opera_id=_id, source=_COVIDUK_SOURCE, layout=_COVIDUK_LAYOUT,
    ))

# T5, T6: COUGHVID
_COUGHVID_LAYOUT = """coughvid/
  metadata_compiled.csv      columns uuid, status (COVID-19 | healthy | symptomatic), gender (female | male)
  wav/<uuid>.wav             the recordings (converted from the original webm/ogg)
  splits.csv                 columns uuid, split (train | val | test): OPERA's published split"""
_COUGHVID_SOURCE = ("COUGHVID (Orlandic et al., Sci. Data 2021), https://zenodo.org/records/4498364 (CC BY 4.0).")


def _coughvid_loader(column: str, task: str) -> Callable[[LoadContext], list[dict[str, Any]]]:
    def load(context: LoadContext) -> list[dict[str, Any]]:
        root = _data_root(context, task, _COUGHVID_LAYOUT) / "coughvid"
        splits = _split_table(_require(root / "splits.csv", task, _COUGHVID_LAYOUT), "uuid")
        rows = []
        for row in _read_csv(_require(root / "metadata_compiled.csv", task, _COUGHVID_LAYOUT)):
            uuid = row["uuid"]
            if uuid not in splits:
                continue
            rows.append({"path": root / "wav" / f"{uuid}.wav", "label": row.get(column), "group_id": uuid,
                         "split": splits[uuid], "modality": "cough"})
        return rows

    return load


register_task(TaskSpec(
    name="coughvid_covid", description="COUGHVID cough: COVID-19 vs healthy", loader=_coughvid_loader("status", "coughvid_covid"),
    label_map={"healthy": "negative", "COVID-19": "positive"}, classes=("negative", "positive"),
    label_descriptions=_COVID_DESCRIPTIONS, split=_published_or_grouped(), family="opera", opera_id="T5",
    source=_COUGHVID_SOURCE, layout=_COUGHVID_LAYOUT, notes="symptomatic and unlabelled rows are left out.",
))
register_task(TaskSpec(
    name="coughvid_sex", description="COUGHVID cough: female vs male", loader=_coughvid_loader("gender", "coughvid_sex"),
    label_map={"male": "male", "female": "female"}, classes=("male", "female"),
    label_descriptions={"male": "a cough of a male participant", "female": "a cough of a female participant"},
    split=_published_or_grouped(), family="opera", opera_id="T6", source=_COUGHVID_SOURCE, layout=_COUGHVID_LAYOUT,
))

# T7: ICBHI 2017
_ICBHI_LAYOUT = """icbhi/
  ICBHI_Challenge_diagnosis.txt   tab-separated: patient id, diagnosis (COPD, Healthy, URTI, ...)
  ICBHI_challenge_train_test.txt  tab-separated: recording id (file name without .wav), train | test
  ICBHI_final_database/<recording id>.wav"""


def _icbhi_loader(context: LoadContext) -> list[dict[str, Any]]:
    task = "icbhi_copd"
    root = _data_root(context, task, _ICBHI_LAYOUT) / "icbhi"
    diagnosis = {r["patient"]: r["diagnosis"] for r in _read_csv(
        _require(root / "ICBHI_Challenge_diagnosis.txt", task, _ICBHI_LAYOUT), "\t", ["patient", "diagnosis"])}
    splits = {r["recording"]: r["split"] for r in _read_csv(
        _require(root / "ICBHI_challenge_train_test.txt", task, _ICBHI_LAYOUT), "\t", ["recording", "split"])}
    audio = _require(root / "ICBHI_final_database", task, _ICBHI_LAYOUT)
    rows = []
    for path in sorted(audio.glob("*.wav")):
        patient = path.stem.split("_")[0]
        rows.append({"path": path, "label": diagnosis.get(patient), "group_id": f"icbhi_{patient}",
                     "split": splits.get(path.stem), "modality": "lung", "diagnosis": diagnosis.get(patient)})
    return rows


register_task(TaskSpec(
    name="icbhi_copd", description="ICBHI 2017 respiratory sounds: COPD vs healthy", loader=_icbhi_loader,
    label_map={"Healthy": "healthy", "COPD": "copd"}, classes=("healthy", "copd"),
    label_descriptions={"healthy": "normal lung sounds of a healthy patient",
                        "copd": "chronic obstructive pulmonary disease"},
    split=_published_or_grouped(), family="opera", opera_id="T7",
    source="ICBHI 2017 Respiratory Sound Database (Rocha et al., 2019), https://bhichallenge.med.auth.gr/",
    layout=_ICBHI_LAYOUT, notes="official train/test split; other diagnoses are left out.",
))

# T8, T9: Coswara shallow cough
_COSWARA_LAYOUT = """Coswara-Data/
  combined_data.csv                     columns id, g (male | female), smoker (y | n | True | False)
  annotations/cough-shallow_labels.csv  optional: columns FILENAME (<id>_cough-shallow), QUALITY (0 = unusable)
  Extracted_data/<date>/<id>/cough-shallow.wav"""
_COSWARA_SOURCE = "Coswara (Bhattacharya et al., Sci. Data 2023), https://github.com/iiscleap/Coswara-Data (CC BY 4.0)."


def _coswara_loader(column: str, task: str) -> Callable[[LoadContext], list[dict[str, Any]]]:
    def load(context: LoadContext) -> list[dict[str, Any]]:
        root = _data_root(context, task, _COSWARA_LAYOUT) / "Coswara-Data"
        metadata = _read_csv(_require(root / "combined_data.csv", task, _COSWARA_LAYOUT))
        quality_file = root / "annotations" / "cough-shallow_labels.csv"
        unusable = set()
        if quality_file.is_file():
            for row in _read_csv(quality_file):
                values = list(row.values())
                if len(values) >= 2 and str(values[1]).strip() == "0":
                    unusable.add(str(values[0]).split("_")[0])
        files = {path.parent.name: path for path in _require(root / "Extracted_data", task, _COSWARA_LAYOUT)
                 .glob("*/*/cough-shallow.wav")}
        rows = []
        for row in metadata:
            participant = row["id"]
            if participant in unusable or participant not in files:
                continue
            rows.append({"path": files[participant], "label": row.get(column), "group_id": f"coswara_{participant}",
                         "modality": "cough", "sex": row.get("g")})
        return rows

    return load


register_task(TaskSpec(
    name="coswara_smoker", description="Coswara shallow cough: smoker vs non-smoker", loader=_coswara_loader("smoker", "coswara_smoker"),
    label_map={"y": "smoker", "True": "smoker", "TRUE": "smoker",
               "n": "non_smoker", "False": "non_smoker", "FALSE": "non_smoker"},
    classes=("non_smoker", "smoker"),
    label_descriptions={"non_smoker": "a cough of a non-smoker", "smoker": "a cough of a smoker"},
    split=SplitPolicy(kind="group_shuffle", test_size=0.2), family="opera", opera_id="T8",
    source=_COSWARA_SOURCE, layout=_COSWARA_LAYOUT, notes="grouped 80/20 shuffle per seed (OPERA: one stratified 80/20 draw).",
))
register_task(TaskSpec(
    name="coswara_sex_opera", description="Coswara shallow cough: female vs male (full dataset)",
    loader=_coswara_loader("g", "coswara_sex_opera"), label_map={"male": "male", "female": "female"},
    classes=("male", "female"),
    label_descriptions={"male": "a cough of a male participant", "female": "a cough of a female participant"},
    split=SplitPolicy(kind="group_shuffle", test_size=0.2), family="opera", opera_id="T9",
    source=_COSWARA_SOURCE, layout=_COSWARA_LAYOUT,
))

# T10: KAUH
_KAUH_LAYOUT = """KAUH/
  AudioFiles/<filter><P><patient>_<diagnosis>,<sounds>,<location>,<age>,<sex>.wav
      e.g. BP1_Asthma,I E W,P L L,63,M.wav (filter B/D/E = bell/diaphragm/extended)"""


def _kauh_opera_loader(context: LoadContext) -> list[dict[str, Any]]:
    task = "kauh_obstructive_opera"
    audio = _require(_data_root(context, task, _KAUH_LAYOUT) / "KAUH" / "AudioFiles", task, _KAUH_LAYOUT)
    rows = []
    for path in sorted(audio.glob("*.wav")):
        head = path.stem.split(",")[0]
        diagnosis = head.split("_")[-1]
        label = kauh_obstructive_label("normal" if diagnosis == "N" else diagnosis.replace(" and ", "+"))
        # "BP100_N" -> "kauh_P100": the dev pack's id for the same patient, so leakage checks see the overlap.
        rows.append({"path": path, "label": label, "group_id": f"kauh_{head.split('_')[0][1:]}", "modality": "lung"})
    return rows


register_task(TaskSpec(
    name="kauh_obstructive_opera", description="KAUH lung sounds (full dataset): healthy vs obstructive",
    loader=_kauh_opera_loader, classes=("healthy", "obstructive"),
    label_descriptions={"healthy": "normal lung sounds of a healthy patient",
                        "obstructive": "an obstructive airway disease such as asthma or COPD"},
    split=SplitPolicy(kind="group_shuffle", test_size=0.2), family="opera", opera_id="T10",
    source="KAUH lung sounds (Fraiwan et al., Data in Brief 2021), Mendeley Data doi:10.17632/jwyy9np4gv (CC BY 4.0).",
    layout=_KAUH_LAYOUT, notes="OPERA-CE reaches 0.741 AUROC. Patient-grouped 80/20 per seed.",
))

# T11: RespiratoryDatabase@TR
_COPD_LAYOUT = """copd/
  Labels.csv                  columns patient id (e.g. H001), diagnosis ending in the severity digit (COPD0..COPD4)
  RespiratoryDatabase@TR/<patient id><...>.wav  (the first 4 characters of a file name are the patient id)"""


def _copd_loader(context: LoadContext) -> list[dict[str, Any]]:
    task = "copd_severity"
    root = _data_root(context, task, _COPD_LAYOUT) / "copd"
    labels = {}
    for row in _read_csv(_require(root / "Labels.csv", task, _COPD_LAYOUT)):
        values = list(row.values())
        labels[str(values[0]).strip()] = f"COPD{str(values[1]).strip()[-1]}"
    audio = _require(root / "RespiratoryDatabase@TR", task, _COPD_LAYOUT)
    return [{"path": p, "label": labels.get(p.name[:4]), "group_id": f"copd_{p.name[:4]}", "modality": "lung"}
            for p in sorted(audio.glob("*.wav"))]


register_task(TaskSpec(
    name="copd_severity", description="RespiratoryDatabase@TR: COPD severity, 5 classes (COPD0-COPD4)",
    loader=_copd_loader, classes=("COPD0", "COPD1", "COPD2", "COPD3", "COPD4"),
    label_descriptions={f"COPD{i}": f"COPD of severity {i}" for i in range(5)},
    split=SplitPolicy(kind="group_shuffle", test_size=0.2), family="opera", opera_id="T11",
    source="RespiratoryDatabase@TR (Altan et al.), Mendeley Data doi:10.17632/p9z4h98s6j.",
    layout=_COPD_LAYOUT, notes="OPERA-CE reaches 0.683 macro AUROC. Patient-grouped 80/20 per seed.",
))

# T13-T18: MMLung
_MMLUNG_LAYOUT = """mmlung/
  All_path.csv    (All_path.xlsx saved as CSV) columns Deep_Breath_file, O_Single_file (paths relative to mmlung/,
                  e.g. ./Trimmed_Data_from_phone/...), FVC, FEV1, FEV1/FVC; one row per participant
  Trimmed_Data_from_phone/...  the recordings"""
_MMLUNG_TARGETS = (("fvc", "FVC"), ("fev1", "FEV1"), ("fev1_fvc", "FEV1/FVC"))


def _mmlung_loader(column: str, target: str, task: str) -> Callable[[LoadContext], list[dict[str, Any]]]:
    def load(context: LoadContext) -> list[dict[str, Any]]:
        root = _data_root(context, task, _MMLUNG_LAYOUT) / "mmlung"
        rows = []
        for number, row in enumerate(_read_csv(_require(root / "All_path.csv", task, _MMLUNG_LAYOUT))):
            relative = clean_value(row.get(column))
            if relative is None:
                continue
            rows.append({"path": (root / relative).resolve(), "label": row.get(target),
                         "group_id": f"mmlung_{row.get('ID') or row.get('participant') or number}", "modality": "breath"})
        return rows

    return load


_task_number = 13
for _column, _modality_name in (("Deep_Breath_file", "deep_breath"), ("O_Single_file", "vowel_o")):
    for _suffix, _target in _MMLUNG_TARGETS:
        _name = f"mmlung_{_modality_name}_{_suffix}"
        register_task(TaskSpec(
            name=_name, description=f"MMLung {_modality_name.replace('_', ' ')}: {_target} regression",
            loader=_mmlung_loader(_column, _target, _name), kind="regression", metric="mae",
            split=SplitPolicy(kind="leave_one_group_out"), family="opera", opera_id=f"T{_task_number}",
            source="MMLung (Mosuily et al., 2023); obtained from its authors, see OPERA's benchmark instructions.",
            layout=_MMLUNG_LAYOUT, notes="leave-one-subject-out; MAE in the target's unit (litres; ratio for FEV1/FVC).",
        ))
        _task_number += 1

# T19: NoseMic
_NOSEMIC_LAYOUT = """nosemic/
  audio/<participant>_<a>_<b>_<respiratory rate>.wav   (four underscore-separated fields, the last is the rate)"""


def _nosemic_loader(context: LoadContext) -> list[dict[str, Any]]:
    task = "nosemic_rr"
    audio = _require(_data_root(context, task, _NOSEMIC_LAYOUT) / "nosemic" / "audio", task, _NOSEMIC_LAYOUT)
    rows = []
    for path in sorted(p for p in audio.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
        fields = path.stem.split("_")
        if len(fields) != 4:
            raise ValueError(f"Task {task!r}: {path.name} does not follow <participant>_<a>_<b>_<rate>.wav.\n"
                             f"{_NOSEMIC_LAYOUT}")
        rows.append({"path": path, "label": fields[3], "group_id": f"nosemic_{fields[0]}", "modality": "breath"})
    return rows


register_task(TaskSpec(
    name="nosemic_rr", description="NoseMic: respiratory rate regression", loader=_nosemic_loader, kind="regression",
    metric="mae", split=SplitPolicy(kind="leave_one_group_out"), family="opera", opera_id="T19",
    source="NoseMic (earable nose-microphone breathing, Chen et al.); see OPERA's benchmark instructions.",
    layout=_NOSEMIC_LAYOUT, notes="leave-one-subject-out; MAE in breaths per minute.",
))

OPERA_TASK_IDS = {spec.opera_id: spec.name for spec in TASKS.values() if spec.opera_id}
