"""Cross-dataset transfer tasks over the dev pack (a task with headroom): abnormal heart sound, a probe fitted on
some sources and tested on the held-out rows of the others."""

from __future__ import annotations

from typing import Any

from .dev_pack import DEV_PACK_SOURCE, dev_pack_loader
from .registry import register_task
from .specs import LoadContext, TaskSpec, clean_value
from .split_policy import SplitPolicy

# Normal vs abnormal heart sound, per source. Only the listed labels are kept (an unknown label is left out, never
# guessed); the mapping is in the tasks' notes.
HEART_ABNORMAL_LABELS: dict[str, dict[str, str]] = {
    "PASCAL_CHSC2011": {"normal": "normal", "murmur": "abnormal", "extrastole": "abnormal", "extrahls": "abnormal"},
    "Yaseen2018": {"normal": "normal", "mitral_regurgitation": "abnormal", "mitral_stenosis": "abnormal",
                   "mitral_valve_prolapse": "abnormal"},
    "HLS-CMDS_manikin": {
        "normal": "normal", "early_systolic_murmur": "abnormal", "mid_systolic_murmur": "abnormal",
        "late_systolic_murmur": "abnormal", "late_diastolic_murmur": "abnormal", "s3": "abnormal", "s4": "abnormal",
        "atrial_fibrillation": "abnormal", "av_block": "abnormal", "tachycardia": "abnormal",
    },
}
_HEART_ABNORMAL_NOTES = (
    "normal vs abnormal per source: PASCAL normal (incl. noisynormal) vs murmur (incl. noisymurmur), extrastole and "
    "extrahls, artifact left out; HLS-CMDS heart rows (manikin) normal vs early/mid/late systolic murmur, late "
    "diastolic murmur, S3, S4, atrial fibrillation, AV block and tachycardia (every non-normal heart sound type of "
    "the manikin; its lung rows are left out); Yaseen normal vs mitral regurgitation, stenosis and valve prolapse. "
)
_HEART_ABNORMAL_DESCRIPTIONS = {
    "normal": "normal heart sounds",
    "abnormal": "abnormal heart sounds, such as a murmur, an extra heart sound or an arrhythmia",
}


def _heart_abnormal_loader(context: LoadContext) -> list[dict[str, Any]]:
    rows = dev_pack_loader(sources=list(HEART_ABNORMAL_LABELS), modalities=["heart"])(context)
    for row in rows:  # the recording's own label stays (reports); the task's class is its target
        row["target"] = HEART_ABNORMAL_LABELS[row["source_dataset"]].get(clean_value(row.get("label")) or "")
    return rows


def _transfer_policy(train_domains: tuple[str, ...], test_domains: tuple[str, ...]) -> SplitPolicy:
    # Test side: the target's held-out rows only (models aligned on the dev pack's train rows can be evaluated);
    # probe-training side: every row of the fit sources (probing on aligned recordings is not leakage).
    return SplitPolicy(kind="transfer", column="suggested_split", domain_column="source_dataset",
                       train_domains=train_domains, test_domains=test_domains, train_values=("train", "val"),
                       test_values=("val",))


register_task(TaskSpec(
    name="heart_transfer_to_yaseen",
    description="Abnormal heart sound, cross-dataset: probe fitted on PASCAL + HLS-CMDS heart, tested on Yaseen",
    loader=_heart_abnormal_loader,
    classes=("normal", "abnormal"),
    label_descriptions=_HEART_ABNORMAL_DESCRIPTIONS,
    split=_transfer_policy(("PASCAL_CHSC2011", "HLS-CMDS_manikin"), ("Yaseen2018",)),
    source=DEV_PACK_SOURCE,
    notes=_HEART_ABNORMAL_NOTES + "Probe trained on all PASCAL and HLS-CMDS heart rows (train + val); tested on "
          "Yaseen's suggested_split == val rows only (109: 33 normal, 76 abnormal); Yaseen's train rows are unused. "
          "The same split for every seed. Different recording devices, sites and label sets on the two sides: "
          "only what the encoder represents of 'abnormal' in general carries over. Saturated nevertheless: "
          "logmel-stats reaches 0.983 AUROC (pooled 0.989, CI 0.972-0.998; Yaseen's normal and abnormal clips differ "
          "in plain spectral statistics), so it is left out of the mean over tasks with headroom; the reverse "
          "direction (heart_transfer_from_yaseen) is the hard one.",
    headroom=False,
))
register_task(TaskSpec(
    name="heart_transfer_from_yaseen",
    description="Abnormal heart sound, cross-dataset: probe fitted on Yaseen, tested on PASCAL + HLS-CMDS heart",
    loader=_heart_abnormal_loader,
    classes=("normal", "abnormal"),
    label_descriptions=_HEART_ABNORMAL_DESCRIPTIONS,
    split=_transfer_policy(("Yaseen2018",), ("PASCAL_CHSC2011", "HLS-CMDS_manikin")),
    source=DEV_PACK_SOURCE,
    notes=_HEART_ABNORMAL_NOTES + "Probe trained on all Yaseen rows (train + val); tested on the suggested_split "
          "== val rows of PASCAL (110 after leaving out artifact: 84 normal, 26 abnormal) and HLS-CMDS heart (8: 3 "
          "normal, 5 abnormal); their train rows are unused. The same split for every seed. logmel-stats scores "
          "0.463 AUROC (pooled CI 0.40-0.51): below chance, what a probe of Yaseen-specific spectral statistics "
          "does on PASCAL.",
))
