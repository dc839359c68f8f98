"""Templated reports, their validation, and the LLM rewrite with fallback."""

import re

import pytest

from acula_train.manifest import load_manifest
from acula_train.reports import (
    REPORT_FIELDS,
    LLMReportRewriter,
    build_reports,
    describe_location,
    describe_sound_type,
    findings,
    mentions,
    resolve_report_fields,
    validate_report,
    write_meta_report,
    write_report,
)


@pytest.fixture(scope="module")
def manifest(dev_pack):
    return load_manifest(dev_pack / "metadata.csv")


def _first(manifest, **where):
    return next(row for row in manifest.rows if all(row.get(k) == v for k, v in where.items()))


def test_every_dev_pack_combination_yields_a_valid_report(manifest):
    combos = {}
    for row in manifest.rows:
        combos.setdefault((row["source_dataset"], row["label"]), row)
    assert len(combos) == 31  # the distinct (source, label) pairs of the dev pack
    for (source, label), row in combos.items():
        report = write_report(row)
        assert report.strip(), (source, label)
        assert validate_report(report, row) is None, (source, label, report)
        for term in findings(row):
            assert mentions(report, term), (source, label, term, report)
        assert 2 <= report.count(". ") + 1 <= 4, report  # 2-3 sentences (+ provenance)
    # And every single row (all field combinations) reads cleanly.
    for row in manifest.rows:
        report = write_report(row)
        assert not re.search(r"\b(None|nan|NaN)\b|_|\s{2}|\.\.", report), report
        assert validate_report(report, row) is None, report


def test_reports_do_not_leak_split_or_file_name(manifest):
    row = _first(manifest, suggested_split="val")
    other = dict(row, suggested_split="train")
    assert write_report(row) == write_report(other)
    assert write_meta_report(row) == write_meta_report(other)
    for text in (write_report(row), write_meta_report(row)):
        assert "val" not in text.lower().split() and "split" not in text.lower()
        assert row["file"].rsplit("/", 1)[-1].split(".")[0] not in text
        assert row["group_id"] not in text


def test_report_content_per_source(manifest):
    yaseen = write_report(_first(manifest, label="mitral_regurgitation"))
    assert "mitral regurgitation" in yaseen and "_" not in yaseen
    kauh = _first(manifest, source_dataset="KAUH_lung_sounds", diagnosis="copd")
    text = write_report(kauh)
    assert "chronic obstructive pulmonary disease (COPD)" in text and "expiratory wheezes" in text
    assert f"{kauh['age']}-year-old" in text and kauh["sex"] in text
    assert f"{kauh['filter_mode']} mode" in text
    manikin = write_report(_first(manifest, source_dataset="HLS-CMDS_manikin", location="LUSB"))
    assert "left upper sternal border" in manikin and "manikin" in manikin.lower()
    coswara = _first(manifest, source_dataset="Coswara_20200413", conditions="asthma;smoker")
    text = write_report(coswara)
    assert "COVID-19 status: healthy" in text and "asthma and smoker" in text and "audio quality" in text
    noisy = write_report(_first(manifest, sublabel="noisymurmur"))
    assert "murmur in a noisy recording" in noisy


def test_location_and_sound_type_codes():
    assert describe_location("P R L") == "the posterior right lower chest"
    assert describe_location("A U R") == "the anterior right upper chest"
    assert describe_location("P") == "the posterior chest"
    assert describe_location("P L R") == "the posterior chest (site code P L R)"  # ambiguous: keep the code
    assert describe_location("RLA") == "the right lower anterior chest"
    assert describe_location("RC") == "site RC"
    assert describe_sound_type("I C E W") == "inspiratory crackles and expiratory wheezes"
    assert describe_sound_type("Crep") == "crepitations"
    assert describe_sound_type("X Y") == "sound type X Y"


def test_meta_report_style(manifest):
    row = _first(manifest, source_dataset="KAUH_lung_sounds", diagnosis="asthma")
    meta = write_meta_report(row)
    assert meta.startswith("Source: ")
    assert "Modality: Lung" in meta and "Diagnosis: Asthma" in meta and "Stethoscope filter: " in meta
    assert "Age: " + row["age"] in meta
    assert "Sublabel" not in meta and "COVID" not in meta  # empty fields left out
    pascal = write_meta_report(_first(manifest, device="iStethoscope Pro iPhone app"))
    assert "Device: iStethoscope Pro iPhone app" in pascal


@pytest.mark.parametrize(
    "text, kind",
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("Error: 429 Too Many Requests", "error-like text"),
        ('{"error": {"message": "Rate limit reached", "code": 429}}', "error-like text"),
        ("As an AI language model, I cannot provide a diagnosis.", "error-like text"),
        ("Traceback (most recent call last): File model.py", "error-like text"),
        ("HTTP 503 Service Unavailable", "error-like text"),
        ("Heart sound recording; diagnosis: None.", "error-like text"),
        ("Heart sound recording from the validation split; mitral regurgitation.", "error-like text"),
        ("A heart sound recording with normal findings.", "missing finding"),
        ("Heart sound recording showing mitral regurgitation and a loud murmur.", "invented finding"),
        ("Heart sound recording New_MR_001: mitral regurgitation.", "leaks the file name"),
    ],
)
def test_validate_report_rejects(manifest, text, kind):
    row = _first(manifest, label="mitral_regurgitation")
    reason = validate_report(text, row)
    assert reason is not None and reason.startswith(kind), reason


def test_validate_report_accepts_paraphrase(manifest):
    row = _first(manifest, source_dataset="KAUH_lung_sounds", diagnosis="heart_failure+copd")
    text = (
        "Lung auscultation of an elderly man shows abnormal findings: inspiratory crackling and expiratory "
        "wheezing. Known heart failure and COPD."
    )
    assert validate_report(text, row) is None
    assert validate_report(text.replace("COPD", "asthma"), row).startswith("missing finding")


def _fake_pipeline(responses):
    """A stand-in for a text-generation pipeline that answers by a keyword of the prompt."""
    calls = []

    def pipeline(prompts, **kwargs):
        calls.append(kwargs)
        out = []
        for prompt in prompts:
            key = next(k for k in responses if k in prompt)
            out.append([{"generated_text": responses[key]}])
        return out

    pipeline.calls = calls
    return pipeline


def test_rewriter_validates_and_falls_back(manifest):
    rows = [
        _first(manifest, label="mitral_regurgitation"),
        _first(manifest, label="mitral_stenosis"),
        _first(manifest, label="mitral_valve_prolapse"),
        _first(manifest, source_dataset="KAUH_lung_sounds", diagnosis="pneumonia"),
    ]
    templates = [write_report(row) for row in rows]
    fake = _fake_pipeline(
        {
            "mitral regurgitation": "Report: Phonocardiogram of the heart showing mitral regurgitation.\n\nNext",
            "mitral stenosis": "Error code 500: internal server error",
            "mitral valve prolapse": "",
            "pneumonia": "Abnormal lung sounds with crepitations in a patient.",  # drops pneumonia
        }
    )
    rewriter = LLMReportRewriter(fake, batch_size=3)
    reports, stats = rewriter.rewrite_all(rows, templates)
    assert reports[0] == "Phonocardiogram of the heart showing mitral regurgitation."
    assert reports[1:] == templates[1:]
    assert stats == {
        "total": 4,
        "accepted": 1,
        "fallback": 3,
        "fallback_reasons": {"error-like text": 1, "empty": 1, "missing finding": 1},
    }
    assert fake.calls[0]["do_sample"] is False and fake.calls[0]["return_full_text"] is False
    assert "Do not add any finding" in rewriter.build_prompt(templates[0])

    def broken(prompts, **kwargs):
        raise RuntimeError("CUDA out of memory")

    reports, stats = LLMReportRewriter(broken).rewrite_all(rows, templates)
    assert reports == templates and stats["fallback_reasons"] == {"generation failed": 4}


def test_rewriter_with_tiny_random_gpt2(manifest, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = sorted({w for row in manifest.rows[:50] for w in re.findall(r"\w+|[^\w\s]", write_report(row))})
    vocab = {token: i for i, token in enumerate(["<unk>", "<eos>", *words, "Findings", "Report", "Rewrite"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    tokenizer.save_pretrained(tmp_path)
    config = GPT2Config(vocab_size=len(vocab), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                        bos_token_id=1, eos_token_id=1)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)

    rows = [_first(manifest, label="murmur"), _first(manifest, source_dataset="KAUH_lung_sounds", label="normal")]
    templates = [write_report(row) for row in rows]
    rewriter = LLMReportRewriter(str(tmp_path), max_new_tokens=12, batch_size=2)
    reports, stats = rewriter.rewrite_all(rows, templates)
    assert reports == templates  # gibberish from random weights never becomes training text
    assert stats["fallback"] == 2 and stats["accepted"] == 0
    assert "generation failed" not in stats["fallback_reasons"], stats  # the model did generate


def test_build_reports(manifest, tmp_path):
    subset = manifest.select(range(0, 1990, 199))
    reports, stats = build_reports(subset)
    assert reports == [write_report(row) for row in subset.rows] and stats["source"] == "template"

    fake = _fake_pipeline({"": "no"})
    reports, stats = build_reports(subset, rewriter=LLMReportRewriter(fake))
    assert stats["source"] == "rewrite" and stats["fallback"] == len(subset)

    rows = subset.to_records()
    for row in rows:
        row["report"] = "A written report."
    rows[3]["report"] = None
    rows[5]["report"] = "Rate limit exceeded, retry later"
    from acula_train.manifest import Manifest

    with_column = Manifest(rows=rows, root=subset.root, source=subset.source, audio_paths=subset.audio_paths,
                           row_numbers=subset.row_numbers, row_label="line")
    with pytest.raises(ValueError) as info:
        build_reports(with_column, report_column="report")
    message = str(info.value)
    assert f"line {subset.row_numbers[3]}: empty report" in message
    assert f"line {subset.row_numbers[5]}: report looks like an error" in message
    rows[3]["report"] = rows[5]["report"] = "Fine."
    reports, stats = build_reports(with_column, report_column="report")
    assert reports[3] == "Fine." and stats["source"] == "column"


# Rewrites that invent or change findings (each kept the template's key terms, so only the new rules catch them).
_INVENTED = {
    "negated-disease-stated": (
        dict(source_dataset="KAUH_lung_sounds", label="normal"),
        "Normal lung sounds from a patient with lung disease.",
        "invented finding: 'disease' stated as present",
    ),
    "collection-disease-as-patient-disease": (
        dict(source_dataset="Yaseen2018", label="normal"),
        "Normal heart sounds in a patient with heart valve disease; from a curated heart valve disease collection.",
        "invented finding: 'disease' stated as present 2 time(s)",
    ),
    "new-symptoms": (
        dict(source_dataset="KAUH_lung_sounds", label="normal"),
        "Normal lung sounds of a patient with shortness of breath and hypoxia.",
        "invented finding:",
    ),
    "radiation": (
        dict(source_dataset="HLS-CMDS_manikin", label="early_systolic_murmur"),
        "Early systolic murmur of a manikin's heart that radiates to the carotids; simulated, not from a patient.",
        "invented finding: 'radiat'",
    ),
    "second-valve": (
        dict(source_dataset="Yaseen2018", label="mitral_stenosis"),
        "Heart sound recording. Diagnosis: mitral stenosis with aortic stenosis.",
        "invented finding: 'aortic stenosis'",
    ),
    "timing": (
        dict(source_dataset="HLS-CMDS_manikin", label="early_systolic_murmur"),
        "Heart sound recording of a female manikin. Finding: early systolic murmur and a late diastolic murmur.",
        "invented finding: 'late diastolic murmur'",
    ),
    "grade": (
        dict(source_dataset="PASCAL_CHSC2011", label="murmur"),
        "Heart sound recording. Finding: grade IV/VI holosystolic murmur at the apex.",
        "invented finding: 'grade IV/VI holosystolic murmur'",
    ),
    "age": (
        dict(source_dataset="KAUH_lung_sounds", diagnosis="copd"),
        "Lung sound recording of a 25-year-old male patient. Abnormal lung sounds with expiratory wheezes; diagnosis: "
        "COPD.",
        "wrong age: '25-year-old' but the row's age is 63",
    ),
    "sex": (
        dict(source_dataset="KAUH_lung_sounds", diagnosis="copd"),
        "Lung sound recording of a 63-year-old female patient. Abnormal lung sounds with expiratory wheezes; "
        "diagnosis: COPD.",
        "wrong sex: 'female' but the row's sex is male",
    ),
    "new-finding": (
        dict(source_dataset="HLS-CMDS_manikin", label="atrial_fibrillation"),
        "Heart sound recording of a manikin. Finding: atrial fibrillation and ventricular fibrillation.",
        "invented finding: 'ventricular fibrillation'",
    ),
    "grade-number": (
        dict(source_dataset="HLS-CMDS_manikin", label="early_systolic_murmur"),
        "Heart sound recording of a female manikin with an early systolic murmur, grade 3/6.",
        "invented finding: qualifier 'grade' in 'grade 3/6'",
    ),
    "site": (
        dict(source_dataset="PASCAL_CHSC2011", label="murmur"),
        "Heart sound recording with a murmur heard best at the apex.",
        "invented finding: qualifier 'apex'",
    ),
    "severity": (
        dict(source_dataset="KAUH_lung_sounds", diagnosis="copd"),
        "Abnormal lung sounds of a 63-year-old man with COPD and severe expiratory wheezes.",
        "invented finding: 'severe expiratory wheezes'",
    ),
    "swapped-phase": (
        dict(source_dataset="KAUH_lung_sounds", diagnosis="copd"),
        "Abnormal lung sounds of a 63-year-old man with COPD and inspiratory wheezes.",
        "invented finding: 'inspiratory wheezes'",
    ),
    "negated": (
        dict(source_dataset="KAUH_lung_sounds", diagnosis="copd"),
        "Abnormal lung sounds of a 63-year-old man with COPD; expiratory wheezes are absent.",
        "invented finding: 'wheez' negated",
    ),
    "disease-word": (
        dict(source_dataset="KAUH_lung_sounds", diagnosis="copd"),
        "Abnormal lung sounds of a 63-year-old man with COPD, expiratory wheezes and bronchiolitis.",
        "invented finding: 'bronchiolitis'",
    ),
    "age-word": (
        dict(source_dataset="KAUH_lung_sounds", diagnosis="copd"),
        "Abnormal lung sounds of a young man with COPD and expiratory wheezes.",
        "wrong age: 'young' but the row's age is 63",
    ),
    "sex-not-recorded": (
        dict(source_dataset="PASCAL_CHSC2011", label="murmur"),
        "Heart sound recording of a man with a murmur.",
        "wrong sex: 'man' but the row's sex is not recorded",
    ),
    "number": (
        dict(source_dataset="KAUH_lung_sounds", diagnosis="copd"),
        "Abnormal lung sounds of a 63-year-old man with COPD and expiratory wheezes, recorded for 8 seconds.",
        "unsupported number: '8'",
    ),
}


@pytest.mark.parametrize("case", list(_INVENTED))
def test_validate_report_rejects_invented_findings(manifest, case):
    where, text, expected = _INVENTED[case]
    row = _first(manifest, **where)
    reason = validate_report(text, row)
    assert reason is not None and reason.startswith(expected), (write_report(row), reason)


_PARAPHRASES = [
    (dict(source_dataset="KAUH_lung_sounds", diagnosis="copd"),
     "A 63-year-old man's lungs were auscultated over the posterior right lower chest; abnormal expiratory wheezes "
     "were heard, consistent with COPD."),
    (dict(source_dataset="KAUH_lung_sounds", diagnosis="copd"),
     "Abnormal lung sounds of a 63 year old male with COPD: expiratory wheezing, recorded with a Littmann 3200 "
     "stethoscope."),
    (dict(source_dataset="KAUH_lung_sounds", diagnosis="copd"),
     "Abnormal lung sounds of a male patient aged 63: wheezes on expiration, known COPD."),
    (dict(source_dataset="KAUH_lung_sounds", diagnosis="heart_failure+copd"),
     "Lung auscultation of an elderly man shows abnormal findings: inspiratory crackling and expiratory wheezing. "
     "Known heart failure and COPD."),
    (dict(source_dataset="HLS-CMDS_manikin", label="early_systolic_murmur"),
     "Manikin heart recording of an early systolic murmur at the left lower sternal border; simulated, not from a "
     "patient."),
    (dict(source_dataset="HLS-CMDS_manikin", label="atrial_fibrillation"),
     "Heart sounds from a female manikin: atrial fibrillation, recorded at the cardiac apex."),
    (dict(source_dataset="HLS-CMDS_manikin", label="s3"),
     "Heart sounds from a female manikin with an S3 at the apex."),
    (dict(source_dataset="Yaseen2018", label="mitral_stenosis"), "Phonocardiogram of the heart with mitral stenosis."),
    (dict(source_dataset="PASCAL_CHSC2011", label="murmur"),
     "Heart sound recording with a murmur, taken with an iStethoscope Pro iPhone app."),
    (dict(source_dataset="KAUH_lung_sounds", label="normal"), "Normal lung sounds; no disease was diagnosed."),
    (dict(source_dataset="Coswara_20200413", conditions="asthma;smoker"),
     "Deep breathing recorded by a 30-year-old man, healthy with respect to COVID-19, who reports asthma and is a "
     "smoker; good audio quality."),
]


@pytest.mark.parametrize("where, text", _PARAPHRASES)
def test_validate_report_keeps_legitimate_paraphrases(manifest, where, text):
    row = _first(manifest, **where)
    assert validate_report(text, row) is None, write_report(row)


def test_rewriter_falls_back_on_invented_findings(manifest):
    cases = [_INVENTED[name] for name in ("second-valve", "timing", "grade", "age", "new-finding")]
    rows = [_first(manifest, **where) for where, _, _ in cases]
    templates = [write_report(row) for row in rows]

    def fake(prompts, **kwargs):
        return [[{"generated_text": text}] for _, text, _ in cases]

    reports, stats = LLMReportRewriter(fake, batch_size=len(cases)).rewrite_all(rows, templates)
    assert reports == templates
    assert stats["accepted"] == 0 and stats["fallback_reasons"] == {"invented finding": 4, "wrong age": 1}


@pytest.mark.parametrize("placeholder", ["nan", "None", "null", "NaN", " N/A ", "NULL.", "-", "", "   "])
def test_report_column_refuses_placeholders(manifest, placeholder):
    from acula_train.manifest import Manifest

    subset = manifest.select(range(0, 600, 200))
    rows = [dict(row, report="Normal heart sounds.") for row in subset.to_records()]
    rows[1]["report"] = placeholder
    with_column = Manifest(rows=rows, root=subset.root, source=subset.source, audio_paths=subset.audio_paths,
                           row_numbers=subset.row_numbers, row_label="line")
    with pytest.raises(ValueError, match="1 invalid report") as info:
        build_reports(with_column, report_column="report")
    message = str(info.value)
    assert f"{subset.source} line {subset.row_numbers[1]}: " in message and "'report'" in message
    assert re.search(r"empty report|missing-value placeholder|has no words", message), message
    rows[1]["report"] = "Normal heart sounds."
    reports, stats = build_reports(with_column, report_column="report")
    assert reports == ["Normal heart sounds."] * 3 and stats["source"] == "column"


# The vocabulary files: one per source dataset, read from the package, and the rule that reads them.


def _copy_vocabulary(tmp_path, monkeypatch):
    """A copy of the shipped vocabulary files that the code reads from now on (as a user's edited copy would be)."""
    from acula_train import report_validation

    folder = tmp_path / "vocab"
    folder.mkdir()
    for entry in report_validation.VOCAB_DIR.iterdir():
        if entry.name.endswith(".json"):
            (folder / entry.name).write_text(entry.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(report_validation, "VOCAB_DIR", folder)
    return folder


def test_every_dev_pack_source_has_a_vocabulary_file(manifest):
    import json
    from importlib.resources import files

    from acula_train.report_validation import vocabulary

    shipped = files("acula_train") / "vocab"
    names = {entry.name for entry in shipped.iterdir() if entry.name.endswith(".json")}
    assert "shared.json" in names
    vocab = vocabulary()
    for source in sorted({row["source_dataset"] for row in manifest.rows}):
        assert f"{source}.json" in names, source
        assert json.loads((shipped / f"{source}.json").read_text(encoding="utf-8"))["source_dataset"] == source
        assert write_report({"source_dataset": source}).endswith(vocab.provenance[source])
        # Every label / diagnosis / condition code the source writes is listed in its file.
        codes = vocab.codes[source]
        for row in manifest.rows:
            if row["source_dataset"] != source:
                continue
            for column in ("label", "diagnosis", "conditions"):
                for code in filter(None, re.split(r"[+;,/]", row.get(column) or "")):
                    assert code.lower() in map(str.lower, codes.get(column, ())), (source, column, code)


def test_clinical_terms_are_the_vocabularies_terms():
    from acula_train.reports import clinical_terms

    terms = clinical_terms()
    # Shared terms first, then the finding words of every source's codes; qualifiers are checked as qualifiers.
    assert terms[:3] == ("murmur", "wheez", "crackl")
    for term in ("extra heart sound", "pleural friction rub", "early systolic murmur", "lung fibrosis", "BRON",
                 "exposed", "recovered", "deep breathing", "noisy"):
        assert term in terms, term
    assert "normal" not in terms and "healthy" not in terms
    assert "wheezing" not in terms  # "wheez" already matches it
    assert mentions("Known BRON.", "BRON") and not mentions("bronchial breath sounds", "BRON")


def test_source_terms_are_checked(manifest):
    clean = next(row for row in manifest.rows if row["label"] == "murmur" and not row.get("sublabel"))
    assert validate_report("Heart sound recording. Finding: murmur in a noisy recording.", clean) == (
        "invented finding: 'noisy'"
    )
    healthy = _first(manifest, source_dataset="Coswara_20200413", covid_status="resp_illness_not_identified")
    text = write_report(healthy).replace("not identified as COVID-19", "not identified as COVID-19, exposed to it")
    assert validate_report(text, healthy) == "invented finding: 'exposed'"
    bron = _first(manifest, source_dataset="KAUH_lung_sounds", diagnosis="BRON")
    assert validate_report(write_report(bron).replace("BRON", "bronchial"), bron) == "missing finding: 'BRON'"


def test_a_term_added_to_a_vocabulary_file_is_recognised(manifest, tmp_path, monkeypatch):
    import json

    row = _first(manifest, source_dataset="KAUH_lung_sounds", label="normal", diagnosis="normal")
    symptom = "Normal lung sounds with normal breath sounds; diagnosis: normal. Patient followed for hemoptysis."
    code = "Normal lung sounds with normal breath sounds; diagnosis: normal. Patient followed for ILD."
    assert validate_report(symptom, row) is None and validate_report(code, row) is None

    folder = _copy_vocabulary(tmp_path, monkeypatch)
    shared = json.loads((folder / "shared.json").read_text())
    shared["finding_terms"].append("hemoptysis")
    (folder / "shared.json").write_text(json.dumps(shared))
    kauh = json.loads((folder / "KAUH_lung_sounds.json").read_text())
    kauh["codes"]["diagnosis"].append("ild")
    kauh["words"]["ild"] = "interstitial lung disease (ILD)"
    kauh["finding_words"]["ild"] = ["ILD"]
    (folder / "KAUH_lung_sounds.json").write_text(json.dumps(kauh))

    assert validate_report(symptom, row) == "invented finding: 'hemoptysis'"
    assert validate_report(code, row) == "invented finding: 'ILD'"
    # The new code is rendered and required too.
    ild = dict(row, label="abnormal", diagnosis="ild")
    assert "diagnosis: interstitial lung disease (ILD)." in write_report(ild) and "ILD" in findings(ild)
    assert write_meta_report(ild).split("Diagnosis: ")[1].startswith("Interstitial lung disease (ILD),")


def test_a_code_with_two_meanings_is_refused(tmp_path, monkeypatch):
    import json

    from acula_train.report_validation import vocabulary

    folder = _copy_vocabulary(tmp_path, monkeypatch)
    pascal = json.loads((folder / "PASCAL_CHSC2011.json").read_text())
    pascal["words"]["copd"] = "chronic obstructive pulmonary disease"  # KAUH_lung_sounds.json says "... (COPD)"
    (folder / "PASCAL_CHSC2011.json").write_text(json.dumps(pascal))
    with pytest.raises(ValueError, match=r"words\['copd'\]"):
        vocabulary()
    pascal["words"].pop("copd")
    pascal["source_dataset"] = "Yaseen2018"
    (folder / "PASCAL_CHSC2011.json").write_text(json.dumps(pascal))
    with pytest.raises(ValueError, match="a second vocabulary file for source 'Yaseen2018'"):
        vocabulary()


# ----------------------------------------------------------------------------------------------- CirCor rows


@pytest.fixture(scope="module")
def circor_rows(circor_sample):
    import warnings

    from acula_train.layouts import load_layout

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_layout("circor", circor_sample, read_audio_info=False).rows


def test_circor_reports_carry_the_murmur_at_the_site(circor_rows):
    by_kind = {}
    for row in circor_rows:
        report = write_report(row)
        assert validate_report(report, row) is None, report
        assert "murmur" in report.lower() and "valve area" in report
        by_kind.setdefault(row["murmur_at_site"], (row, report))
    row, report = by_kind["here"]
    assert report.startswith("Heart sound recording of a ")
    assert f"grade {row['systolic_murmur_grading']}" in report and "Murmur heard at this site" in report
    assert "No murmur heard at this site; the patient has a" in by_kind["elsewhere"][1]
    assert "No murmur heard (murmur absent)." in by_kind["absent"][1]
    assert "not determined" in by_kind["unknown"][1]
    meta = write_meta_report(by_kind["here"][0])
    assert "Murmur at this site: Present" in meta and "Systolic murmur grading: " in meta


def test_circor_rewrites_are_checked_against_the_age_group(circor_rows):
    row = next(r for r in circor_rows if r["age_group"] == "Child" and r["murmur_at_site"] == "absent")
    template = write_report(row)
    assert validate_report(template.replace("child", "paediatric patient"), row) is None
    reason = validate_report(template.replace("child", "elderly adult"), row)
    assert reason is not None and reason.startswith("wrong age") and "Child" in reason
    loud = template.replace("No murmur heard (murmur absent).", "A grade IV/VI murmur is heard.")
    assert validate_report(loud, row) is not None


def test_findings_only_reports_keep_the_murmur_and_drop_subject_site_and_source(circor_rows, manifest):
    from acula_train.manifest import Manifest

    circor = Manifest(rows=list(circor_rows), root=manifest.root, source="circor", row_label="row")
    full, _ = build_reports(circor)
    only, stats = build_reports(circor, fields=["findings"])
    assert stats["source"] == "template" and len(only) == len(full)
    for row, report, whole in zip(circor_rows, only, full):
        assert report != whole and report.startswith("Heart sound recording.")
        assert "valve area" not in report.split(".", 1)[0]  # no site in the first sentence
        for word in ("child", "infant", "adolescent", "neonate", "male", "female", "Brazil"):
            assert word not in report, (word, report)
        if row["murmur_at_site"] == "here":
            assert "Murmur heard at this site" in report and f"grade {row['systolic_murmur_grading']}" in report
    # Named fields come back in REPORT_FIELDS order, whatever order they were given in.
    assert resolve_report_fields(["murmur_at_site", "modality"]) == ("modality", "murmur_at_site")
    assert resolve_report_fields(None) == REPORT_FIELDS
    # The dev pack's rows keep their findings (label, diagnosis, sound type) and lose their site and device.
    kauh = _first(manifest, source_dataset="KAUH_lung_sounds")
    text, _ = build_reports(manifest.select([manifest.rows.index(kauh)]), fields=["findings"])
    assert "diagnosis" in text[0].lower() and "Stethoscope" not in text[0] and "chest" not in text[0]
    # write_report with the same fields, as the evaluator writes a findings-only run's retrieval texts.
    assert write_report(kauh, fields=["findings"]) == text[0]
    assert [write_report(row, fields=["findings"]) for row in circor_rows] == only
    assert write_report(kauh, fields=None) == write_report(kauh) != text[0]


def test_report_fields_are_checked(manifest):
    with pytest.raises(ValueError, match=r"--report_fields: 'age_years' is not a report field.*findings"):
        resolve_report_fields(["age_years"])
    subset = manifest.select(range(3))
    named = r"rows without any of the --report_fields \(murmur_at_site\): \S*metadata.csv line 2; "
    with pytest.raises(ValueError, match=named):
        build_reports(subset, fields=["murmur_at_site"])  # dev-pack rows have no CirCor murmur
