"""Clinical text for recordings: templated reports from metadata, validation, optional LLM rewrite.

AcuLa aligns audio embeddings with a frozen text teacher's embeddings of one short clinical report
per recording. `write_report` renders the metadata of a row as 2-3 deterministic sentences, in the words of
the source datasets' vocabulary files (`vocab/*.json`, see `report_validation`);
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

from .report_validation import (
    FAILED_CALL_PATTERNS,
    ReportVocabulary,
    check_report,
    mentions,
    term_pattern,
    vocabulary,
)
from .report_validation import cell_value as _value

__all__ = [
    "DEFAULT_REWRITE_PROMPT", "FINDINGS_FIELDS", "REPORT_FIELDS", "LLMReportRewriter", "build_reports",
    "clinical_terms", "describe_location", "describe_sound_type", "findings", "mentions", "readable",
    "resolve_report_fields", "validate_report", "write_meta_report", "write_report",
]

logger = logging.getLogger(__name__)

# A murmur labelled per patient with its sites and descriptors (CirCor), in the order the meta report lists them.
MURMUR_FIELDS = (
    "murmur_at_site", "murmur_locations", "most_audible_location",
    *(f"{phase}_murmur_{field}" for phase in ("systolic", "diastolic")
      for field in ("timing", "shape", "grading", "pitch", "quality")),
)
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
    "age_group",
    "sex",
    "pregnancy",
    "covid_status",
    "conditions",
    "quality",
    *MURMUR_FIELDS,
)

# The clinical findings alone (`--report_fields findings`): what was heard or diagnosed, without the subject (age,
# sex, pregnancy), the site, the device or the source, which the templates otherwise also describe. `modality` stays
# so that a report still names the sound it describes.
FINDINGS_FIELDS = (
    "modality", "label", "sublabel", "diagnosis", "sound_type", "covid_status", "conditions", *MURMUR_FIELDS,
)

# A whole cell that only stands for a missing value ("nan", "None", "null", "N/A", ...), as CSV exports write it.
_PLACEHOLDER = re.compile(
    r"[\s\W_]*(?:nan|none|null|nil|na|n/a|n\.a\.|undefined|missing|empty|unknown|not available|-+)[\s\W_]*",
    re.IGNORECASE,
)


def _table(section: str) -> Mapping[str, Any]:
    """A code table of the vocabulary files (`"words"`, `"sites"`, `"sounds"`, ...)."""
    return vocabulary().tables[section]


def readable(code: str) -> str:
    """A label / diagnosis code in words: `mitral_regurgitation` -> `mitral regurgitation`."""
    key = code.strip().lower()
    words = _table("words")
    if key in words:
        return words[key]
    return re.sub(r"[_\s]+", " ", code.strip()).lower() if not code.isupper() else code.strip()


def _code_terms(code: str) -> list[str]:
    """The words a report must keep for a label / diagnosis code."""
    key = code.strip().lower()
    finding_words = _table("finding_words")
    if key in finding_words:
        return list(finding_words[key])
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
    sites = _table("sites")
    if text.lower() in sites:
        return sites[text.lower()]
    tokens = text.upper().split()
    surfaces, sides, levels = _table("location_surface"), _table("location_side"), _table("location_level")
    if tokens and tokens[0] in surfaces and all(len(t) == 1 for t in tokens):
        surface, rest = surfaces[tokens[0]], tokens[1:]
        if not rest:
            return f"the {surface} chest"
        # Side then level ("R L") or level then side ("U R"); "L" is a side first and a level second.
        if len(rest) == 2 and rest[0] in sides and rest[1] in levels:
            return f"the {surface} {sides[rest[0]]} {levels[rest[1]]} chest"
        if len(rest) == 2 and rest[0] in ("U", "M") and rest[1] in sides:
            return f"the {surface} {sides[rest[1]]} {levels[rest[0]]} chest"
        return f"the {surface} chest (site code {text})"
    return f"site {text}"


def describe_sound_type(code: str) -> str:
    """KAUH sound-type codes in words: `I C E W` -> "inspiratory crackles and expiratory wheezes"."""
    phase_words, sounds = _table("sound_phases"), _table("sounds")
    phrases: list[str] = []
    phases: list[str] = []
    for token in code.strip().split():
        upper = token.upper()
        if upper in phase_words:
            phases.append(phase_words[upper])
        elif upper in sounds:
            phrases.append(" ".join(filter(None, [_join(phases), sounds[upper]])))
            phases = []
        else:
            return f"sound type {code.strip()}"
    if phases or not phrases:
        return f"sound type {code.strip()}"
    return _join(phrases)


def _sound_type_terms(code: str) -> list[str]:
    sounds = _table("sounds")
    terms = []
    for token in code.strip().split():
        upper = token.upper()
        if upper in sounds and upper != "N":
            terms.append(sounds[upper].split()[0])  # "wheezes", "crackles", "bronchial", ...
    return terms


def _subject(row: Mapping[str, Any]) -> str:
    age, sex = _value(row, "age"), _value(row, "sex")
    sex = _table("sex").get(sex.lower(), sex.lower()) if sex else None
    if (_value(row, "pregnancy") or "").lower() == "true":
        return "a pregnant patient"
    group = _value(row, "age_group")
    if age is None and group:  # an age group instead of an age (CirCor): "a female child"
        words = _table("age_groups").get(group.lower(), {}).get("words", group.lower())
        phrase = f"{sex} {words}" if sex else words
        return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"
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
        parts.append(f"in a {_table('sublabels').get(sublabel.lower(), readable(sublabel))}")
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


def _murmur_description(row: Mapping[str, Any], phase: str) -> str:
    """`holosystolic, plateau-shaped, grade III/VI, high-pitched, harsh murmur` from a row's `<phase>_murmur_*`
    descriptors ("" when the row has none of them)."""
    timing, shape, grading, pitch, quality = (
        _value(row, f"{phase}_murmur_{field}") for field in ("timing", "shape", "grading", "pitch", "quality")
    )
    if not any((timing, shape, grading, pitch, quality)):
        return ""
    words = [_table("murmur_timings").get(timing.lower(), timing.lower()) if timing else phase]
    if shape:
        words.append(_table("murmur_shapes").get(shape.lower(), shape.lower()))
    if grading:
        words.append(f"grade {grading}")
    if pitch:
        words.append(_table("murmur_pitches").get(pitch.lower(), f"{pitch.lower()}-pitched"))
    if quality:
        words.append(_table("murmur_qualities").get(quality.lower(), quality.lower()))
    return ", ".join(words) + " murmur"


def _sites(codes: str) -> str:
    """`AV+MV` -> "the aortic valve area and the mitral valve area"."""
    return _join([describe_location(code) for code in _split_codes(codes)])


def _murmur_sentence(row: Mapping[str, Any]) -> str:
    """The murmur at the recording's own site (`murmur_at_site`), with the patient's murmur descriptors."""
    at_site = (_value(row, "murmur_at_site") or "").lower()
    if at_site == "absent":
        return "No murmur heard (murmur absent)."
    if at_site == "unknown":
        return "Murmur status not determined: the annotators could not tell whether a murmur is present."
    murmurs = _join([text for text in (_murmur_description(row, "systolic"), _murmur_description(row, "diastolic"))
                     if text]) or "murmur"
    locations, loudest = _value(row, "murmur_locations"), _value(row, "most_audible_location")
    heard = f" heard at {_sites(locations)}" if locations else ""
    loudest_part = f"; most audible at {describe_location(loudest)}" if loudest else ""
    if at_site == "here":
        return f"Murmur heard at this site: {murmurs}{loudest_part}."
    if at_site == "elsewhere":
        article = "an" if murmurs[0] in "aeiou" else "a"
        return f"No murmur heard at this site; the patient has {article} {murmurs}{heard}{loudest_part}."
    raise ValueError(f"murmur_at_site must be here, elsewhere, absent or unknown, got {at_site!r}.")


def _context_sentence(row: Mapping[str, Any]) -> str:
    parts = []
    covid = _value(row, "covid_status")
    if covid:
        parts.append(f"COVID-19 status: {_table('covid_status').get(covid.lower(), readable(covid))}")
    conditions = _value(row, "conditions")
    if conditions:
        names = [_table("conditions").get(c.strip().lower(), readable(c)) for c in _split_codes(conditions)]
        parts.append(f"reported conditions: {_join(names)}")
    quality = _value(row, "quality")
    if quality:
        parts.append(f"audio quality {_table('quality').get(quality, quality)}")
    if not parts:
        return ""
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _provenance_sentence(row: Mapping[str, Any]) -> str:
    source = _value(row, "source_dataset")
    if not source:
        return ""
    provenance = vocabulary().provenance
    if source in provenance:
        return provenance[source]
    return f"Recording from the {readable(source)} collection."


def _only_fields(row: Mapping[str, Any], fields: tuple[str, ...]) -> Mapping[str, Any]:
    """The row cut down to resolved report `fields` (the row itself when they are every report field)."""
    return row if fields == REPORT_FIELDS else {name: row[name] for name in fields if name in row}


def write_report(row: Mapping[str, Any], fields: Sequence[str] | None = None) -> str:
    """
    A short deterministic clinical report (2-3 sentences) from a metadata row.

    Reads only `REPORT_FIELDS` (or `fields`); empty fields are left out. Example (KAUH):
    "Lung sound recording of a 70-year-old female patient at the posterior right middle chest, taken with
    a 3M Littmann Electronic Stethoscope 3200 in bell mode (low frequencies). Normal lung sounds with
    normal breath sounds; diagnosis: normal (no disease). Clinical recording from hospital patients."

    Args:
        row (`Mapping[str, Any]`): one manifest row.
        fields (`Sequence[str]`, *optional*): read only these fields (`resolve_report_fields`: names or `findings`),
            as a run trained with `--report_fields` wrote its reports; default: every report field.

    Returns:
        `str`: the report; a row with none of the fields gives only "Body sound recording." (which
        `build_reports` refuses).
    """
    if fields is not None:
        row = _only_fields(row, resolve_report_fields(fields))
    modality = (_value(row, "modality") or "").lower()
    default_noun = f"{readable(modality).capitalize()} sound" if modality else "Body sound"
    noun = _table("modality_nouns").get(modality, default_noun)
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
        mode = _table("filter_modes").get(filter_mode.lower(), f"{readable(filter_mode)} mode")
        first += f" in {mode}" if device else f", stethoscope in {mode}"
    first += "."
    second = " ".join(filter(None, [_findings_sentence(row),
                                    _murmur_sentence(row) if _value(row, "murmur_at_site") else ""]))
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
        "age_group": "Age group",
        "sex": "Sex",
        "pregnancy": "Pregnant",
        "covid_status": "COVID-19 status",
        "conditions": "Conditions",
        "quality": "Audio quality",
        "murmur_at_site": "Murmur at this site",
        "murmur_locations": "Murmur locations",
        "most_audible_location": "Most audible location",
        **{field: field.replace("_murmur_", " murmur ").replace("_", " ").capitalize() for field in MURMUR_FIELDS[3:]},
    }
    at_site_words = {"here": "Present", "elsewhere": "Absent (heard at other sites)", "absent": "Absent",
                     "unknown": "Unknown"}
    items = []
    for field in REPORT_FIELDS:
        value = _value(row, field)
        if value is None:
            continue
        if field == "pregnancy":
            if value.lower() != "true":
                continue
            value = "yes"
        if field == "murmur_at_site":
            value = at_site_words.get(value.lower(), value)
        elif field in ("murmur_locations", "most_audible_location"):
            value = " + ".join(re.sub(r"^the ", "", describe_location(code)) for code in _split_codes(value))
        elif field == "location":
            value = re.sub(r"^the ", "", describe_location(value))
        elif field == "sound_type":
            value = describe_sound_type(value)
        elif field == "covid_status":
            value = _table("covid_status").get(value.lower(), readable(value))
        elif field == "conditions":
            value = _join([_table("conditions").get(c.strip().lower(), readable(c)) for c in _split_codes(value)])
        elif field == "quality":
            value = _table("quality").get(value, value)
        elif field == "diagnosis":
            value = _join([readable(code) for code in _split_codes(value)])
        elif field == "source_dataset":
            value = vocabulary().provenance.get(value, readable(value)).rstrip(".")
        elif field in ("label", "sublabel", "modality", "filter_mode", "sex"):
            value = _table("sublabels").get(value.lower(), readable(value)) if field == "sublabel" else readable(value)
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
    if _value(row, "murmur_at_site"):
        terms.append("murmur")
    covid = _value(row, "covid_status")
    if covid:
        terms.extend(_table("covid_findings").get(covid.lower(), [readable(covid)]))
    conditions = _value(row, "conditions")
    if conditions:
        terms.extend(_table("conditions").get(c.strip().lower(), readable(c)) for c in _split_codes(conditions))
    unique: dict[str, None] = {}
    for term in terms:
        unique.setdefault(term, None)
    return list(unique)


@functools.lru_cache(maxsize=4)
def _clinical_terms(vocab: ReportVocabulary) -> tuple[str, ...]:
    terms = list(vocab.shared_terms)
    for columns in vocab.codes.values():
        for column, codes in columns.items():
            for code in codes:
                terms.extend(findings({column: code}))
    # A qualifier ("normal", "healthy") is checked as a qualifier; a term with the pattern of one before it
    # ("wheezing" after "wheez") adds nothing.
    unique: dict[str, str] = {}
    for term in terms:
        if term.lower() not in vocab.qualifier_of:
            unique.setdefault(term_pattern(term).pattern, term)
    return tuple(unique.values())


def clinical_terms() -> tuple[str, ...]:
    """
    The clinical terms a rewrite may only use where its template does: the shared terms of the vocabulary
    files, then the finding words (`findings`) of every code that a source's file lists, qualifiers left out.
    """
    return _clinical_terms(vocabulary())


def validate_report(text: str | None, row: Mapping[str, Any], *, template: str | None = None) -> str | None:
    """
    Why `text` is not a valid report of `row`, or `None` when it is.

    Rejected: empty text; text over 1,200 characters; text that looks like an error from a failed LLM call
    (error / exception / traceback / rate limit / "as an AI" / "I cannot" / HTTP codes / JSON or HTML);
    placeholders such as "None" or "nan"; mention of a data split or of the audio file name; a dropped
    term of `findings(row)`; and anything the template and the row do not support, checked conservatively
    (when unsure, reject: the template is always a safe fallback):

    - a clinical term (`clinical_terms()`: murmur, stenosis, fibrillation, COPD, the findings of every source's
      codes, ...) the template does not mention, or a disease-like word (-itis, -osis, -pathy, ...) that is not in
      the template;
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
    template = write_report(row) if template is None else template
    return check_report(text, row, template=template, required=findings(row), terms=clinical_terms())


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


def resolve_report_fields(names: Sequence[str] | None) -> tuple[str, ...]:
    """
    The report fields that `--report_fields` names, in `REPORT_FIELDS` order.

    Args:
        names (`Sequence[str]`, *optional*): field names of `REPORT_FIELDS`, or `findings` for `FINDINGS_FIELDS`;
            `None` or empty: every report field.

    Returns:
        `tuple[str, ...]`: the fields.

    Raises:
        `ValueError`: a name that is not a report field, listing the ones there are.
    """
    if not names:
        return REPORT_FIELDS
    chosen: set[str] = set()
    for name in names:
        if name == "findings":
            chosen.update(FINDINGS_FIELDS)
        elif name in REPORT_FIELDS:
            chosen.add(name)
        else:
            raise ValueError(f"--report_fields: {name!r} is not a report field; the fields are 'findings' or any of "
                             f"{', '.join(REPORT_FIELDS)}.")
    return tuple(field for field in REPORT_FIELDS if field in chosen)


def build_reports(
    manifest: Any,
    report_column: str | None = None,
    rewriter: LLMReportRewriter | Callable | None = None,
    fields: Sequence[str] | None = None,
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
        fields (`Sequence[str]`, *optional*): the only fields the templates read (`resolve_report_fields`); default:
            every report field. A row left without any of them is refused like a row without any report field.

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
                    (name for pattern, name in FAILED_CALL_PATTERNS if re.search(pattern, text, re.IGNORECASE)),
                    None,
                )
                if error_like:
                    problems.append(f"{manifest.describe_row(i)}: report looks like an error message ({error_like})")
            reports.append(text.strip())
        if problems:
            raise ValueError(f"{len(problems)} invalid report(s):\n  " + "\n  ".join(problems))
        return reports, {"source": "column", "total": len(reports), "accepted": len(reports), "fallback": 0}
    fields = resolve_report_fields(fields)
    rows = [_only_fields(row, fields) for row in rows]
    templates = [write_report(row) for row in rows]
    # A row with none of the fields would get the bare "Body sound recording.": refuse it rather than align to that.
    empty = [
        manifest.describe_row(i)
        for i, (row, text) in enumerate(zip(rows, templates))
        if not text.strip() or not any(_value(row, name) is not None for name in fields)
    ]
    if empty:
        kind = "report field (modality, label, ...)" if fields == REPORT_FIELDS else \
            f"of the --report_fields ({', '.join(fields)})"
        raise ValueError(f"rows without any {kind}: " + "; ".join(empty))
    if rewriter is None:
        return templates, {"source": "template", "total": len(templates), "accepted": len(templates), "fallback": 0}
    reports, stats = rewriter.rewrite_all(rows, templates)
    return reports, {"source": "rewrite", **stats}
