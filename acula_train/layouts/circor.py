"""The CirCor DigiScope Phonocardiogram Dataset (George B. Moody PhysioNet Challenge 2022 training set) in its
official layout: `training_data.csv` (one row per patient) and `training_data/` with, per patient, `ID.txt` (its
header: the recordings, then `#Field: value` lines) and per recording `ID_SITE.wav` (4 kHz), `ID_SITE.hea` (WFDB
header) and `ID_SITE.tsv` (S1 / systole / S2 / diastole segmentation). A site recorded twice is `ID_SITE_2.wav`.

Each recording becomes one manifest row with the patient's metadata and the murmur *at its site*: a murmur is
labelled per patient with the sites where it is heard, so a recording at a site not in `Murmur locations` is
"heard elsewhere", not "heard here". The two ids of a child recorded in both campaigns (`Additional ID`) share one
`group_id`.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

from .checksums import verify_sha256sums
from .registry import DatasetLayout, register_layout
from .splitting import grouped_split

SOURCE_DATASET = "CirCor2022"
CITATION = (
    'J. Oliveira et al., "The CirCor DigiScope Dataset: From Murmur Detection to Murmur Classification", IEEE JBHI '
    "26(6), 2022; Goldberger et al., PhysioNet, Circulation 101(23), 2000."
)
LICENCE = "ODC-By 1.0 (CirCor DigiScope, Oliveira et al., IEEE JBHI 2022)"
SITES = ("AV", "PV", "TV", "MV", "Phc")
# Murmur at the recording's site, from the patient's `Murmur` and `Murmur locations`.
MURMUR_AT_SITE = ("here", "elsewhere", "absent", "unknown")
DESCRIPTOR_FIELDS = tuple(
    f"{phase}_murmur_{field}" for phase in ("systolic", "diastolic")
    for field in ("timing", "shape", "grading", "pitch", "quality")
)
# training_data.csv's columns and the header lines of ID.txt, by manifest column. Other columns of a later release
# (e.g. `Outcome`) are kept under their snake_case names.
_COLUMNS = {
    "Patient ID": "patient_id", "Locations": "locations", "Age": "age_group", "Sex": "sex", "Height": "height",
    "Weight": "weight", "Pregnancy status": "pregnancy", "Murmur": "murmur", "Murmur locations": "murmur_locations",
    "Most audible location": "most_audible_location", "Campaign": "campaign", "Additional ID": "additional_id",
    **{name.replace("_", " ").capitalize(): name for name in DESCRIPTOR_FIELDS},
}
_NUMERIC = ("height", "weight")


def _snake(name: str) -> str:
    return _COLUMNS.get(name.strip(), re.sub(r"\W+", "_", name.strip()).strip("_").lower())


def _cell(value: str | None) -> str | None:
    """A cell as text; `nan` and empty cells are "not recorded" (`None`)."""
    if value is None:
        return None
    text = value.strip()
    return None if text == "" or text.lower() == "nan" else text


def _same(field: str, a: str | None, b: str | None) -> bool:
    if field in _NUMERIC and a is not None and b is not None:
        try:
            return math.isclose(float(a), float(b))
        except ValueError:
            return False
    return a == b


def read_patient_table(path: Path) -> dict[str, dict[str, str | None]]:
    """`training_data.csv` as patient id -> manifest-named fields; duplicate or empty ids are errors."""
    patients: dict[str, dict[str, str | None]] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "Patient ID" not in reader.fieldnames:
            raise ValueError(f"{path}: no 'Patient ID' column; columns are {reader.fieldnames}.")
        for record in reader:
            row = {_snake(name): _cell(value) for name, value in record.items()}
            patient = row["patient_id"]
            if patient is None:
                raise ValueError(f"{path} line {reader.line_num}: empty Patient ID.")
            if patient in patients:
                raise ValueError(f"{path} line {reader.line_num}: Patient ID {patient} appears twice.")
            patients[patient] = row
    return patients


def read_patient_header(path: Path) -> tuple[list[tuple[str, list[str]]], dict[str, str | None]]:
    """`ID.txt`: the recordings it lists as (site, [its files: `.hea`, `.wav` and, where there is one, `.tsv`]), and
    its `#Field: value` lines (manifest names). One recording of the official release (50782_MV_1) lists no
    segmentation file."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty patient header.")
    first = lines[0].split()
    try:
        count = int(first[1])
    except (IndexError, ValueError):
        raise ValueError(f"{path} line 1: expected '<patient id> <number of recordings> <sampling rate>'.") from None
    recordings = []
    for number, line in enumerate(lines[1 : 1 + count], start=2):
        parts = line.split()
        wavs = [part for part in parts if part.endswith(".wav")]
        if len(parts) < 2 or len(wavs) != 1:
            raise ValueError(f"{path} line {number}: expected '<site> <ID_SITE.hea> <ID_SITE.wav> <ID_SITE.tsv>'.")
        recordings.append((parts[0], parts[1:]))
    fields = {}
    for line in lines[1 + count :]:
        if line.startswith("#") and ":" in line:
            name, value = line[1:].split(":", 1)
            fields[_snake(name)] = _cell(value)
    return recordings, fields


def _patient_groups(patients: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Patient id -> group id: a patient and its `Additional ID` (the same child in the other campaign) are one
    group, named after the smaller id."""
    parent = {patient: patient for patient in patients}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for patient, row in patients.items():
        other = row.get("additional_id")
        if other is not None and other in parent:
            a, b = find(patient), find(other)
            if a != b:
                parent[max(a, b, key=int)] = min(a, b, key=int)
    return {patient: f"circor_{find(patient)}" for patient in patients}


def murmur_at_site(murmur: str | None, murmur_locations: str | None, site: str) -> str:
    """`here`, `elsewhere`, `absent` or `unknown` for a recording at `site` of a patient with these labels."""
    label = (murmur or "").lower()
    if label == "present":
        return "here" if site in (murmur_locations or "").split("+") else "elsewhere"
    if label in ("absent", "unknown"):
        return label
    raise ValueError(f"unexpected Murmur value {murmur!r} (expected Present, Absent or Unknown).")


def read_circor(root: Path, *, split_seed: int = 0, verify_checksums: bool = True,
                read_audio_info: bool = True) -> list[dict[str, Any]]:
    """
    One row per recording of a CirCor folder in the official layout.

    Args:
        root (`Path`): the folder holding `training_data.csv` and `training_data/`.
        split_seed (`int`, *optional*, defaults to 0): seed of the patient-grouped train / val / test split
            (stratified by the patient's murmur label).
        verify_checksums (`bool`, *optional*, defaults to `True`): check the files `SHA256SUMS.txt` lists, where
            there is one.
        read_audio_info (`bool`, *optional*, defaults to `True`): open every WAV file's header (sampling rate,
            duration); an unreadable file is an error naming it.

    Raises:
        `ValueError`: naming every missing, unreadable or inconsistent file (patients without a header, headers
            without a table row, recordings listed but absent, WAV files no header lists, header fields that
            contradict the table, a changed checksum).
    """
    if verify_checksums:
        verify_sha256sums(root)
    table_path, data = root / "training_data.csv", root / "training_data"
    patients = read_patient_table(table_path)
    groups = _patient_groups(patients)
    problems: list[str] = []
    headers = {path.stem: path for path in data.glob("*.txt")}
    for patient in sorted(set(patients) - set(headers), key=int):
        problems.append(f"{data / (patient + '.txt')} missing (patient {patient} of {table_path.name})")
    for patient in sorted(set(headers) - set(patients)):
        problems.append(f"{headers[patient]} has no row in {table_path.name}")

    rows: list[dict[str, Any]] = []
    listed: set[str] = set()
    for patient in sorted(set(patients) & set(headers), key=int):
        recordings, fields = read_patient_header(headers[patient])
        table = patients[patient]
        for name, value in fields.items():
            if name in table and not _same(name, table[name], value):
                problems.append(f"{headers[patient]}: {name} is {value!r} but {table_path.name} says {table[name]!r}")
        for site, files in recordings:
            wav = next(name for name in files if name.endswith(".wav"))
            segmentation = next((name for name in files if name.endswith(".tsv")), None)
            listed.add(wav)
            wav_path = data / wav
            stem = wav_path.stem
            missing = [name for name in files if not (data / name).is_file()]
            if missing:
                problems.append(f"{headers[patient]} lists {missing}, which do not exist")
                continue
            row: dict[str, Any] = {
                "file": f"training_data/{wav}",
                "recording_id": stem,
                "source_dataset": SOURCE_DATASET,
                "modality": "heart",
                "location": site,
                "group_id": groups[patient],
                **{name: value for name, value in table.items() if name != "locations"},
                "murmur_at_site": murmur_at_site(table.get("murmur"), table.get("murmur_locations"), site),
                "segmentation": f"training_data/{segmentation}" if segmentation else None,
                "license": LICENCE,
            }
            if row["sex"]:
                row["sex"] = row["sex"].lower()
            if read_audio_info:
                import soundfile

                try:
                    info = soundfile.info(str(wav_path))
                except (RuntimeError, soundfile.LibsndfileError) as error:
                    problems.append(f"{wav_path}: unreadable audio ({error})")
                    continue
                row["sampling_rate"] = info.samplerate
                row["duration_s"] = round(info.frames / info.samplerate, 3)
            rows.append(row)
    for stray in sorted(path.name for path in data.glob("*.wav") if path.name not in listed):
        problems.append(f"{data / stray} is listed by no patient header")
    if problems:
        shown = problems[:50]
        more = f" ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise ValueError(f"CirCor folder {root}: {len(problems)} problem(s):\n- " + "\n- ".join(shown) + more)
    splits = grouped_split([row["group_id"] for row in rows], [row["murmur"] or "unknown" for row in rows],
                           seed=split_seed)
    for row, split in zip(rows, splits):
        row["split"] = split
    return rows


register_layout(DatasetLayout(
    name="circor",
    description="CirCor DigiScope (PhysioNet Challenge 2022 training set): 942 children, 3,163 heart-sound "
                "recordings at up to 5 sites, murmur labels and descriptors",
    read=read_circor,
    expected_files=("training_data.csv", "training_data"),
    citation=CITATION,
    licence=LICENCE,
))
