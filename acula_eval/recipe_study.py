"""A recipe study: several alignment recipes x seeds, trained, measured and evaluated from one study file.

    python scripts/recipe_study.py examples/recipe_study_circor.json [--dry_run] [--recipes default infonce]

The study file (JSON) names the shared settings and the recipes:

    {
      "name": "circor-recipes",                     # results go to results/<name>/ (or "results_dir")
      "runs_dir": "../runs/circor-recipes",          # one train_acula.py output folder per run: <recipe>-s<seed>
      "manifest": "../circor/manifest.csv", "split_column": "split",
      "start": "../runs/whisper-base-frozen-10s",   # the frozen start as an encoder folder: reference column
      "ceiling": "../runs/ceiling-circor",           # optional: a supervised ceiling's folder (ceiling:<folder>)
      "train_args": ["--num_train_epochs", "5", "--save_steps", "10"],      # every run's train_acula.py flags
      "eval_tasks": ["circor_murmur", "circor_murmur_patient"],
      "eval_args": ["--circor", "../circor/data", "--max_windows_per_recording", "1", "--seeds", "0"],
      "heldout_splits": ["val"],                     # the held-out alignment loss and the movement read these rows
      "cache_dir": null,                             # acula's cache root (default: $ACULA_CACHE, ...)
      "evaluations": ["results/circor-recipes/eval-seed-1/results.json"],  # optional: other evaluations' columns
      "recipes": [{"name": "default", "args": [], "seeds": [0, 1, 2]},
                  {"name": "infonce", "args": ["--alignment_loss", "infonce"], "seeds": [0]}]
    }

Paths are relative to the working folder, as on the command lines of `train_acula.py` and `eval_acula.py`. For each
recipe x seed, in file order: `train_acula.py <train_args> <recipe args> --seed S --output_dir <runs_dir>/<run>` runs
as a subprocess (a finished folder is skipped, an interrupted one resumed with `--resume_from_checkpoint latest`),
then the run's held-out alignment loss ([`~acula_eval.heldout_loss.heldout_alignment_loss`]) and its movement from
the start ([`~acula_eval.movement.encoder_movement`], with the evaluation's embedding settings, so the vectors are
shared) are written to `<results_dir>/runs/<run>.json` (recomputed only when the run's weights change). Then
`eval_acula.py` runs once over every finished run beside the baselines (`logmel-stats`, `random:<start>`, the start,
`ceiling:<folder>`), with `--reference <start>` (skipped when its command and the runs' weights are those of the
last evaluation), and `study.md` / `study.json` are written: one row per run and one per recipe (mean ± std over its
seeds). Re-running the command after a crash continues where it stopped.

A run's record outlives its folder: the tables hold every run with a record (`--tables_only` rewrites them from the
records alone, training and measuring nothing). Runs evaluated by separate `eval_acula.py` commands (a seed trained
later, a run folder since lost) take their AUROCs from the `evaluations` listed, the study's own evaluation first;
those must score the reference column alike on their shared tasks (the same probes on the same embeddings), else
their columns would not compare and the tables are refused.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acula_train.checkpoints import list_checkpoints
from acula_train.manifest import load_manifest
from acula_train.output_folder import refuse_stale_checkpoints
from modeling_acula.file_utils import write_json_atomic

from .embeddings import model_fingerprint
from .heldout_loss import heldout_alignment_loss, heldout_rows
from .movement import encoder_movement

REPO = Path(__file__).resolve().parents[1]
STUDY_FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Flags the study sets itself, per run or for the evaluation: a recipe or shared list must not set them too.
# Bumped when what `measure` computes changes, so that records of the same weights are measured again.
# 2: the held-out reports follow the run's --report_fields (1 wrote every field).
MEASURE_VERSION = 2
TRAIN_FLAGS_OWNED = ("--output_dir", "--seed", "--resume_from_checkpoint", "--overwrite_output_dir", "--manifest",
                     "--split_column", "--cache_dir")
EVAL_FLAGS_OWNED = ("--models", "--model_names", "--reference", "--output_dir", "--tasks", "--add_baselines",
                    "--cache_dir", "--update_model_cards")

Launcher = Callable[[list[str]], int]


def _flags(args: Sequence[str]) -> set[str]:
    return {arg.split("=", 1)[0].replace("-", "_").replace("__", "--", 1) for arg in args if arg.startswith("--")}


def _refuse_owned(args: Sequence[str], owned: Sequence[str], where: str) -> None:
    clash = sorted(_flags(args) & set(owned))
    if clash:
        raise ValueError(f"{where} sets {', '.join(clash)}, which the study sets itself.")


@dataclass
class Recipe:
    """
    One alignment recipe of a study.

    Args:
        name (`str`): short name; the runs are `<name>-s<seed>` (letters, digits, `_`, `.`, `-`).
        args (`list[str]`): `train_acula.py` flags on top of the study's `train_args`.
        seeds (`list[int]`): one run per seed (`--seed`); finalists get 3 or more.
        description (`str`, *optional*): what the recipe changes, for the table.
    """

    name: str
    args: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    description: str = ""


@dataclass
class Study:
    """
    A study file's settings (see the module docstring for the JSON layout).

    Args:
        name (`str`): the study's name; results go to `results/<name>` unless `results_dir` is given.
        runs_dir (`str`): where the run folders go.
        manifest (`str`): the alignment manifest (every run trains on it; its held-out rows are measured).
        start (`str`): the frozen start as an encoder folder (the reference column and the movement's origin).
        recipes (`list[Recipe]`): the recipes.
        split_column (`str`, *optional*, defaults to `"split"`): the manifest's split column.
        train_args (`list[str]`): flags of every training run.
        eval_tasks (`list[str]`): `eval_acula.py --tasks`.
        eval_args (`list[str]`): other `eval_acula.py` flags (`--circor`, `--max_windows_per_recording`, ...).
        ceiling (`str`, *optional*): a supervised ceiling's folder.
        heldout_splits (`list[str]`, *optional*, defaults to `["val"]`): rows of the held-out loss and movement.
        results_dir (`str`, *optional*): default `results/<name>`.
        cache_dir (`str`, *optional*): acula's cache root for training, the held-out loss and the evaluation
            (default: acula's own default, `$ACULA_CACHE` when set).
        evaluations (`list[str]`, *optional*): `results.json` files of other `eval_acula.py` runs (with
            `--reference <start>`) whose columns fill the AUROCs of the runs the study's own evaluation lacks.
    """

    name: str
    runs_dir: str
    manifest: str
    start: str
    recipes: list[Recipe]
    split_column: str = "split"
    train_args: list[str] = field(default_factory=list)
    eval_tasks: list[str] = field(default_factory=list)
    eval_args: list[str] = field(default_factory=list)
    ceiling: str | None = None
    heldout_splits: list[str] = field(default_factory=lambda: ["val"])
    results_dir: str | None = None
    cache_dir: str | None = None
    evaluations: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Study":
        known = {name for name in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known - {"description"})
        if unknown:
            raise ValueError(f"Unknown study fields {unknown}; known: {sorted(known)}.")
        missing = [name for name in ("name", "runs_dir", "manifest", "start", "recipes") if name not in data]
        if missing:
            raise ValueError(f"The study file lacks {missing}.")
        recipes = []
        for entry in data["recipes"]:
            unknown = sorted(set(entry) - {"name", "args", "seeds", "description"})
            if unknown:
                raise ValueError(f"Recipe {entry.get('name')!r}: unknown fields {unknown}.")
            recipes.append(Recipe(**entry))
        study = cls(**{**{k: v for k, v in data.items() if k in known}, "recipes": recipes})
        study.validate()
        return study

    @classmethod
    def from_file(cls, path: str | Path) -> "Study":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"Study file {path} is not readable JSON ({error}).") from error
        return cls.from_dict(data)

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"Study name {self.name!r}: use letters, digits, '_', '.' and '-'.")
        if not self.recipes:
            raise ValueError("The study lists no recipes.")
        names = [recipe.name for recipe in self.recipes]
        if len(set(names)) != len(names):
            raise ValueError(f"Recipe names repeat: {names}.")
        _refuse_owned(self.train_args, TRAIN_FLAGS_OWNED, "train_args")
        _refuse_owned(self.eval_args, EVAL_FLAGS_OWNED, "eval_args")
        for recipe in self.recipes:
            if not _NAME.match(recipe.name):
                raise ValueError(f"Recipe name {recipe.name!r}: use letters, digits, '_', '.' and '-'.")
            if not recipe.seeds or len(set(recipe.seeds)) != len(recipe.seeds):
                raise ValueError(f"Recipe {recipe.name!r}: seeds must be a non-empty list without repeats.")
            _refuse_owned(recipe.args, TRAIN_FLAGS_OWNED, f"recipe {recipe.name!r}")
        if self.start_name in {run for run, _, _ in self.runs()}:
            raise ValueError(f"A run is named like the start folder {self.start_name!r}: rename the recipe.")

    @property
    def start_name(self) -> str:
        return Path(self.start).name

    @property
    def results_path(self) -> Path:
        return Path(self.results_dir or Path("results") / self.name)

    def runs(self) -> list[tuple[str, Recipe, int]]:
        """`(run name, recipe, seed)` of every run, in file order."""
        return [(f"{recipe.name}-s{seed}", recipe, int(seed)) for recipe in self.recipes for seed in recipe.seeds]

    def run_dir(self, run: str) -> Path:
        return Path(self.runs_dir) / run


# ---------------------------------------------------------------------------------------------------- the runs


def run_state(folder: Path) -> str:
    """`"finished"` (its final folder is written, no later checkpoint), `"interrupted"` (checkpoints of a run that
    never wrote its folder: resume) or `"new"`."""
    if (folder / "training_args.json").is_file() and (folder / "alignment" / "config.json").is_file():
        try:
            refuse_stale_checkpoints(folder)  # the training app's own rule for "finished"
            return "finished"
        except ValueError:
            return "interrupted"
    return "interrupted" if list_checkpoints(folder / "checkpoints") else "new"


def train_command(study: Study, recipe: Recipe, seed: int, state: str) -> list[str]:
    """The `train_acula.py` command of one run."""
    command = [sys.executable, str(REPO / "train_acula.py"), "--manifest", study.manifest,
               "--split_column", study.split_column, *study.train_args, *recipe.args,
               "--seed", str(seed), "--output_dir", str(study.run_dir(f"{recipe.name}-s{seed}"))]
    if study.cache_dir:
        command += ["--cache_dir", study.cache_dir]
    if state == "interrupted":
        command += ["--resume_from_checkpoint", "latest"]
    return command


def eval_command(study: Study, runs: Sequence[str]) -> list[str]:
    """The one `eval_acula.py` command over the finished runs and the baselines."""
    models = ["logmel-stats", f"random:{study.start}", study.start, *(str(study.run_dir(run)) for run in runs)]
    if study.ceiling:
        models.append(f"ceiling:{study.ceiling}")
    command = [sys.executable, str(REPO / "eval_acula.py"), "--models", *models, "--reference", study.start_name,
               "--output_dir", str(study.results_path / "eval")]
    if study.eval_tasks:
        command += ["--tasks", *study.eval_tasks]
    if study.cache_dir:
        command += ["--cache_dir", str(Path(study.cache_dir) / "embeddings")]
    return command + list(study.eval_args)


def embedding_settings(study: Study) -> dict[str, Any]:
    """The evaluation's embedder settings, read with `eval_acula.py`'s own parser, so that the movement embeds
    exactly as the evaluation does (and both share the cached vectors)."""
    from transformers import HfArgumentParser

    from .runner import EvalArguments

    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(args=["--models", "x", *study.eval_args])
    cache = study.cache_dir and str(Path(study.cache_dir) / "embeddings")
    return {"device": args.device, "batch_size": args.batch_size, "window_seconds": args.window_seconds,
            "hop_seconds": args.hop_seconds, "autocast_dtype": args.autocast_dtype,
            "decode_workers": args.decode_workers, "cache_dir": False if args.no_cache else cache,
            "max_windows_per_recording": args.max_windows_per_recording,
            "shared_prefix_layers": args.shared_prefix_layers}


def subprocess_launcher(command: list[str]) -> int:
    """Run a command, its output going to this terminal; returns its exit status."""
    return subprocess.run(command, check=False).returncode


def training_summary(folder: Path) -> dict[str, Any]:
    """Steps and the last logged losses of a finished run (`logs/train_log.jsonl`)."""
    log = folder / "logs" / "train_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    if not records:
        return {"steps": None, "loss": None, "alignment_loss": None}
    last = records[-1]
    return {"steps": last.get("step"), "loss": last.get("loss"), "alignment_loss": last.get("alignment_loss"),
            "alignment_batch_size": last.get("alignment_batch_size")}


class RecipeStudy:
    """
    Runs a [`Study`]: trains, measures, evaluates and tabulates, resumably.

    Args:
        study ([`Study`]): the settings.
        launcher (`Callable[[list[str]], int]`, *optional*): runs one command, returns its exit status (default:
            a subprocess; tests run the scripts' `main` in-process).
        recipes (`Sequence[str]`, *optional*): only these recipes (all of them in the tables that exist).
        say (`Callable[[str], None]`, *optional*, defaults to `print`): progress lines.
    """

    def __init__(self, study: Study, launcher: Launcher | None = None, recipes: Sequence[str] | None = None,
                 say: Callable[[str], None] = print):
        self.study = study
        self.launcher = launcher or subprocess_launcher
        self.say = say
        unknown = sorted(set(recipes or ()) - {recipe.name for recipe in study.recipes})
        if unknown:
            raise ValueError(f"Unknown recipes {unknown}; the study has {[r.name for r in study.recipes]}.")
        self.selected = set(recipes) if recipes else {recipe.name for recipe in study.recipes}

    def _launch(self, command: list[str], what: str) -> None:
        status = self.launcher(command)
        if status != 0:
            raise RuntimeError(f"{what} failed (exit status {status}): {shlex.join(command)}\nRe-run the study to "
                               "continue from here.")

    def run(self, dry_run: bool = False, evaluate: bool = True, tables_only: bool = False) -> dict[str, Any] | None:
        """Train (or resume, or skip) every run, measure it, evaluate once and write the tables.

        Args:
            dry_run (`bool`, *optional*, defaults to `False`): print the commands and what would happen, do nothing.
            evaluate (`bool`, *optional*, defaults to `True`): run `eval_acula.py` (else the tables hold the
                losses and the movement only, and the AUROCs of an earlier evaluation if there is one).
            tables_only (`bool`, *optional*, defaults to `False`): train, measure and evaluate nothing: rewrite the
                tables from the runs' records and the evaluations there are.

        Returns:
            The `study.json` payload (`None` for a dry run).
        """
        study = self.study
        if tables_only:
            return self.write_tables(self.recorded_runs())
        runs = [run for run in study.runs() if run[1].name in self.selected]
        self.say(f"[study {study.name}] {len(runs)} runs of {len(self.selected)} recipes; results in "
                 f"{study.results_path}")
        for number, (run, recipe, seed) in enumerate(runs, 1):
            folder = study.run_dir(run)
            state = run_state(folder)
            prefix = f"[study {study.name}] {number}/{len(runs)} {run}"
            if state == "finished":
                self.say(f"{prefix}: finished, training skipped")
            else:
                command = train_command(study, recipe, seed, state)
                self.say(f"{prefix}: {'resuming' if state == 'interrupted' else 'training'}: {shlex.join(command)}")
                if not dry_run:
                    self._launch(command, f"training {run}")
                    if run_state(folder) != "finished":
                        raise RuntimeError(f"training {run} exited without writing its folder {folder}.")
            if not dry_run:
                self.measure(run, recipe, seed)
        # A dry run shows the evaluation the real one would end with: over every run of the study.
        finished = [run for run, _, _ in study.runs() if dry_run or run_state(study.run_dir(run)) == "finished"]
        if evaluate:
            command = eval_command(study, finished)
            if dry_run:
                self.say(f"[study {study.name}] evaluation: {shlex.join(command)}")
            elif finished:
                self.evaluate(command, finished)
        if dry_run:
            return None
        return self.write_tables(self.recorded_runs())

    def recorded_runs(self) -> list[str]:
        """The study's runs that have a record (measured once, whether or not their folder is still there)."""
        return [run for run, _, _ in self.study.runs() if self.record_path(run).is_file()]

    def record_path(self, run: str) -> Path:
        return self.study.results_path / "runs" / f"{run}.json"

    # ------------------------------------------------------------------------------------------------ per run

    def measure(self, run: str, recipe: Recipe, seed: int) -> dict[str, Any]:
        """The held-out alignment loss and the movement of a finished run, cached in `<results_dir>/runs/<run>.json`
        under the run's weights and `MEASURE_VERSION` (recomputed when either changes)."""
        study = self.study
        folder = study.run_dir(run)
        record_path = self.record_path(run)
        fingerprint = model_fingerprint(folder)
        if record_path.is_file():
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("fingerprint") == fingerprint and record.get("measure_version") == MEASURE_VERSION:
                self.say(f"[study {study.name}] {run}: held-out loss and movement already measured")
                return record
        self.say(f"[study {study.name}] {run}: held-out alignment loss and movement on {study.heldout_splits}")
        heldout = heldout_alignment_loss(folder, study.manifest, split_column=study.split_column,
                                         splits=study.heldout_splits, cache_dir=study.cache_dir,
                                         device=embedding_settings(study)["device"], show_progress=False)
        paths = heldout_rows(load_manifest(study.manifest), study.split_column, study.heldout_splits).audio_paths
        settings = embedding_settings(study)
        movement = encoder_movement(study.start, folder, paths, show_progress=False, **settings)
        record = {"run": run, "recipe": recipe.name, "seed": seed, "folder": str(folder), "fingerprint": fingerprint,
                  "measure_version": MEASURE_VERSION,
                  "train": training_summary(folder), "heldout": heldout, "movement": movement}
        write_json_atomic(record_path, record)
        return record

    # ------------------------------------------------------------------------------------------------ evaluation

    def evaluate(self, command: list[str], runs: Sequence[str]) -> None:
        """One `eval_acula.py` over every finished run and the baselines; skipped when the last one ran the same
        command on the same weights."""
        output = self.study.results_path / "eval"
        stamp_path = output / "study_eval.json"
        stamp = {"command": command[1:], "fingerprints": {run: model_fingerprint(self.study.run_dir(run))
                                                         for run in runs}}
        if (output / "results.json").is_file() and stamp_path.is_file():
            if json.loads(stamp_path.read_text(encoding="utf-8")) == stamp:
                self.say(f"[study {self.study.name}] evaluation of {len(runs)} runs is up to date, skipped")
                return
        self.say(f"[study {self.study.name}] evaluating {len(runs)} runs beside the baselines: {shlex.join(command)}")
        stamp_path.unlink(missing_ok=True)
        self._launch(command, "evaluation")
        write_json_atomic(stamp_path, stamp)

    # ------------------------------------------------------------------------------------------------ tables

    def write_tables(self, runs: Sequence[str]) -> dict[str, Any]:
        """`study.json` and `study.md` from the records of `runs` (each must have one) and the evaluations' `results.json` (the study's own,
        then the study file's `evaluations`)."""
        study = self.study
        own = study.results_path / "eval" / "results.json"
        files = ([own] if own.is_file() else []) + [Path(path) for path in study.evaluations]
        evaluations = load_evaluations(files, study.start_name)
        rows = [run_row(json.loads(self.record_path(run).read_text(encoding="utf-8")),
                        next((e for e in evaluations if run in model_names(e)), None)) for run in runs]
        tasks = list(dict.fromkeys(task for evaluation in evaluations for task in task_names(evaluation)))
        payload = {
            "format_version": STUDY_FORMAT_VERSION,
            "study": {key: value for key, value in asdict(study).items()},
            "reference": study.start_name,
            "tasks": tasks,
            "runs": rows,
            "recipes": [recipe_row(recipe, [row for row in rows if row["recipe"] == recipe.name], tasks)
                        for recipe in study.recipes],
            "baselines": baseline_rows(evaluations, {row["run"] for row in rows}),
            "evaluation": str(files[0]) if evaluations else None,
            "evaluations": [str(path) for path in files],
        }
        write_json_atomic(study.results_path / "study.json", payload)
        (study.results_path / "study.md").write_text(study_markdown(payload), encoding="utf-8")
        self.say(f"[study {study.name}] wrote {study.results_path / 'study.md'} and study.json ({len(rows)} runs)")
        return payload


# ---------------------------------------------------------------------------------------------------- rows


def model_names(evaluation: dict[str, Any]) -> set[str]:
    return {model["name"] for model in evaluation.get("models", [])}


def load_evaluations(files: Sequence[Path], reference: str) -> list[dict[str, Any]]:
    """The evaluations' `results.json`, checked to compare: each has the reference column, scored alike on the tasks
    they share (the same probes on the same embeddings; else the runs of one would not compare with another's)."""
    evaluations, seen = [], {}
    for path in files:
        try:
            evaluation = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"Evaluation {path}: not readable JSON ({error}).") from error
        if reference not in model_names(evaluation):
            raise ValueError(f"Evaluation {path} has no column {reference!r} (the study's start): run eval_acula.py "
                             f"with the start among its --models and --reference {reference}.")
        for task, score in model_scores(evaluation, reference)["auroc"].items():
            first = seen.setdefault(task, (path, score))
            if score is None or first[1] is None or abs(score - first[1]) > 1e-6:
                raise ValueError(f"Evaluations {first[0]} and {path} score {reference!r} differently on {task} "
                                 f"({first[1]} vs {score}): their settings differ, so their columns do not compare.")
        evaluations.append(evaluation)
    return evaluations


def task_names(evaluation: dict[str, Any] | None) -> list[str]:
    """The AUROC tasks of an evaluation, in its order."""
    if not evaluation:
        return []
    return [task["name"] for task in evaluation.get("tasks", [])
            if any(r["task"] == task["name"] and r.get("metric") == "roc_auc" for r in evaluation["results"])]


def model_scores(evaluation: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """One column of an evaluation: AUROC per task (mean over probe seeds), the mean over the tasks with headroom,
    and the paired difference against the reference over those tasks (with its interval)."""
    if not evaluation:
        return {"auroc": {}, "mean_auroc": None, "paired": None}
    auroc = {r["task"]: r.get("mean") for r in evaluation["results"]
             if r["model"] == name and r.get("metric") == "roc_auc" and r.get("status", "ok") == "ok"}
    summary = evaluation.get("summary", {}).get("mean_auroc_over_tasks_with_headroom", {})
    paired = (evaluation.get("paired_differences") or {}).get("mean_over_tasks_with_headroom", {}).get(name)
    if paired:
        paired = {"difference": paired.get("mean_difference"), "ci_low": paired.get("ci_low"),
                  "ci_high": paired.get("ci_high"), "tasks": paired.get("tasks")}
    return {"auroc": auroc, "mean_auroc": summary.get("mean_auroc", {}).get(name), "paired": paired}


def run_row(record: dict[str, Any], evaluation: dict[str, Any] | None) -> dict[str, Any]:
    heldout, movement, train = record["heldout"], record["movement"], record["train"]
    return {"run": record["run"], "recipe": record["recipe"], "seed": record["seed"], "steps": train["steps"],
            "train_loss": train["loss"], "train_alignment_loss": train["alignment_loss"],
            "alignment_loss_kind": heldout["alignment_loss"], "heldout_alignment_loss": heldout["mean"],
            "heldout_alignment_loss_std": heldout["std"], "heldout_batches": heldout["num_batches"],
            "movement": movement["movement"], "cka_to_start": movement["cka"],
            **model_scores(evaluation, record["run"])}


def _mean_std(values: Sequence[float | None]) -> dict[str, Any] | None:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values)}


def recipe_row(recipe: Recipe, rows: Sequence[dict[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """A recipe's runs aggregated over seeds: mean ± sample std (0 for one seed)."""
    return {
        "recipe": recipe.name, "description": recipe.description, "args": recipe.args,
        "seeds": [row["seed"] for row in rows],
        **{key: _mean_std([row[key] for row in rows])
           for key in ("steps", "train_alignment_loss", "heldout_alignment_loss", "movement", "mean_auroc")},
        "auroc": {task: _mean_std([row["auroc"].get(task) for row in rows]) for task in tasks},
        "paired_difference": _mean_std([(row["paired"] or {}).get("difference") for row in rows]),
    }


def baseline_rows(evaluations: Sequence[dict[str, Any]], runs: set[str]) -> list[dict[str, Any]]:
    """The evaluations' other columns (log-mel statistics, random weights, the start, a ceiling), each from the first
    evaluation that has it."""
    rows, seen = [], set(runs)
    for evaluation in evaluations:
        for model in evaluation.get("models", []):
            if model["name"] not in seen:
                seen.add(model["name"])
                rows.append({"name": model["name"], "kind": model["kind"], **model_scores(evaluation, model["name"])})
    return rows


# ---------------------------------------------------------------------------------------------------- Markdown


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _movement(value: float | None) -> str:
    # Short runs move the encoder by 1e-6 or less: three decimals would print every run as 0.000.
    return "–" if value is None else (f"{value:.1e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}")


def _paired(paired: dict[str, Any] | None) -> str:
    if not paired or paired.get("difference") is None:
        return "–"
    return f"{paired['difference']:+.3f} [{paired['ci_low']:+.3f}, {paired['ci_high']:+.3f}]"


def _aggregate(value: dict[str, Any] | None, formatter: Callable[[float | None], str] = _number) -> str:
    if value is None:
        return "–"
    return formatter(value["mean"]) + (f" ± {formatter(value['std'])}" if value["n"] > 1 else "")


def study_markdown(payload: dict[str, Any]) -> str:
    """`study.md`: the runs, the recipes (mean ± std over seeds) and the evaluation's other columns."""
    study, tasks, reference = payload["study"], payload["tasks"], payload["reference"]
    lines = [f"# Recipe study: {study['name']}", "",
             f"Runs in `{study['runs_dir']}` on `{study['manifest']}` (held-out rows: {study['split_column']} in "
             f"{study['heldout_splits']}); the frozen start `{study['start']}` is the reference. Held-out alignment "
             "loss: the run's loss on the held-out pairs, mean ± std over batches of its training batch size. "
             "Movement: 1 − linear CKA between the start's and the run's embeddings of the held-out recordings. "
             "AUROC: the linear probe's mean over probe seeds per task; paired: aligned − frozen over the tasks "
             "with headroom, with its patient-level bootstrap interval (eval_acula.py).", ""]
    if payload["evaluation"] is None:
        lines += ["No evaluation yet: the AUROC columns are empty.", ""]
    elif len(payload.get("evaluations", [])) > 1:
        lines += ["AUROCs from " + ", ".join(f"`{path}`" for path in payload["evaluations"]) + " (each run's and "
                  f"each other column's from the first that holds it; all score `{reference}` alike).", ""]
    head = ["run", "recipe", "seed", "steps", "train align. loss (last step)", "held-out align. loss", "movement",
            *tasks, "mean AUROC", f"paired − {reference} [95% CI]"]
    lines += ["## Runs", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in payload["runs"]:
        cells = [row["run"], row["recipe"], str(row["seed"]), str(row["steps"]), _number(row["train_alignment_loss"]),
                 f"{_number(row['heldout_alignment_loss'])} ± {_number(row['heldout_alignment_loss_std'])} "
                 f"({row['heldout_batches']})", _movement(row["movement"]),
                 *(_number(row["auroc"].get(task)) for task in tasks), _number(row["mean_auroc"]),
                 _paired(row["paired"])]
        lines.append("| " + " | ".join(cells) + " |")
    head = ["recipe", "flags", "seeds", "held-out align. loss", "movement", *tasks, "mean AUROC",
            f"paired − {reference}"]
    lines += ["", "## Recipes (mean ± std over seeds)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in payload["recipes"]:
        flags = " ".join(row["args"]).replace("|", "\\|") or "(defaults)"
        cells = [row["recipe"], f"`{flags}`", str(len(row["seeds"])), _aggregate(row["heldout_alignment_loss"]),
                 _aggregate(row["movement"], _movement), *(_aggregate(row["auroc"][task]) for task in tasks),
                 _aggregate(row["mean_auroc"]), _aggregate(row["paired_difference"])]
        lines.append("| " + " | ".join(cells) + " |")
    if payload["baselines"]:
        head = ["column", "kind", *tasks, "mean AUROC", f"paired − {reference} [95% CI]"]
        lines += ["", "## Other columns of the evaluations", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for row in payload["baselines"]:
            cells = [row["name"], row["kind"], *(_number(row["auroc"].get(task)) for task in tasks),
                     _number(row["mean_auroc"]), _paired(row["paired"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["Recipe", "RecipeStudy", "Study", "eval_command", "run_state", "study_markdown", "train_command"]
