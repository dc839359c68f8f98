"""The clinical vocabularies of the source datasets, and the rule that checks a rewritten report against them.

`vocab/*.json` ship with the package: `shared.json` holds what every source uses (modality nouns, the general
clinical terms a language model might invent, the words that qualify a finding), and one file per source
dataset holds its codes in words (`"copd"` -> "chronic obstructive pulmonary disease (COPD)"), the words a
report must keep for them, its site / sound-type tables and its provenance sentence. A code means the same in
every source, so the tables of all files are merged (a code given two different meanings is an error).

`check_report` is the rewrite rule: a rewrite may mention a clinical term (the shared terms and the finding
words of every source's codes, with their plural / -ing forms) only where the template written from the row
mentions it, with no qualifier, negation, age, sex or number the template and the row do not support.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

# The vocabulary files; a test (or a user) may point this at a copy with more terms.
VOCAB_DIR = files(__package__) / "vocab"
SHARED_FILE = "shared.json"
# Sections of the source files that map a code to its words, merged over all sources.
_MERGED_TABLES = (
    "words", "finding_words", "sublabels", "covid_status", "covid_findings", "conditions", "quality",
    "filter_modes", "sites", "location_surface", "location_side", "location_level", "sound_phases", "sounds",
    "age_groups", "murmur_timings", "murmur_shapes", "murmur_pitches", "murmur_qualities",
)


@dataclasses.dataclass(frozen=True, eq=False)
class ReportVocabulary:
    """
    The merged vocabulary files.

    Args:
        tables (`Mapping[str, Mapping[str, Any]]`): code -> words per section (`"words"`, `"sites"`, ...), over
            all sources, plus the shared `"modality_nouns"` and `"sex"`.
        provenance (`Mapping[str, str]`): the provenance sentence of each source dataset.
        codes (`Mapping[str, Mapping[str, Sequence[str]]]`): per source dataset, the codes it writes in each
            column (`{"label": [...], "diagnosis": [...]}`); their finding words are clinical terms.
        shared_terms (`tuple[str, ...]`): clinical terms that no source records, as word starts (`"wheez"`).
        qualifier_of (`Mapping[str, str]`): qualifier word -> its concept (`"pansystolic"` -> `"holosystolic"`).
        report_wide_qualifiers (`frozenset[str]`): concepts that qualify the whole report, not one finding.
        disease_word (`re.Pattern`): disease-like words (-itis, -osis, ...), which must be in the template.
        not_disease_words (`frozenset[str]`): words that match `disease_word` but name no disease.
    """

    tables: Mapping[str, Mapping[str, Any]]
    provenance: Mapping[str, str]
    codes: Mapping[str, Mapping[str, Sequence[str]]]
    shared_terms: tuple[str, ...]
    qualifier_of: Mapping[str, str]
    report_wide_qualifiers: frozenset
    disease_word: re.Pattern
    not_disease_words: frozenset


def _merge(tables: dict[str, dict], section: str, entries: Mapping[str, Any], where: str) -> None:
    table = tables.setdefault(section, {})
    for code, words in entries.items():
        if code in table and table[code] != words:
            raise ValueError(f"{where}: {section}[{code!r}] = {words!r}, but another file gives {table[code]!r}.")
        table[code] = words


@functools.lru_cache(maxsize=4)
def load_vocabulary(folder: Any = None) -> ReportVocabulary:
    """
    Read and merge the vocabulary files of `folder`.

    Args:
        folder (`Path` or `importlib.resources` traversable, *optional*): a folder with `shared.json` and one
            `<source_dataset>.json` per source; defaults to `VOCAB_DIR`, the files shipped with the package.

    Returns:
        [`ReportVocabulary`]
    """
    folder = VOCAB_DIR if folder is None else folder
    shared = json.loads((folder / SHARED_FILE).read_text(encoding="utf-8"))
    tables = {"modality_nouns": dict(shared["modality_nouns"]), "sex": dict(shared["sex"])}
    provenance, codes = {}, {}
    for path in sorted((p for p in folder.iterdir() if p.name.endswith(".json") and p.name != SHARED_FILE),
                       key=lambda p: p.name):
        source = json.loads(path.read_text(encoding="utf-8"))
        name = source["source_dataset"]
        if name in provenance:
            raise ValueError(f"{path.name}: a second vocabulary file for source {name!r}.")
        provenance[name] = source["provenance"]
        codes[name] = {column: tuple(values) for column, values in source.get("codes", {}).items()}
        for section in _MERGED_TABLES:
            _merge(tables, section, source.get(section, {}), path.name)
    unknown = {key for key in shared if key not in (
        "description", "modality_nouns", "sex", "finding_terms", "qualifiers", "report_wide_qualifiers",
        "disease_word_endings", "not_disease_words")}
    if unknown:
        raise ValueError(f"{SHARED_FILE}: unknown sections {sorted(unknown)}.")
    endings = "|".join(sorted(shared["disease_word_endings"], key=len, reverse=True))
    return ReportVocabulary(
        tables={section: tables.get(section, {}) for section in ("modality_nouns", "sex", *_MERGED_TABLES)},
        provenance=provenance,
        codes=codes,
        shared_terms=tuple(shared["finding_terms"]),
        qualifier_of={form: concept for concept, forms in shared["qualifiers"].items() for form in forms},
        report_wide_qualifiers=frozenset(shared["report_wide_qualifiers"]),
        disease_word=re.compile(rf"[a-z]{{2,}}(?:{endings})"),
        not_disease_words=frozenset(shared["not_disease_words"]),
    )


def vocabulary() -> ReportVocabulary:
    """The vocabulary of `VOCAB_DIR` (read once per folder)."""
    return load_vocabulary(VOCAB_DIR)


# Words of the language rather than of a source: negations, numbers, sex and age words.
_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5, "vi": 6}
_NUMBER_WORDS = frozenset(
    "two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred twenties thirties forties "
    "fifties sixties seventies eighties nineties dozen".split()
)
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
FAILED_CALL_PATTERNS = (
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
_ERROR_PATTERNS = FAILED_CALL_PATTERNS + (
    (r"^\s*[\[{]|\{\s*\"|<\s*/?\s*(?:html|body|div)\b", "JSON or markup"),
    (r"\b(?:none|nan|null|undefined)\b", "missing-value placeholder"),
    (r"\b(?:train|training|val|validation|test|eval|evaluation)\s+(?:split|set|fold)\b", "mentions a data split"),
)
MAX_REPORT_CHARS = 1200


def cell_value(row: Mapping[str, Any], key: str) -> str | None:
    """The row's value as a stripped string, or None when not recorded ("", None, NaN, "nan", "None")."""
    cell = row.get(key)
    if cell is None:
        return None
    if isinstance(cell, float):
        if cell != cell:  # NaN
            return None
        if cell.is_integer():
            cell = int(cell)
    text = str(cell).strip()
    if text == "" or text.lower() in ("nan", "none", "null", "n/a", "na"):
        return None
    return text


def _stem(word: str) -> str:
    lowered = word.lower()
    for suffix in ("ing", "es", "s", "e"):
        if lowered.endswith(suffix) and len(lowered) - len(suffix) >= 4:
            return lowered[: -len(suffix)]
    return lowered


@functools.cache
def term_pattern(term: str) -> re.Pattern:
    """
    Word-start match tolerant to plural / -ing forms and to spaces vs hyphens between words. An abbreviation
    (`COPD`, `BRON`) is a whole word, plural allowed: `BRON` is not a mention of "bronchial".
    """
    words = re.findall(r"[\w/]+", term)
    if not words:
        return re.compile(re.escape(term), re.IGNORECASE)
    if re.fullmatch(r"[A-Z][A-Z0-9]+", term):
        return re.compile(rf"(?<![\w/]){re.escape(term)}s?(?!\w)", re.IGNORECASE)
    body = r"[\s\-]+(?:\(\w+\)[\s\-]+)?".join(re.escape(_stem(word)) + r"\w*" for word in words)
    return re.compile(r"(?<![\w/])" + body, re.IGNORECASE)


def mentions(text: str, term: str) -> bool:
    """Whether `text` mentions `term` (case-insensitive, plural / -ing tolerant)."""
    return term_pattern(term).search(text) is not None


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


def _finding_phrases(text: str, terms: Sequence[str], vocab: ReportVocabulary) -> list[tuple[str, frozenset, str]]:
    """
    Each mention of a clinical term with the qualifiers written right before it:
    "grade IV/VI holosystolic murmur" -> ("murmur", {grade, number 4, number 6, holosystolic}, the phrase).
    """
    tokens = _tokens(text)
    phrases = []
    for term in terms:
        for match in term_pattern(term).finditer(text):
            index = next((i for i, (_, s, _e) in enumerate(tokens) if s >= match.start()), len(tokens))
            concepts, start = set(), match.start()
            for word, word_start, word_end in reversed(tokens[:index]):
                if not re.fullmatch(r"[\s\-/]*", text[word_end:start]):
                    break
                if word in vocab.qualifier_of:
                    if vocab.qualifier_of[word] not in vocab.report_wide_qualifiers:
                        concepts.add(vocab.qualifier_of[word])
                elif word in _ROMAN or word.isdigit():
                    concepts.add(f"number {_ROMAN.get(word, word)}")
                else:
                    break
                start = word_start
            phrases.append((term, frozenset(concepts), text[start : match.end()]))
    return phrases


def _negated_terms(text: str, terms: Sequence[str]) -> list[tuple[str, str]]:
    """Clinical terms negated in `text` ("no murmur", "without any wheezes", "crackles are absent"), with the clause."""
    negated = []
    present = [term for term in terms if term_pattern(term).search(text)]
    for clause in re.split(r"[.;:,!?()]|\bbut\b", text):
        tokens = _tokens(clause)
        clause_wide = any(w in ("absent", "absence") for w, _, _ in tokens) or re.search(
            r"\bnot\s+(?:be\s+)?(?:heard|present|detected|appreciated|audible|seen|identified|noted|found)\b",
            clause, re.IGNORECASE,
        )
        for term in present:
            for match in term_pattern(term).finditer(clause):
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


def _unsupported_terms(text: str, template: str, terms: Sequence[str], vocab: ReportVocabulary) -> str | None:
    """Clinical terms, their qualifiers and negations that `template` does not support."""
    # Each term must be the template's, and each phrase of the rewrite a phrase of the template, or the template's
    # phrase with qualifiers left out ("systolic murmur" for "early systolic murmur").
    for term in terms:
        if mentions(text, term) and not mentions(template, term):
            return f"invented finding: {term!r}"
    template_phrases: dict[str, list[frozenset]] = {}
    for term, concepts, _ in _finding_phrases(template, terms, vocab):
        template_phrases.setdefault(term, []).append(concepts)
    for term, concepts, phrase in _finding_phrases(text, terms, vocab):
        if not any(concepts <= known for known in template_phrases.get(term, [])):
            return f"invented finding: {phrase!r} (not supported by the template)"
    # Qualifier words anywhere ("murmur at the apex", "wheezes on expiration") and disease-like words.
    template_words = {word for word, _, _ in _tokens(template)}
    template_concepts = {vocab.qualifier_of[word] for word in template_words if word in vocab.qualifier_of}
    for word, start, end in _tokens(text):
        if word in vocab.qualifier_of and vocab.qualifier_of[word] not in template_concepts:
            return f"invented finding: qualifier {word!r} in {_chunk(text, start, end, 2)!r} (not in the template)"
        if vocab.disease_word.fullmatch(word) and word not in vocab.not_disease_words and word not in template_words:
            return f"invented finding: {word!r} (not in the template)"
    # Negation: "no murmur" / "wheezes are absent" only where the template negates the same finding ...
    template_negated = Counter(term for term, _ in _negated_terms(template, terms))
    text_negated = Counter(term for term, _ in _negated_terms(text, terms))
    for term, clause in _negated_terms(text, terms):
        if term not in template_negated:
            return f"invented finding: {term!r} negated in {clause!r}"
    # ... and a term the template negates ("no disease") may not be stated as present more often than the template
    # states it ("a heart valve disease collection" does not license "a patient with heart valve disease").
    for term, negated in template_negated.items():
        stated_in_template = len(term_pattern(term).findall(template)) - negated
        stated = len(term_pattern(term).findall(text)) - text_negated[term]
        if stated > stated_in_template:
            return (f"invented finding: {term!r} stated as present {stated} time(s), but the template negates it and "
                    f"states it {stated_in_template} time(s)")
    return None


def _wrong_age_or_sex(text: str, row: Mapping[str, Any], vocab: ReportVocabulary) -> str | None:
    """An age, age word ("elderly", "child") or sex word (male, woman, he, ...) that is not the row's."""
    age = cell_value(row, "age")
    try:
        age_number = float(age) if age is not None else None
    except ValueError:
        age_number = None
    recorded = age if age is not None else "not recorded"
    # A source that records an age group (CirCor: "Child") bounds the age instead of stating it.
    group = cell_value(row, "age_group")
    group_years = vocab.tables["age_groups"].get(group.lower(), {}).get("years") if group else None
    if age_number is None and group_years:
        recorded = f"{group} ({group_years[0]:g}-{group_years[1]:g} years)"
    for match in re.finditer(
        r"(\d+(?:\.\d+)?)\s*-?\s*(?:years?|yrs?|y/o|yo)\b(?:[\s-]*old\b)?"
        r"|\bage[ds]?\s*(?:of\s*)?:?\s*(\d+(?:\.\d+)?)",
        text,
        re.IGNORECASE,
    ):
        said = float(match.group(1) or match.group(2))
        if age_number is None or said != age_number:
            return f"wrong age: {match.group(0)!r} but the row's age is {recorded}"
    words = _tokens(text)
    middle_aged = [
        (m.start(), m.end(), (40, 65)) for m in re.finditer(r"\bmiddle[\s-]aged\b", text, re.IGNORECASE)
    ]
    for start, end, (low, high) in middle_aged + [(s, e, _AGE_WORDS[w]) for w, s, e in words if w in _AGE_WORDS]:
        if age_number is None and group_years:  # the word's ages must overlap the group's
            fits = (low is None or low < group_years[1]) and (high is None or high > group_years[0])
        else:
            fits = age_number is not None and (low is None or age_number >= low) and (high is None or age_number < high)
        if not fits:
            return f"wrong age: {text[start:end]!r} but the row's age is {recorded}"
    sex = cell_value(row, "sex")
    sex = vocab.tables["sex"].get(sex.lower(), sex.lower()) if sex else None
    for word, start, end in words:
        if word in _SEX_OF and _SEX_OF[word] != sex:
            return f"wrong sex: {text[start:end]!r} but the row's sex is {sex or 'not recorded'}"
    return None


def check_report(
    text: str | None,
    row: Mapping[str, Any],
    *,
    template: str,
    required: Sequence[str],
    terms: Sequence[str],
    vocab: ReportVocabulary | None = None,
) -> str | None:
    """
    Why `text` is not a valid report of `row`, or `None` when it is (see `reports.validate_report`).

    Args:
        text (`str`): the candidate report.
        row (`Mapping[str, Any]`): the manifest row it describes.
        template (`str`): the row's template report.
        required (`Sequence[str]`): the terms the report must mention (`reports.findings(row)`).
        terms (`Sequence[str]`): the clinical terms (`reports.clinical_terms()`).
        vocab ([`ReportVocabulary`], *optional*): defaults to `vocabulary()`.
    """
    if text is None or not str(text).strip():
        return "empty: no text"
    text = str(text)
    if len(text) > MAX_REPORT_CHARS:
        return f"too long: {len(text)} characters"
    for pattern, name in _ERROR_PATTERNS:
        match = re.search(pattern, text, re.IGNORECASE | re.MULTILINE)
        if match:
            return f"error-like text: {name} ({match.group(0).strip()!r})"
    for key in ("file", "path", "audio", "source_path"):
        path = cell_value(row, key)
        if path:
            stem = Path(path.replace("\\", "/").split("::")[-1]).stem
            if len(stem) >= 4 and stem.lower() in text.lower():
                return f"leaks the file name: {stem!r}"
    for term in required:
        if not mentions(text, term):
            return f"missing finding: {term!r}"
    vocab = vocabulary() if vocab is None else vocab
    reason = _unsupported_terms(text, template, terms, vocab) or _wrong_age_or_sex(text, row, vocab)
    if reason:
        return reason
    # Every other number (grades such as IV/VI, counts, durations) must be one of the template's.
    template_numbers = {number for number, _ in _numbers(template)}
    for number, where in _numbers(text):
        if number not in template_numbers:
            return f"unsupported number: {where!r} (the template has no {number})"
    return None
