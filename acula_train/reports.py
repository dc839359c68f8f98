"""Clinical text for recordings: templated reports from metadata, validation, optional LLM rewrite.

AcuLa aligns audio embeddings with a frozen text teacher's embeddings of one short clinical report
per recording. `write_report` renders the metadata of a row as 2-3 deterministic sentences;
`LLMReportRewriter` may rephrase them with a local causal LM, and every rewrite is checked by
`validate_report` (findings kept, nothing invented, no error text from a failed call) and replaced by
the template when it fails. Only an allow-list of fields is read: the split column, file names,
licences and source paths never reach the text.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Fields that carry clinical or acquisition meaning, in the order the meta report lists them.
REPORT_FIELDS = (
    "source_dataset",
    "modality",
    "label",
    "sublabel",
    "diagnosis",
    "sound_type",
    "location",
    "filter_mode",
    "device",
    "age",
    "sex",
    "covid_status",
    "conditions",
    "quality",
)

_MODALITY_NOUNS = {
    "heart": "Heart sound",
    "lung": "Lung sound",
    "cough": "Cough",
    "breath": "Breathing sound",
    "speech": "Speech",
}

# Label / diagnosis codes of the dev pack (and the obvious neighbours of its sources) in clinical words.
_TERMS = {
    # PASCAL CHSC 2011
    "extrastole": "extrasystole",
    "extrahls": "extra heart sound",
    "artifact": "artifact",
    # HLS-CMDS
    "av_block": "atrioventricular block",
    "s3": "third heart sound (S3)",
    "s4": "fourth heart sound (S4)",
    "pleural_rub": "pleural friction rub",
    "wheezing": "wheezing",
    # KAUH
    "copd": "chronic obstructive pulmonary disease (COPD)",
    "bron": "BRON (a diagnosis code of the source)",
    # Coswara recording tasks
    "breathing-deep": "deep breathing",
    "breathing-shallow": "shallow breathing",
    "cough-heavy": "heavy cough",
    "cough-shallow": "shallow cough",
    "counting-normal": "counting at normal pace",
    "counting-fast": "counting at fast pace",
    "vowel-a": "sustained vowel /a/",
    "vowel-e": "sustained vowel /e/",
    "vowel-o": "sustained vowel /o/",
}

# The words of each code that a report (and any rewrite) must keep.
_FINDING_TERMS = {
    "copd": ["COPD"],
    "bron": ["BRON"],
    "s3": ["S3"],
    "s4": ["S4"],
    "extrahls": ["extra heart sound"],
    "artifact": ["artifact"],
}

_SUBLABELS = {"noisynormal": "noisy recording", "noisymurmur": "noisy recording"}

_COVID_STATUS = {
    "healthy": "healthy",
    "no_resp_illness_exposed": "no respiratory illness, exposed to COVID-19",
    "resp_illness_not_identified": "respiratory illness not identified as COVID-19",
    "positive_mild": "COVID-19 positive, mild",
    "positive_moderate": "COVID-19 positive, moderate",
    "positive_asymp": "COVID-19 positive, asymptomatic",
    "recovered_full": "recovered from COVID-19",
}
_COVID_FINDINGS = {
    "healthy": ["healthy"],
    "no_resp_illness_exposed": ["exposed"],
    "resp_illness_not_identified": ["respiratory illness"],
    "positive_mild": ["positive"],
    "positive_moderate": ["positive"],
    "positive_asymp": ["positive"],
    "recovered_full": ["recovered"],
}

_CONDITIONS = {
    "ht": "hypertension",
    "smoker": "smoker",
    "cld": "chronic lung disease",
    "ihd": "ischaemic heart disease",
}

# Coswara annotators rated audio quality 0 (bad), 1 (good), 2 (excellent).
_QUALITY = {"0": "poor", "1": "good", "2": "excellent"}

_FILTER_MODES = {
    "bell": "bell mode (low frequencies)",
    "diaphragm": "diaphragm mode (high frequencies)",
    "extended": "extended mode (wide frequency range)",
}

_SEX = {"male": "male", "female": "female", "m": "male", "f": "female"}

# Provenance, phrased for the text: where the recording comes from, never a file name.
_PROVENANCE = {
    "HLS-CMDS_manikin": "Manikin recording of simulated sounds, not from a patient.",
    "KAUH_lung_sounds": "Clinical recording from hospital patients.",
    "PASCAL_CHSC2011": "Clinical recording from a heart sound challenge collection.",
    "Yaseen2018": "Recording from a curated heart valve disease collection.",
    "Coswara_20200413": "Crowdsourced recording from a COVID-19 screening study.",
}

# HLS-CMDS auscultation sites. LC / RC are not expanded: the dev pack does not say what they stand for.
_SITES = {
    "apex": "the cardiac apex",
    "lusb": "the left upper sternal border",
    "llsb": "the left lower sternal border",
    "rusb": "the right upper sternal border",
    "lua": "the left upper anterior chest",
    "rua": "the right upper anterior chest",
    "lma": "the left middle anterior chest",
    "rma": "the right middle anterior chest",
    "lla": "the left lower anterior chest",
    "rla": "the right lower anterior chest",
}
_KAUH_SURFACE = {"P": "posterior", "A": "anterior"}
_KAUH_SIDE = {"L": "left", "R": "right"}
_KAUH_LEVEL = {"U": "upper", "M": "middle", "L": "lower"}

# KAUH sound-type codes: I / E = inspiratory / expiratory phase of the sound that follows.
_KAUH_PHASES = {"I": "inspiratory", "E": "expiratory"}
_KAUH_SOUNDS = {
    "W": "wheezes",
    "C": "crackles",
    "B": "bronchial breath sounds",
    "N": "normal breath sounds",
    "CREP": "crepitations",
    "BRONCHIAL": "bronchial breath sounds",
}

# Terms that name a finding. A rewrite mentioning one that the template does not mention invents it.
_FINDING_VOCABULARY = (
    "murmur", "wheez", "crackl", "crepitation", "rhonch", "friction rub", "stridor", "bronchial",
    "pneumonia", "asthma", "copd", "chronic obstructive", "fibrosis", "effusion", "heart failure",
    "regurgitation", "stenosis", "prolapse", "fibrillation", "block", "tachycardia", "bradycardia",
    "extrasystole", "gallop", "click", "s3", "s4", "hypertension", "diabetes", "fever", "smoker",
    "covid-19 positive", "bronchiectasis", "bronchitis", "tuberculosis", "cancer",
    "covid", "cough", "disease", "infection", "arrhythmia", "irregular", "infarction", "ischemi", "ischaemi",
    "edema", "oedema", "embolism", "insufficiency", "incompetence", "defect", "aneurysm", "thrill", "snap",
    "split", "rub", "rales", "consolidation", "atelectasis", "emphysema", "pneumothorax", "hypotension",
    "syncope", "pain", "palpitation", "calcifi", "vegetation", "tumor", "tumour", "nodule", "sepsis", "s1", "s2",
    "hypoxia", "failure", "shortness of breath", "dyspnea", "dyspnoea", "stroke", "radiat",
)

# Words that qualify a finding (valve / chamber, timing, phase, severity, character, site, grade), by concept.
# A rewrite may use one only where the template uses the same concept: "aortic", "late diastolic",
# "holosystolic", "at the apex" or "severe" cannot be added to a template that does not say so.
_QUALIFIER_FORMS = {
    "mitral": ("mitral",),
    "aortic": ("aortic", "aorta"),
    "tricuspid": ("tricuspid",),
    "pulmonary": ("pulmonary", "pulmonic", "pulmonal"),
    "atrial": ("atrial", "atrium", "atria"),
    "atrioventricular": ("atrioventricular", "av"),
    "ventricular": ("ventricular", "ventricle", "ventricles"),
    "septal": ("septal", "septum"),
    "valve": ("valve", "valves", "valvular"),
    "pleural": ("pleural", "pleura"),
    "systolic": ("systolic", "systole"),
    "diastolic": ("diastolic", "diastole"),
    "holosystolic": ("holosystolic", "pansystolic", "holo", "pan"),
    "mid": ("mid", "midsystolic", "middiastolic"),
    "early": ("early",),
    "late": ("late",),
    "continuous": ("continuous",),
    "inspiratory": ("inspiratory", "inspiration", "inhalation"),
    "expiratory": ("expiratory", "expiration", "exhalation"),
    "biphasic": ("biphasic",),
    "normal": ("normal", "normally", "unremarkable"),
    "abnormal": ("abnormal", "abnormally", "abnormality", "abnormalities", "pathological", "pathologic"),
    "healthy": ("healthy",),
    "positive": ("positive",),
    "negative": ("negative",),
    "mild": ("mild", "mildly"),
    "moderate": ("moderate", "moderately"),
    "severe": ("severe", "severely", "severity"),
    "significant": ("significant", "significantly"),
    "marked": ("marked", "markedly"),
    "trace": ("trace", "trivial", "minimal"),
    "critical": ("critical", "advanced", "massive", "extensive"),
    "loud": ("loud", "louder"),
    "soft": ("soft", "faint"),
    "harsh": ("harsh",),
    "blowing": ("blowing",),
    "musical": ("musical",),
    "rumbling": ("rumbling", "rumble"),
    "fine": ("fine",),
    "coarse": ("coarse",),
    "pitched": ("pitched", "pitch"),
    "crescendo": ("crescendo", "decrescendo"),
    "ejection": ("ejection",),
    "regurgitant": ("regurgitant",),
    "diffuse": ("diffuse", "widespread", "scattered", "generalized", "generalised"),
    "focal": ("focal", "localized", "localised"),
    "bilateral": ("bilateral", "bilaterally"),
    "unilateral": ("unilateral",),
    "prominent": ("prominent",),
    "intermittent": ("intermittent", "paroxysmal", "occasional"),
    "persistent": ("persistent", "recurrent", "frequent"),
    "acute": ("acute",),
    "chronic": ("chronic",),
    "polyphonic": ("polyphonic",),
    "monophonic": ("monophonic",),
    "wet": ("wet", "productive"),
    "dry": ("dry",),
    "apex": ("apex", "apical"),
    "base": ("base", "basal", "bases", "basilar", "bibasilar"),
    "sternal": ("sternal", "sternum", "parasternal"),
    "border": ("border",),
    "left": ("left",),
    "right": ("right",),
    "upper": ("upper",),
    "lower": ("lower",),
    "middle": ("middle",),
    "anterior": ("anterior",),
    "posterior": ("posterior",),
    "lateral": ("lateral",),
    "axilla": ("axilla", "axillary"),
    "intercostal": ("intercostal",),
    "carotid": ("carotid", "carotids"),
    "lobe": ("lobe", "lobar"),
    "degree": ("degree",),
    "first": ("first",),
    "second": ("second",),
    "third": ("third",),
    "fourth": ("fourth",),
    "grade": ("grade", "graded", "grading"),
}
_QUALIFIER_OF = {form: concept for concept, forms in _QUALIFIER_FORMS.items() for form in forms}
# Qualifiers of the whole report rather than of one finding ("abnormal expiratory wheezes" for "Abnormal lung sounds
# with expiratory wheezes"): checked as words only, never as part of a finding phrase.
_REPORT_WIDE_QUALIFIERS = frozenset({"normal", "abnormal", "healthy", "positive", "negative"})
_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5, "vi": 6}
_NUMBER_WORDS = frozenset(
    "two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred twenties thirties forties "
    "fifties sixties seventies eighties nineties dozen".split()
)
# Disease-like word endings (pericarditis, cardiomyopathy, hypoxaemia, cardiomegaly, ...): such a word must be in
# the template even when it is not in `_FINDING_VOCABULARY`.
_DISEASE_WORD = re.compile(
    r"[a-z]{2,}(?:itis|osis|emia|aemia|pathy|megaly|plasia|ectasis|pnea|pnoea|rrhea|rrhoea|algia|plegia|trophy|oma)"
)
_NOT_DISEASE_WORDS = frozenset({"diagnosis", "prognosis"})
_NEGATIONS = frozenset({"no", "not", "without", "absent", "absence", "denies", "denied", "lacks", "lacking",
                        "neither", "nor", "never", "isn", "aren", "wasn", "weren", "doesn", "didn"})
_SEX_WORDS = {
    "male": ("male", "males", "man", "men", "gentleman", "boy", "he", "his", "him", "himself"),
    "female": ("female", "females", "woman", "women", "lady", "girl", "she", "her", "hers", "herself"),
}
_SEX_OF = {form: sex for sex, forms in _SEX_WORDS.items() for form in forms}
# Age words and the ages (lower bound inclusive, upper bound exclusive) they may describe.
_AGE_WORDS = {
    **dict.fromkeys(("elderly", "geriatric", "senior", "older"), (60, None)),
    **dict.fromkeys(("young", "younger"), (None, 40)),
    **dict.fromkeys(("adult", "adults"), (18, None)),
    **dict.fromkeys(("child", "children", "childhood", "pediatric", "paediatric", "kid", "boy", "girl",
                     "juvenile"), (None, 18)),
    **dict.fromkeys(("infant", "baby", "newborn", "neonate", "neonatal", "toddler"), (None, 3)),
    **dict.fromkeys(("adolescent", "teenager", "teenage", "teen"), (12, 20)),
}

# Signs of a failed LLM call (or of a refusal) instead of a report.
_FAILED_CALL_PATTERNS = (
    (r"\berror\b", "error"),
    (r"\bexceptions?\b", "exception"),
    (r"traceback", "traceback"),
    (r"rate[\s_-]?limit", "rate limit"),
    (r"\bquota\b", "quota"),
    (r"\bas an ai\b", "as an AI"),
    (r"\bi (?:cannot|can't|can not|am unable|'m unable)\b", "refusal"),
    (r"\b(?:i'm|i am) sorry\b", "apology"),
    (r"\b(?:http|status(?: code)?)\s*[:/]?\s*[1-5]\d\d\b", "HTTP status"),
    (r"\b(?:400|401|403|404|408|429|500|502|503|504)\b", "HTTP status code"),
)
# Also rejected in generated text (a ready-written report column is only checked for the signs above).
_ERROR_PATTERNS = _FAILED_CALL_PATTERNS + (
    (r"^\s*[\[{]|\{\s*\"|<\s*/?\s*(?:html|body|div)\b", "JSON or markup"),
    (r"\b(?:none|nan|null|undefined)\b", "missing-value placeholder"),
    (r"\b(?:train|training|val|validation|test|eval|evaluation)\s+(?:split|set|fold)\b", "mentions a data split"),
)
_MAX_REPORT_CHARS = 1200
# A whole cell that only stands for a missing value ("nan", "None", "null", "N/A", ...), as CSV exports write it.
_PLACEHOLDER = re.compile(
    r"[\s\W_]*(?:nan|none|null|nil|na|n/a|n\.a\.|undefined|missing|empty|unknown|not available|-+)[\s\W_]*",
    re.IGNORECASE,
)


def _value(row: Mapping[str, Any], key: str) -> str | None:
    """The row's value as a stripped string, or None when not recorded ("", None, NaN, "nan", "None")."""
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        if value.is_integer():
            value = int(value)
    text = str(value).strip()
    if text == "" or text.lower() in ("nan", "none", "null", "n/a", "na"):
        return None
    return text


def readable(code: str) -> str:
    """A label / diagnosis code in words: `mitral_regurgitation` -> `mitral regurgitation`."""
    key = code.strip().lower()
    if key in _TERMS:
        return _TERMS[key]
    return re.sub(r"[_\s]+", " ", code.strip()).lower() if not code.isupper() else code.strip()


def _code_terms(code: str) -> list[str]:
    """The words a report must keep for a label / diagnosis code."""
    key = code.strip().lower()
    if key in _FINDING_TERMS:
        return list(_FINDING_TERMS[key])
    return [readable(code)]


def _split_codes(value: str) -> list[str]:
    """`heart_failure+copd` -> [`heart_failure`, `copd`]; `asthma;smoker` -> [`asthma`, `smoker`]."""
    return [part for part in re.split(r"[+;,/]", value) if part.strip()]


def _join(parts: Sequence[str]) -> str:
    parts = list(parts)
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_location(code: str) -> str:
    """
    An auscultation-site code in words.

    HLS-CMDS codes (`LUSB` -> "the left upper sternal border") and the KAUH `surface side level` codes
    (`P R L` -> "the posterior right lower chest") are expanded; a code that is not clear (`P L R`)
    keeps its letters, with the part that is clear (`the posterior chest (site code P L R)`).
    """
    text = code.strip()
    if text.lower() in _SITES:
        return _SITES[text.lower()]
    tokens = text.upper().split()
    if tokens and tokens[0] in _KAUH_SURFACE and all(len(t) == 1 for t in tokens):
        surface, rest = _KAUH_SURFACE[tokens[0]], tokens[1:]
        if not rest:
            return f"the {surface} chest"
        # Side then level ("R L") or level then side ("U R"); "L" is a side first and a level second.
        if len(rest) == 2 and rest[0] in _KAUH_SIDE and rest[1] in _KAUH_LEVEL:
            return f"the {surface} {_KAUH_SIDE[rest[0]]} {_KAUH_LEVEL[rest[1]]} chest"
        if len(rest) == 2 and rest[0] in ("U", "M") and rest[1] in _KAUH_SIDE:
            return f"the {surface} {_KAUH_SIDE[rest[1]]} {_KAUH_LEVEL[rest[0]]} chest"
        return f"the {surface} chest (site code {text})"
    return f"site {text}"


def describe_sound_type(code: str) -> str:
    """KAUH sound-type codes in words: `I C E W` -> "inspiratory crackles and expiratory wheezes"."""
    phrases: list[str] = []
    phases: list[str] = []
    for token in code.strip().split():
        upper = token.upper()
        if upper in _KAUH_PHASES:
            phases.append(_KAUH_PHASES[upper])
        elif upper in _KAUH_SOUNDS:
            phrases.append(" ".join(filter(None, [_join(phases), _KAUH_SOUNDS[upper]])))
            phases = []
        else:
            return f"sound type {code.strip()}"
    if phases or not phrases:
        return f"sound type {code.strip()}"
    return _join(phrases)


def _sound_type_terms(code: str) -> list[str]:
    terms = []
    for token in code.strip().split():
        upper = token.upper()
        if upper in _KAUH_SOUNDS and upper != "N":
            terms.append(_KAUH_SOUNDS[upper].split()[0])  # "wheezes", "crackles", "bronchial", ...
    return terms


def _subject(row: Mapping[str, Any]) -> str:
    age, sex = _value(row, "age"), _value(row, "sex")
    sex = _SEX.get(sex.lower(), sex.lower()) if sex else None
    manikin = "manikin" in (_value(row, "source_dataset") or "").lower()
    noun = "manikin" if manikin else ("patient" if _value(row, "modality") in ("heart", "lung") else "participant")
    if age is not None:
        try:
            age_number = float(age)
            age = str(int(age_number)) if age_number.is_integer() else f"{age_number:g}"
        except ValueError:
            pass
        article = "an" if re.match(r"(8|11|18)(\D|$)|8", age) else "a"  # "an 8-", "an 11-", "an 80-year-old"
        return f"{article} {age}-year-old {sex + ' ' if sex else ''}{noun}"
    if sex:
        return f"a {sex} {noun}"
    return ""


def _findings_sentence(row: Mapping[str, Any]) -> str:
    modality = (_value(row, "modality") or "").lower()
    label, sublabel = _value(row, "label"), _value(row, "sublabel")
    diagnosis, sound_type = _value(row, "diagnosis"), _value(row, "sound_type")
    head = ""
    if label:
        key = label.lower()
        organ = {"heart": "heart sounds", "lung": "lung sounds"}.get(modality, "sounds")
        if modality in ("cough", "breath", "speech"):
            head = f"Recording task: {readable(label)}"
        elif key in ("normal", "abnormal"):
            head = f"{key.capitalize()} {organ}"
        elif key == "artifact":
            head = "Recording dominated by artifact, without interpretable heart sounds"
        elif diagnosis and diagnosis.lower() == key:
            head, diagnosis = f"Diagnosis: {readable(label)}", None  # Yaseen: the label is the diagnosis
        else:
            head = f"Finding: {readable(label)}"
    parts = [head] if head else []
    if sublabel:
        parts.append(f"in a {_SUBLABELS.get(sublabel.lower(), readable(sublabel))}")
    if sound_type:
        parts.append(f"with {describe_sound_type(sound_type)}")
    sentence = " ".join(parts)
    if diagnosis:
        if diagnosis.lower() == "normal":
            diagnoses = "normal (no disease)"
        else:
            diagnoses = _join([readable(code) for code in _split_codes(diagnosis)])
        sentence = f"{sentence}; diagnosis: {diagnoses}" if sentence else f"Diagnosis: {diagnoses}"
    return sentence + "." if sentence else ""


def _context_sentence(row: Mapping[str, Any]) -> str:
    parts = []
    covid = _value(row, "covid_status")
    if covid:
        parts.append(f"COVID-19 status: {_COVID_STATUS.get(covid.lower(), readable(covid))}")
    conditions = _value(row, "conditions")
    if conditions:
        names = [_CONDITIONS.get(c.strip().lower(), readable(c)) for c in _split_codes(conditions)]
        parts.append(f"reported conditions: {_join(names)}")
    quality = _value(row, "quality")
    if quality:
        parts.append(f"audio quality {_QUALITY.get(quality, quality)}")
    if not parts:
        return ""
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _provenance_sentence(row: Mapping[str, Any]) -> str:
    source = _value(row, "source_dataset")
    if not source:
        return ""
    if source in _PROVENANCE:
        return _PROVENANCE[source]
    return f"Recording from the {readable(source)} collection."


def write_report(row: Mapping[str, Any]) -> str:
    """
    A short deterministic clinical report (2-3 sentences) from a metadata row.

    Reads only `REPORT_FIELDS`; empty fields are left out. Example (KAUH):
    "Lung sound recording of a 70-year-old female patient at the posterior right middle chest, taken with
    a 3M Littmann Electronic Stethoscope 3200 in bell mode (low frequencies). Normal lung sounds with
    normal breath sounds; diagnosis: normal (no disease). Clinical recording from hospital patients."

    Args:
        row (`Mapping[str, Any]`): one manifest row.

    Returns:
        `str`: the report; a row with none of the fields gives only "Body sound recording." (which
        `build_reports` refuses).
    """
    modality = (_value(row, "modality") or "").lower()
    noun = _MODALITY_NOUNS.get(modality, f"{readable(modality).capitalize()} sound" if modality else "Body sound")
    first = f"{noun} recording"
    subject = _subject(row)
    if subject:
        first += f" of {subject}"
    location = _value(row, "location")
    if location:
        first += f" at {describe_location(location)}"
    device, filter_mode = _value(row, "device"), _value(row, "filter_mode")
    if device:
        first += f", taken with {'an' if device[0].lower() in 'aeiou' else 'a'} {device}"
    if filter_mode:
        mode = _FILTER_MODES.get(filter_mode.lower(), f"{readable(filter_mode)} mode")
        first += f" in {mode}" if device else f", stethoscope in {mode}"
    first += "."
    second = _findings_sentence(row)
    # Context (COVID status, conditions, quality) and provenance share the third sentence.
    third = " ".join(filter(None, [_context_sentence(row), _provenance_sentence(row)]))
    return " ".join(filter(None, [first, second, third]))


def write_meta_report(row: Mapping[str, Any]) -> str:
    """
    The authors' "meta report" style: `Key: Value, Key: Value, ...` over `REPORT_FIELDS` with values in
    words, empty fields left out.

    Args:
        row (`Mapping[str, Any]`): one manifest row.
    """
    keys = {
        "source_dataset": "Source",
        "modality": "Modality",
        "label": "Label",
        "sublabel": "Sublabel",
        "diagnosis": "Diagnosis",
        "sound_type": "Sound type",
        "location": "Auscultation site",
        "filter_mode": "Stethoscope filter",
        "device": "Device",
        "age": "Age",
        "sex": "Sex",
        "covid_status": "COVID-19 status",
        "conditions": "Conditions",
        "quality": "Audio quality",
    }
    items = []
    for field in REPORT_FIELDS:
        value = _value(row, field)
        if value is None:
            continue
        if field == "location":
            value = re.sub(r"^the ", "", describe_location(value))
        elif field == "sound_type":
            value = describe_sound_type(value)
        elif field == "covid_status":
            value = _COVID_STATUS.get(value.lower(), readable(value))
        elif field == "conditions":
            value = _join([_CONDITIONS.get(c.strip().lower(), readable(c)) for c in _split_codes(value)])
        elif field == "quality":
            value = _QUALITY.get(value, value)
        elif field == "diagnosis":
            value = _join([readable(code) for code in _split_codes(value)])
        elif field == "source_dataset":
            value = _PROVENANCE.get(value, readable(value)).rstrip(".")
        elif field in ("label", "sublabel", "modality", "filter_mode", "sex"):
            value = _SUBLABELS.get(value.lower(), readable(value)) if field == "sublabel" else readable(value)
        if not value[1:2].isupper():  # keep brand spellings such as "iStethoscope"
            value = value[0].upper() + value[1:]
        items.append(f"{keys[field]}: {value}")
    return ", ".join(items)


def findings(row: Mapping[str, Any]) -> list[str]:
    """
    Key terms every valid report of `row` must mention: modality, label, diagnosis, adventitious sound
    types, "noisy" for noisy recordings, COVID-19 status and reported conditions.

    Args:
        row (`Mapping[str, Any]`): one manifest row.
    """
    terms: list[str] = []
    modality = _value(row, "modality")
    if modality:
        terms.append(modality.lower())
    label = _value(row, "label")
    if label:
        terms.extend(_code_terms(label))
    if _value(row, "sublabel") and "noisy" in _value(row, "sublabel").lower():
        terms.append("noisy")
    diagnosis = _value(row, "diagnosis")
    if diagnosis:
        for code in _split_codes(diagnosis):
            terms.extend(_code_terms(code))
    sound_type = _value(row, "sound_type")
    if sound_type:
        terms.extend(_sound_type_terms(sound_type))
    covid = _value(row, "covid_status")
    if covid:
        terms.extend(_COVID_FINDINGS.get(covid.lower(), [readable(covid)]))
    conditions = _value(row, "conditions")
    if conditions:
        terms.extend(_CONDITIONS.get(c.strip().lower(), readable(c)) for c in _split_codes(conditions))
    unique: dict[str, None] = {}
    for term in terms:
        unique.setdefault(term, None)
    return list(unique)


def _stem(word: str) -> str:
    lowered = word.lower()
    for suffix in ("ing", "es", "s", "e"):
        if lowered.endswith(suffix) and len(lowered) - len(suffix) >= 4:
            return lowered[: -len(suffix)]
    return lowered


@functools.lru_cache(maxsize=None)
def _term_pattern(term: str) -> re.Pattern:
    """Word-start match tolerant to plural / -ing forms and to spaces vs hyphens between words."""
    words = re.findall(r"[\w/]+", term)
    if not words:
        return re.compile(re.escape(term), re.IGNORECASE)
    body = r"[\s\-]+(?:\(\w+\)[\s\-]+)?".join(re.escape(_stem(word)) + r"\w*" for word in words)
    return re.compile(r"(?<![\w/])" + body, re.IGNORECASE)


def mentions(text: str, term: str) -> bool:
    """Whether `text` mentions `term` (case-insensitive, plural / -ing tolerant)."""
    return _term_pattern(term).search(text) is not None


_Token = tuple[str, int, int]  # (lower-cased word, start, end)


def _tokens(text: str) -> list[_Token]:
    return [(m.group(0).lower(), m.start(), m.end()) for m in re.finditer(r"[A-Za-z0-9]+", text)]


def _chunk(text: str, start: int, end: int, words_after: int = 0) -> str:
    """The whitespace-delimited piece of `text` around `text[start:end]` and `words_after` more words."""
    left = text.rfind(" ", 0, start) + 1
    right = text.find(" ", end)
    for _ in range(words_after):
        if right < 0:
            break
        right = text.find(" ", right + 1)
    right = len(text) if right < 0 else right
    return text[left:right].strip(" .,;:()")


def _finding_phrases(text: str) -> list[tuple[str, frozenset, str]]:
    """
    Each mention of a `_FINDING_VOCABULARY` term with the qualifiers written right before it:
    "grade IV/VI holosystolic murmur" -> ("murmur", {grade, number 4, number 6, holosystolic}, the phrase).
    """
    tokens = _tokens(text)
    phrases = []
    for term in _FINDING_VOCABULARY:
        for match in _term_pattern(term).finditer(text):
            index = next((i for i, (_, s, _e) in enumerate(tokens) if s >= match.start()), len(tokens))
            concepts, start = set(), match.start()
            for word, word_start, word_end in reversed(tokens[:index]):
                if not re.fullmatch(r"[\s\-/]*", text[word_end:start]):
                    break
                if word in _QUALIFIER_OF:
                    if _QUALIFIER_OF[word] not in _REPORT_WIDE_QUALIFIERS:
                        concepts.add(_QUALIFIER_OF[word])
                elif word in _ROMAN or word.isdigit():
                    concepts.add(f"number {_ROMAN.get(word, word)}")
                else:
                    break
                start = word_start
            phrases.append((term, frozenset(concepts), text[start : match.end()]))
    return phrases


def _negated_terms(text: str) -> list[tuple[str, str]]:
    """Finding terms negated in `text` ("no murmur", "without any wheezes", "crackles are absent"), with the clause."""
    negated = []
    present = [term for term in _FINDING_VOCABULARY if _term_pattern(term).search(text)]
    for clause in re.split(r"[.;:,!?()]|\bbut\b", text):
        tokens = _tokens(clause)
        clause_wide = any(w in ("absent", "absence") for w, _, _ in tokens) or re.search(
            r"\bnot\s+(?:be\s+)?(?:heard|present|detected|appreciated|audible|seen|identified|noted|found)\b",
            clause, re.IGNORECASE,
        )
        for term in present:
            for match in _term_pattern(term).finditer(clause):
                before = [w for w, _, end in tokens if end <= match.start()][-4:]
                if clause_wide or any(w in _NEGATIONS for w in before):
                    negated.append((term, clause.strip()))
    return negated


def _numbers(text: str) -> list[tuple[str, str]]:
    """Numbers in `text` as (normalised value, the text around it): digits, grades such as IV/VI, number words."""
    found = []
    for match in re.finditer(r"(?<![A-Za-z])\d+(?:\.\d+)?", text):
        found.append((f"{float(match.group(0)):g}", _chunk(text, match.start(), match.end())))
    for match in re.finditer(r"\b(II|III|IV|V|VI)\b|\b([ivIV]{1,3}|[vV][iI]?)\s*/\s*(?=(?:vi|VI|6)\b)", text):
        roman = (match.group(1) or match.group(2)).lower()
        if roman in _ROMAN:
            found.append((str(_ROMAN[roman]), _chunk(text, match.start(), match.end())))
    for match in re.finditer(r"/\s*(vi|VI)\b", text):
        found.append(("6", _chunk(text, match.start(), match.end())))
    for word, start, end in _tokens(text):
        if word in _NUMBER_WORDS:
            found.append((word, _chunk(text, start, end)))
    return found


def _unsupported(text: str, row: Mapping[str, Any], template: str) -> str | None:
    """Why `text` says something that `template` and the row's metadata do not support, or `None`."""
    # 1. Finding terms and the qualifiers written before them: each phrase of the rewrite must be a phrase of the
    #    template, or the template's phrase with qualifiers left out ("systolic murmur" for "early systolic murmur").
    for term in _FINDING_VOCABULARY:
        if mentions(text, term) and not mentions(template, term):
            return f"invented finding: {term!r}"
    template_phrases: dict[str, list[frozenset]] = {}
    for term, concepts, _ in _finding_phrases(template):
        template_phrases.setdefault(term, []).append(concepts)
    for term, concepts, phrase in _finding_phrases(text):
        if not any(concepts <= known for known in template_phrases.get(term, [])):
            return f"invented finding: {phrase!r} (not supported by the template)"
    # 2. Qualifier words anywhere ("murmur at the apex", "wheezes on expiration") and disease-like words.
    template_words = {word for word, _, _ in _tokens(template)}
    template_concepts = {_QUALIFIER_OF[word] for word in template_words if word in _QUALIFIER_OF}
    for word, start, end in _tokens(text):
        if word in _QUALIFIER_OF and _QUALIFIER_OF[word] not in template_concepts:
            return f"invented finding: qualifier {word!r} in {_chunk(text, start, end, 2)!r} (not in the template)"
        if _DISEASE_WORD.fullmatch(word) and word not in _NOT_DISEASE_WORDS and word not in template_words:
            return f"invented finding: {word!r} (not in the template)"
    # 3. Negation: "no murmur" / "wheezes are absent" only where the template negates the same finding.
    template_negated = Counter(term for term, _ in _negated_terms(template))
    text_negated = Counter(term for term, _ in _negated_terms(text))
    for term, clause in _negated_terms(text):
        if term not in template_negated:
            return f"invented finding: {term!r} negated in {clause!r}"
    # ... and the other way round: a term the template negates ("no disease") may not be stated as present more
    # often than the template states it ("a heart valve disease collection" does not license "a patient with
    # heart valve disease").
    for term, negated in template_negated.items():
        stated_in_template = len(_term_pattern(term).findall(template)) - negated
        stated = len(_term_pattern(term).findall(text)) - text_negated[term]
        if stated > stated_in_template:
            return (f"invented finding: {term!r} stated as present {stated} time(s), but the template negates it and "
                    f"states it {stated_in_template} time(s)")
    # 4. Age and sex must be the row's.
    age = _value(row, "age")
    try:
        age_number = float(age) if age is not None else None
    except ValueError:
        age_number = None
    for match in re.finditer(
        r"(\d+(?:\.\d+)?)\s*-?\s*(?:years?|yrs?|y/o|yo)\b(?:[\s-]*old\b)?"
        r"|\bage[ds]?\s*(?:of\s*)?:?\s*(\d+(?:\.\d+)?)",
        text,
        re.IGNORECASE,
    ):
        said = float(match.group(1) or match.group(2))
        if age_number is None or said != age_number:
            return f"wrong age: {match.group(0)!r} but the row's age is {age if age is not None else 'not recorded'}"
    words = _tokens(text)
    middle_aged = [(m.start(), m.end(), (40, 65)) for m in re.finditer(r"\bmiddle[\s-]aged\b", text, re.I)]
    for start, end, (low, high) in middle_aged + [(s, e, _AGE_WORDS[w]) for w, s, e in words if w in _AGE_WORDS]:
        if age_number is None or (low is not None and age_number < low) or (high is not None and age_number >= high):
            return (
                f"wrong age: {text[start:end]!r} but the row's age is {age if age is not None else 'not recorded'}"
            )
    sex = _value(row, "sex")
    sex = _SEX.get(sex.lower(), sex.lower()) if sex else None
    for word, start, end in words:
        if word in _SEX_OF and _SEX_OF[word] != sex:
            return f"wrong sex: {text[start:end]!r} but the row's sex is {sex or 'not recorded'}"
    # 5. Every other number (grades such as IV/VI, counts, durations) must be one of the template's.
    template_numbers = {value for value, _ in _numbers(template)}
    for value, where in _numbers(text):
        if value not in template_numbers:
            return f"unsupported number: {where!r} (the template has no {value})"
    return None


def validate_report(text: str | None, row: Mapping[str, Any], *, template: str | None = None) -> str | None:
    """
    Why `text` is not a valid report of `row`, or `None` when it is.

    Rejected: empty text; text over 1,200 characters; text that looks like an error from a failed LLM call
    (error / exception / traceback / rate limit / "as an AI" / "I cannot" / HTTP codes / JSON or HTML);
    placeholders such as "None" or "nan"; mention of a data split or of the audio file name; a dropped
    term of `findings(row)`; and anything the template and the row do not support, checked conservatively
    (when unsure, reject: the template is always a safe fallback):

    - a finding term (`_FINDING_VOCABULARY`: murmur, stenosis, fibrillation, COPD, ...) the template does not
      mention, or a disease-like word (-itis, -osis, -pathy, ...) that is not in the template;
    - a finding phrase whose qualifiers written before the term (valve / chamber, timing such as early / late /
      systolic / holosystolic, phase, severity, grade such as IV/VI, site) are not those of a phrase of the
      template with that term: "aortic stenosis" for "mitral stenosis", "late diastolic murmur" for "early
      systolic murmur" (leaving qualifiers out is allowed: "systolic murmur");
    - a qualifier word anywhere ("at the apex", "severe") whose concept the template does not use;
    - a finding negated ("no murmur", "wheezes are absent") that the template does not negate;
    - an age ("25-year-old", "aged 25") other than the row's, an age word ("elderly", "child") that does not fit
      the row's age, a sex word (male, woman, he, her, ...) other than the row's sex (or any when not recorded);
    - any other number (digits, grades such as IV/VI, number words) that is not in the template.

    The reason names the phrase, word or number that is not supported.

    Args:
        text (`str`): the candidate report.
        row (`Mapping[str, Any]`): the manifest row it describes.
        template (`str`, *optional*): the row's template; computed with `write_report` when not given.

    Returns:
        `str | None`: a reason of the form `"<kind>: <detail>"`, or `None`.
    """
    if text is None or not str(text).strip():
        return "empty: no text"
    text = str(text)
    if len(text) > _MAX_REPORT_CHARS:
        return f"too long: {len(text)} characters"
    for pattern, name in _ERROR_PATTERNS:
        match = re.search(pattern, text, re.IGNORECASE | re.MULTILINE)
        if match:
            return f"error-like text: {name} ({match.group(0).strip()!r})"
    for key in ("file", "path", "audio", "source_path"):
        value = _value(row, key)
        if value:
            stem = Path(value.replace("\\", "/").split("::")[-1]).stem
            if len(stem) >= 4 and stem.lower() in text.lower():
                return f"leaks the file name: {stem!r}"
    for term in findings(row):
        if not mentions(text, term):
            return f"missing finding: {term!r}"
    template = write_report(row) if template is None else template
    return _unsupported(text, row, template)


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


DEFAULT_REWRITE_PROMPT = (
    "Rewrite the following findings of a body-sound recording as 2 to 3 sentences of clinical prose. "
    "Keep every finding, diagnosis and number exactly as given. Do not add any finding, diagnosis, "
    "measurement or recommendation that is not in the text.\n\n"
    "Findings: {template}\n\n"
    "Report:"
)


class LLMReportRewriter:
    """
    Rephrase template reports with a local causal LM through a transformers `text-generation` pipeline.

    Each rewrite is checked with [`validate_report`]; an invalid one (empty, error text, dropped or invented
    finding, ...) is replaced by its template, and the reasons are counted. Decoding is greedy by default,
    so the same model gives the same reports.

    Args:
        model (`str`, `os.PathLike` or callable): a local model folder / Hub id (loaded with
            `pipeline("text-generation", model=...)`) or a ready pipeline (any callable with the pipeline's
            call signature: a list of prompts in, a list of `[{"generated_text": ...}]` out).
        prompt (`str`, *optional*): prompt with a `{template}` placeholder.
        max_new_tokens (`int`, *optional*, defaults to 96): generation budget per report.
        batch_size (`int`, *optional*, defaults to 8): prompts per pipeline call.
        generate_kwargs (`dict`, *optional*): extra generation arguments (e.g. `{"do_sample": True}`).
        device (`str` or `int`, *optional*): device for a pipeline built here.
    """

    def __init__(
        self,
        model: Any,
        *,
        prompt: str = DEFAULT_REWRITE_PROMPT,
        max_new_tokens: int = 96,
        batch_size: int = 8,
        generate_kwargs: Mapping[str, Any] | None = None,
        device: str | int | None = None,
    ) -> None:
        if "{template}" not in prompt:
            raise ValueError("prompt must contain a {template} placeholder.")
        if callable(model) and not isinstance(model, (str, Path)):
            self.pipeline = model
        elif isinstance(model, (str, Path)):
            from transformers import pipeline

            self.pipeline = pipeline("text-generation", model=str(model), device=device)
        else:
            raise TypeError(
                f"model must be a model path / id or a text-generation pipeline, got {type(model).__name__}."
            )
        tokenizer = getattr(self.pipeline, "tokenizer", None)
        if tokenizer is not None:
            if tokenizer.pad_token is None and tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token  # batching needs a pad token
            tokenizer.padding_side = "left"  # decoder-only models continue from the right end
        self.prompt = prompt
        self.batch_size = batch_size
        self.generate_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "return_full_text": False}
        self.generate_kwargs.update(generate_kwargs or {})

    def build_prompt(self, template: str) -> str:
        return self.prompt.format(template=template)

    @staticmethod
    def _extract_text(output: Any) -> str:
        """The generated text from one pipeline output (a dict, a list of dicts, or a string)."""
        if isinstance(output, list):
            output = output[0] if output else ""
        if isinstance(output, Mapping):
            output = output.get("generated_text", "")
        if isinstance(output, list):  # chat format: a list of messages
            output = output[-1].get("content", "") if output and isinstance(output[-1], Mapping) else ""
        text = str(output).strip()
        text = re.sub(r"^\s*report\s*:\s*", "", text, flags=re.IGNORECASE)
        return text.split("\n\n", 1)[0].strip()  # the model may go on with another prompt

    def generate(self, templates: Sequence[str]) -> list[str | Exception]:
        """Raw rewrites of `templates`; a failed pipeline call gives the exception for each of its items."""
        results: list[str | Exception] = []
        for start in range(0, len(templates), self.batch_size):
            batch = [self.build_prompt(t) for t in templates[start : start + self.batch_size]]
            try:
                outputs = self.pipeline(batch, batch_size=len(batch), **self.generate_kwargs)
                if len(outputs) != len(batch):
                    raise ValueError(f"pipeline returned {len(outputs)} outputs for {len(batch)} prompts")
                results.extend(self._extract_text(output) for output in outputs)
            except Exception as error:  # noqa: BLE001 - any failure of the LM must fall back, not crash or leak
                logger.warning("report rewrite failed for %d prompts: %s", len(batch), error)
                results.extend([error] * len(batch))
        return results

    def rewrite_all(
        self, rows: Sequence[Mapping[str, Any]], templates: Sequence[str]
    ) -> tuple[list[str], dict[str, Any]]:
        """
        Rewrite and validate every template; invalid rewrites fall back to the template.

        Args:
            rows (`Sequence[Mapping[str, Any]]`): manifest rows.
            templates (`Sequence[str]`): their template reports (`write_report(row)`).

        Returns:
            `(reports, stats)`: `stats` has `"accepted"`, `"fallback"` and `"fallback_reasons"` (count per
            kind of reason, e.g. `"missing finding"`, `"error-like text"`, `"generation failed"`).
        """
        if len(rows) != len(templates):
            raise ValueError(f"{len(rows)} rows but {len(templates)} templates.")
        reports: list[str] = []
        reasons: Counter = Counter()
        for row, template, rewrite in zip(rows, templates, self.generate(list(templates))):
            reason = (
                f"generation failed: {type(rewrite).__name__}"
                if isinstance(rewrite, Exception)
                else validate_report(rewrite, row, template=template)
            )
            if reason is None:
                reports.append(rewrite)
            else:
                reasons[_reason_kind(reason)] += 1
                reports.append(template)
        stats = {
            "total": len(reports),
            "accepted": len(reports) - sum(reasons.values()),
            "fallback": sum(reasons.values()),
            "fallback_reasons": dict(reasons),
        }
        return reports, stats


def build_reports(
    manifest: Any,
    report_column: str | None = None,
    rewriter: LLMReportRewriter | Callable | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """
    One report per manifest row.

    A ready-written report column (`report_column`, else `manifest.report_column`) is used as it is, after
    checking that no cell is empty, a missing-value placeholder ("nan", "None", "null", "N/A", ...), without any
    word, or looks like an error message (all offending rows are listed). Without
    one, reports are templates (`write_report`), optionally rewritten by `rewriter`.

    Args:
        manifest ([`~acula_train.manifest.Manifest`]): the rows.
        report_column (`str`, *optional*): column with ready-written reports.
        rewriter ([`LLMReportRewriter`], *optional*): rewrites templates; ignored with a report column.

    Returns:
        `(reports, stats)`: `stats["source"]` is `"column"`, `"template"` or `"rewrite"`.
    """
    column = report_column or getattr(manifest, "report_column", None)
    rows = list(manifest.rows)
    if column is not None:
        problems = []
        reports = []
        for i, row in enumerate(rows):
            if column not in row:
                raise ValueError(f"{manifest.describe_row(i)}: no report column {column!r}.")
            text = row[column]
            text = "" if text is None or (isinstance(text, float) and text != text) else str(text)
            if not text.strip():
                problems.append(f"{manifest.describe_row(i)}: empty report in column {column!r}")
            elif _PLACEHOLDER.fullmatch(text):
                problems.append(
                    f"{manifest.describe_row(i)}: report in column {column!r} is a missing-value placeholder "
                    f"({text.strip()!r}), not a report"
                )
            elif not re.search(r"[^\W\d_]", text):
                problems.append(
                    f"{manifest.describe_row(i)}: report in column {column!r} has no words ({text.strip()!r})"
                )
            else:
                error_like = next(
                    (name for pattern, name in _FAILED_CALL_PATTERNS if re.search(pattern, text, re.IGNORECASE)),
                    None,
                )
                if error_like:
                    problems.append(f"{manifest.describe_row(i)}: report looks like an error message ({error_like})")
            reports.append(text.strip())
        if problems:
            raise ValueError(f"{len(problems)} invalid report(s):\n  " + "\n  ".join(problems))
        return reports, {"source": "column", "total": len(reports), "accepted": len(reports), "fallback": 0}
    templates = [write_report(row) for row in rows]
    # A row with none of the fields would get the bare "Body sound recording.": refuse it rather than align to that.
    empty = [
        manifest.describe_row(i)
        for i, (row, text) in enumerate(zip(rows, templates))
        if not text.strip() or not any(_value(row, name) is not None for name in REPORT_FIELDS)
    ]
    if empty:
        raise ValueError("rows without any report field (modality, label, ...): " + "; ".join(empty))
    if rewriter is None:
        return templates, {"source": "template", "total": len(templates), "accepted": len(templates), "fallback": 0}
    reports, stats = rewriter.rewrite_all(rows, templates)
    return reports, {"source": "rewrite", **stats}
