"""The recipe study: linear CKA of the movement against a numpy transcription, and a tiny study end to end (two real
tiny Whisper runs on the CirCor sample, the held-out loss, the movement, one evaluation, the tables, resume)."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_acula
from acula_eval.movement import embedding_cka
from acula_eval.recipe_study import RecipeStudy, Study, recipe_row, run_state, study_markdown
from tests.testing_utils import REPO, run_in_process, tiny_whisper_config

WINDOW = 2.0


def numpy_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. for linear CKA: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred X, Y."""
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x, "fro") ** 2
    return float(cross / (np.linalg.norm(x.T @ x, "fro") * np.linalg.norm(y.T @ y, "fro")))


# --- the movement's CKA ----------------------------------------------------------------------------------------------


def test_embedding_cka_is_kornbliths_linear_cka_and_has_its_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12))
    y = x @ rng.normal(size=(12, 7)) + 0.5 * rng.normal(size=(60, 7))  # related, of another width
    assert embedding_cka(x, y) == pytest.approx(numpy_linear_cka(x, y), rel=1e-10)
    assert 0.2 < embedding_cka(x, y) < 0.99

    rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert embedding_cka(x, 3.7 * x @ rotation + 5.0) == pytest.approx(1.0, abs=1e-12)  # rotation, scale, shift
    assert embedding_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    # Independent embeddings of many recordings: far from 1 (linear CKA's bias is about width / n here).
    noise = rng.normal(size=(2000, 12))
    assert embedding_cka(rng.normal(size=(2000, 12)), noise) < 0.05
    # A non-isotropic scaling is a change of geometry, and CKA sees it.
    stretched = x * np.r_[10.0, np.ones(11)]
    assert embedding_cka(x, stretched) == pytest.approx(numpy_linear_cka(x, stretched), rel=1e-10)
    assert embedding_cka(x, stretched) < 0.9
    assert embedding_cka(x, np.ones_like(x)) == 0.0  # a collapsed encoder: no similarity, not NaN
    with pytest.raises(ValueError, match="same recordings"):
        embedding_cka(x, x[:-1])


# --- a tiny study end to end -----------------------------------------------------------------------------------------


def in_process(calls: list[list[str]]):
    """The study's launcher, running the two scripts' `main` in this process (real runs, no interpreter start-up)."""
    def launch(command: list[str]) -> int:
        calls.append(command)
        script, argv = Path(command[1]).name, command[2:]
        if script == "train_acula.py":
            run_in_process(argv)
        elif script == "eval_acula.py":
            eval_acula.main(argv)
        else:
            raise AssertionError(command)
        return 0
    return launch


def write_study(root: Path, circor_sample: Path) -> Path:
    from transformers import WhisperModel

    from acula_train.layouts.prepare import main as prepare
    from modeling_acula.convert_whisper import save_whisper_as_acula

    torch.manual_seed(0)
    whisper = root / "tiny-whisper"
    WhisperModel(tiny_whisper_config(encoder_layers=3)).save_pretrained(whisper)
    save_whisper_as_acula(str(whisper), root / "start", WINDOW)
    prepare(["circor", str(circor_sample), "--output", str(root / "circor.csv")])
    study = {
        "name": "tiny", "runs_dir": str(root / "runs"), "results_dir": str(root / "results"),
        "cache_dir": str(root / "cache"), "manifest": str(root / "circor.csv"), "split_column": "split",
        "start": str(root / "start"),
        "train_args": ["--init_from", str(whisper), "--window_seconds", str(WINDOW), "--lora_top_layers", "2",
                       "--config_overrides", json.dumps({"projection_hidden_size": 32, "projection_dim": 16,
                                                         "projection_dropout": 0.0}),
                       "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
                       "--learning_rate", "3e-2", "--max_steps", "3", "--save_steps", "1", "--lora_dropout", "0",
                       "--logging_steps", "1", "--disable_tqdm", "true"],
        "eval_tasks": ["circor_murmur", "circor_murmur_patient"],
        "eval_args": ["--circor", str(circor_sample), "--max_windows_per_recording", "1", "--seeds", "0",
                      "--bootstrap_samples", "200", "--no_plots", "--quiet", "--no_retrieval",
                      "--shared_prefix_layers", "1"],
        "recipes": [{"name": "cka", "args": ["--report_fields", "findings"], "seeds": [0]},
                    {"name": "infonce", "args": ["--alignment_loss", "infonce"], "seeds": [0],
                     "description": "symmetric InfoNCE"}],
    }
    path = root / "study.json"
    path.write_text(json.dumps(study))
    return path


@pytest.fixture(scope="module")
def study_run(circor_sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    path = write_study(root, circor_sample)
    calls: list[list[str]] = []
    payload = RecipeStudy(Study.from_file(path), launcher=in_process(calls), say=lambda line: None).run()
    return {"root": root, "path": path, "payload": payload, "calls": calls}


def test_a_study_trains_measures_evaluates_and_tabulates_every_run(study_run):
    root, payload, calls = study_run["root"], study_run["payload"], study_run["calls"]
    scripts = [Path(command[1]).name for command in calls]
    assert scripts == ["train_acula.py", "train_acula.py", "eval_acula.py"]
    assert calls[0][calls[0].index("--seed") + 1] == "0"
    assert calls[1][calls[1].index("--alignment_loss") + 1] == "infonce"
    assert calls[2][calls[2].index("--reference") + 1] == "start"
    assert calls[2][calls[2].index("--models") + 1 : calls[2].index("--reference")] == [
        "logmel-stats", f"random:{root / 'start'}", str(root / "start"), str(root / "runs" / "cka-s0"),
        str(root / "runs" / "infonce-s0")]

    rows = {row["run"]: row for row in payload["runs"]}
    assert set(rows) == {"cka-s0", "infonce-s0"}
    evaluation = json.loads((root / "results" / "eval" / "results.json").read_text())
    start_mean = evaluation["summary"]["mean_auroc_over_tasks_with_headroom"]["mean_auroc"]["start"]
    for run, row in rows.items():
        assert row["steps"] == 3
        log = [json.loads(line) for line in (root / "runs" / run / "logs" / "train_log.jsonl").read_text().splitlines()]
        assert row["train_alignment_loss"] == log[-1]["alignment_loss"]
        # The sample's 9 val recordings in batches of the training batch (4): two batches, one pair left out.
        record = json.loads((root / "results" / "runs" / f"{run}.json").read_text())
        assert (record["heldout"]["num_pairs"], record["heldout"]["batch_size"], record["heldout"]["num_batches"],
                record["heldout"]["num_left_out"]) == (9, 4, 2, 1)
        assert row["heldout_alignment_loss"] == pytest.approx(np.mean(record["heldout"]["batch_losses"]))
        assert record["movement"]["num_recordings"] == 9
        assert 0.0 < row["movement"] < 0.5 and row["movement"] == pytest.approx(1 - row["cka_to_start"])
        # AUROCs as the evaluation wrote them; the paired mean difference is the run's mean minus the start's.
        for task in ("circor_murmur", "circor_murmur_patient"):
            cell = next(r for r in evaluation["results"] if r["model"] == run and r["task"] == task)
            assert row["auroc"][task] == cell["mean"]
        assert row["paired"]["difference"] == pytest.approx(row["mean_auroc"] - start_mean, abs=1e-9)
        assert row["paired"]["ci_low"] <= row["paired"]["difference"] <= row["paired"]["ci_high"]
    assert rows["cka-s0"]["alignment_loss_kind"] == "debiased_cka"
    # The first held-out batch again, through the model's own forward: the first 4 val recordings, their templated
    # reports and the run's teacher.
    from acula_train.manifest import load_manifest
    from acula_train.reports import write_report
    from acula_train.teacher import load_teacher
    from modeling_acula import AculaFeatureExtractor, AculaForPreTraining
    from modeling_acula.audio_utils import decode_audio

    folder = root / "runs" / "cka-s0"
    manifest = load_manifest(root / "circor.csv")
    first = [i for i, row in enumerate(manifest.rows) if row["split"] == "val"][:4]
    extractor = AculaFeatureExtractor.from_pretrained(folder)
    waveforms = [decode_audio(manifest.audio_paths[i], extractor.sampling_rate) for i in first]
    features = extractor(waveforms, sampling_rate=extractor.sampling_rate, return_tensors="pt")["input_values"]
    # The run trained on findings-only reports (--report_fields findings): its held-out reports are those too.
    from acula_train.reports import FINDINGS_FIELDS

    findings = [{name: manifest.rows[i][name] for name in FINDINGS_FIELDS if name in manifest.rows[i]} for i in first]
    vectors = load_teacher(folder).encode([write_report(row) for row in findings])
    with torch.no_grad():
        output = AculaForPreTraining.from_pretrained(folder / "alignment").eval()(input_values=features,
                                                                                   teacher_embeds=vectors)
    heldout = json.loads((root / "results" / "runs" / "cka-s0.json").read_text())["heldout"]
    assert heldout["report_fields"] == ["findings"]
    assert json.loads((root / "results" / "runs" / "infonce-s0.json").read_text())["heldout"]["report_fields"] is None
    assert heldout["batch_losses"][0] == pytest.approx(float(output.alignment_loss), abs=1e-4)
    # Three steps barely train InfoNCE: on held-out batches of 4 it stays near chance, log(4).
    assert rows["infonce-s0"]["alignment_loss_kind"] == "infonce"
    assert rows["infonce-s0"]["heldout_alignment_loss"] == pytest.approx(math.log(4), abs=0.1)

    recipes = {row["recipe"]: row for row in payload["recipes"]}
    assert recipes["cka"]["heldout_alignment_loss"] == {"mean": rows["cka-s0"]["heldout_alignment_loss"], "std": 0.0,
                                                       "n": 1}
    assert {row["name"] for row in payload["baselines"]} == {"logmel-stats", "random:start", "start"}

    table = (root / "results" / "study.md").read_text()
    run_lines = [line for line in table.splitlines() if line.startswith(("| cka-s0 |", "| infonce-s0 |"))]
    assert len(run_lines) == 2
    cells = run_lines[0].split(" | ")
    assert cells[3] == "3" and cells[5].startswith(f"{rows['cka-s0']['heldout_alignment_loss']:.3f} ± ")
    assert f"| {rows['cka-s0']['auroc']['circor_murmur']:.3f} |" in run_lines[0]
    assert "| infonce | `--alignment_loss infonce` | 1 |" in table
    assert json.loads((root / "results" / "study.json").read_text())["runs"] == payload["runs"]


def test_a_second_call_skips_what_is_done_and_resumes_an_interrupted_run(study_run):
    root, path = study_run["root"], study_run["path"]
    calls: list[list[str]] = []
    RecipeStudy(Study.from_file(path), launcher=in_process(calls), say=lambda line: None).run()
    assert calls == []  # both runs finished and measured, the evaluation up to date

    # A record measured by an older version of the measurements is measured again, with nothing retrained.
    from acula_eval.recipe_study import MEASURE_VERSION

    record_path = root / "results" / "runs" / "cka-s0.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "measure_version": MEASURE_VERSION - 1, "heldout": {}}))
    RecipeStudy(Study.from_file(path), launcher=in_process(calls), say=lambda line: None).run()
    assert calls == [] and json.loads(record_path.read_text()) == record

    # A run killed after a checkpoint, before its folder was written: only checkpoints/ and logs/ are left.
    from acula_eval.embeddings import model_fingerprint

    folder = root / "runs" / "infonce-s0"
    uninterrupted = model_fingerprint(folder)
    for entry in folder.iterdir():
        if entry.name not in ("checkpoints", "logs"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    assert run_state(folder) == "interrupted" and run_state(root / "runs" / "cka-s0") == "finished"
    payload = RecipeStudy(Study.from_file(path), launcher=in_process(calls), say=lambda line: None).run()
    assert len(calls) == 1 and calls[0][-2:] == ["--resume_from_checkpoint", "latest"]
    assert calls[0][calls[0].index("--output_dir") + 1] == str(folder)
    assert run_state(folder) == "finished"
    # The resumed run ends with the uninterrupted run's weights, so its measurements and the evaluation still hold.
    assert model_fingerprint(folder) == uninterrupted
    assert payload["runs"] == study_run["payload"]["runs"]


def test_dry_run_prints_the_commands_and_runs_nothing(study_run, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_study_script", REPO / "scripts" / "recipe_study.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    main = script.main
    study = json.loads(study_run["path"].read_text())
    study.update(runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"))
    (tmp_path / "study.json").write_text(json.dumps(study))
    assert main([str(tmp_path / "study.json"), "--dry_run"]) is None
    out = capsys.readouterr().out
    assert out.count("train_acula.py") == 2 and "eval_acula.py" in out and "--seed 0" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_tables_only_keeps_runs_whose_folders_are_gone_and_reads_other_evaluations(study_run, tmp_path):
    """A run's record and its AUROCs outlive its folder; a seed evaluated separately fills its columns from that
    evaluation, which must score the start alike (else its columns would not compare)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("recipe_study_script", REPO / "scripts" / "recipe_study.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    root, before = study_run["root"], study_run["payload"]
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    # A second seed of "cka", trained and evaluated on its own: its record, and an evaluation holding it.
    record = json.loads((results / "runs" / "cka-s0.json").read_text())
    (results / "runs" / "cka-s1.json").write_text(json.dumps({**record, "run": "cka-s1", "seed": 1}))
    own = (results / "eval" / "results.json").read_text()
    separate = json.loads(own.replace('"cka-s0"', '"cka-s1"'))
    separate["models"] = [m for m in separate["models"] if m["name"] != "infonce-s0"]
    (tmp_path / "seed-1.json").write_text(json.dumps(separate))
    study = json.loads(study_run["path"].read_text())
    study.update(runs_dir=str(tmp_path / "no-runs"), results_dir=str(results),
                 evaluations=[str(tmp_path / "seed-1.json")])
    study["recipes"][0]["seeds"] = [0, 1]
    (tmp_path / "study.json").write_text(json.dumps(study))

    payload = script.main([str(tmp_path / "study.json"), "--tables_only"])  # no run folder exists: nothing trains
    assert not (tmp_path / "no-runs").exists()
    rows = {row["run"]: row for row in payload["runs"]}
    assert set(rows) == {"cka-s0", "cka-s1", "infonce-s0"}
    old = {row["run"]: row for row in before["runs"]}
    assert rows["cka-s0"] == old["cka-s0"] and rows["infonce-s0"] == old["infonce-s0"]
    assert rows["cka-s1"]["auroc"] == old["cka-s0"]["auroc"] and rows["cka-s1"]["seed"] == 1
    cka = next(row for row in payload["recipes"] if row["recipe"] == "cka")
    assert cka["seeds"] == [0, 1] and cka["mean_auroc"]["n"] == 2
    assert payload["evaluations"] == [str(results / "eval" / "results.json"), str(tmp_path / "seed-1.json")]
    assert "seed-1.json" in (results / "study.md").read_text()

    # An evaluation that scores the start differently (other settings) is refused, naming both files and the task.
    task = separate["results"][0]["task"]
    for cell in separate["results"]:
        if cell["model"] == "start" and cell["task"] == task and cell.get("metric") == "roc_auc":
            cell["mean"] += 0.01
    (tmp_path / "seed-1.json").write_text(json.dumps(separate))
    with pytest.raises(ValueError, match=f"score 'start' differently on {task}"):
        script.main([str(tmp_path / "study.json"), "--tables_only"])
    separate["models"] = [m for m in separate["models"] if m["name"] != "start"]
    (tmp_path / "seed-1.json").write_text(json.dumps(separate))
    with pytest.raises(ValueError, match="has no column 'start'"):
        script.main([str(tmp_path / "study.json"), "--tables_only"])


def test_recipe_rows_aggregate_seeds_and_the_study_file_is_checked():
    from acula_eval.recipe_study import Recipe

    rows = [{"seed": s, "steps": 10, "train_alignment_loss": 0.5, "heldout_alignment_loss": h, "movement": m,
             "mean_auroc": a, "auroc": {"t": a}, "paired": {"difference": d, "ci_low": d - 0.1, "ci_high": d + 0.1}}
            for s, h, m, a, d in [(0, 0.9, 0.01, 0.70, 0.01), (1, 0.7, 0.03, 0.74, 0.03), (2, 0.8, 0.02, 0.72, 0.02)]]
    row = recipe_row(Recipe("r", ["--lora_r", "16"], [0, 1, 2]), rows, ["t"])
    assert row["heldout_alignment_loss"] == pytest.approx({"mean": 0.8, "std": 0.1, "n": 3})
    assert row["auroc"]["t"] == pytest.approx({"mean": 0.72, "std": 0.02, "n": 3})
    assert row["paired_difference"]["mean"] == pytest.approx(0.02)
    markdown = study_markdown({"study": {"name": "s", "runs_dir": "r", "manifest": "m", "split_column": "split",
                                         "heldout_splits": ["val"], "start": "start"}, "tasks": ["t"],
                               "reference": "start", "runs": [], "recipes": [row], "baselines": [],
                               "evaluation": None})
    assert ("| r | `--lora_r 16` | 3 | 0.800 ± 0.100 | 0.0200 ± 0.0100 | 0.720 ± 0.020 | 0.720 ± 0.020 "
            "| 0.020 ± 0.010 |") in markdown

    base = {"name": "s", "runs_dir": "r", "manifest": "m", "start": "x/start"}
    with pytest.raises(ValueError, match="--seed"):
        Study.from_dict({**base, "recipes": [{"name": "a", "args": ["--seed", "3"]}]})
    with pytest.raises(ValueError, match="--output_dir"):
        Study.from_dict({**base, "train_args": ["--output-dir=x"], "recipes": [{"name": "a"}]})
    with pytest.raises(ValueError, match="repeat"):
        Study.from_dict({**base, "recipes": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ValueError, match="unknown fields"):
        Study.from_dict({**base, "recipes": [{"name": "a", "seed": [1]}]})
    with pytest.raises(ValueError, match="--reference"):
        Study.from_dict({**base, "eval_args": ["--reference", "y"], "recipes": [{"name": "a"}]})


def test_the_example_study_file_is_valid_and_covers_the_levers():
    study = Study.from_file(REPO / "examples" / "recipe_study_circor.json")
    assert study.start_name == "whisper-base-frozen-10s" and study.heldout_splits == ["val"]
    flags = " ".join(arg for recipe in study.recipes for arg in recipe.args)
    for lever in ("--lora_top_layers", "--lora_include_mlp", "--lora_r", "--learning_rate", "--num_train_epochs",
                  "infonce", "released_covariance_cka", "identity", "linear", "preservation"):
        assert lever in flags, lever
    assert len(next(recipe for recipe in study.recipes if recipe.name == "default").seeds) >= 3


def test_the_release_data_study_file_compares_with_the_circor_study():
    circor = Study.from_file(REPO / "examples" / "recipe_study_circor.json")
    release = Study.from_file(REPO / "examples" / "recipe_study_release_data.json")
    assert release.runs_dir != circor.runs_dir and release.manifest != circor.manifest
    assert release.eval_tasks == circor.eval_tasks and release.eval_args == circor.eval_args
    assert release.start_name == circor.start_name and release.ceiling == circor.ceiling
    shared = {recipe.name: recipe.args for recipe in circor.recipes}
    assert all(shared[recipe.name] == recipe.args for recipe in release.recipes)
