"""The output folder of a run: written whole beside the old one and swapped in, its model card, its Hub upload.

The folder is always either the previous run's, whole, or this run's, whole (see [`save_output_folder`]); the
zero-shot / retrieval readout is fitted in the staged folder, so that no interruption leaves a folder without it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import modeling_acula
from modeling_acula.file_utils import write_json_atomic

from .checkpoints import list_checkpoints
from .leakage import ALIGNED_RECORDINGS_FILE, write_aligned_recordings
from .model_card import describe_starting_encoder, hub_id_or_none, render_model_card
from .public_paths import (
    LOCAL_RECORD_FILE,
    manifest_relative_path,
    public_teacher_identity,
    public_training_args,
    scrub_config_paths,
    write_local_record,
)

# Files of an output folder that are local state, never uploaded.
UPLOAD_IGNORE_PATTERNS = ["checkpoints/*", "checkpoints/**", "logs/*", "logs/**", "*.tmp", ".*"]
# Where the finished files are staged when the output folder cannot be swapped whole (see `save_output_folder`).
IN_FOLDER_STAGING = ".acula-staging"
# What a run writes into --output_dir (the folder is replaced whole at the end of a run, so nothing else may be there).
OUTPUT_NAMES = frozenset({
    "adapter", "alignment", "classifier", "checkpoints", "logs", "config.json", "preprocessor_config.json", "training_args.json",
    "teacher.json", "data_summary.json", "reports.jsonl", "skipped_rows.jsonl", "README.md", ".gitattributes",
    ALIGNED_RECORDINGS_FILE, LOCAL_RECORD_FILE, IN_FOLDER_STAGING,
    # save_pretrained copies the model code beside the weights (auto_map, for trust_remote_code users)
    *(path.name for path in Path(modeling_acula.__file__).parent.glob("*.py")),
})


def foreign_entries(output_dir: Path) -> list[str]:
    """Entries of `output_dir` that no acula run writes (weights may be sharded: model*.safetensors[.index.json])."""
    if not output_dir.is_dir():
        return []
    return sorted(
        entry.name for entry in output_dir.iterdir()
        if entry.name not in OUTPUT_NAMES and not (entry.name.startswith("model") and ".safetensors" in entry.name)
    )


def refuse_foreign_output_dir(output_dir: Path) -> None:
    """The finished folder replaces --output_dir whole: refuse (before any work) a folder holding other files."""
    foreign = foreign_entries(output_dir)
    if foreign:
        raise ValueError(
            f"--output_dir {output_dir} holds files that train_acula.py does not write ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); a run replaces its output folder whole, so point --output_dir "
            "at a new or empty folder, or at the folder of an earlier acula run."
        )


def refuse_stale_checkpoints(output_dir: Path) -> None:
    """A fresh start must not silently throw away the checkpoints of an interrupted run (one whose final folder was
    never written): the user may want to resume it. A finished run's checkpoints are replaced like its folder.
    (Not called for a resume, nor with --overwrite_output_dir.)"""
    found = list_checkpoints(output_dir / "checkpoints")
    finished = output_dir / "training_args.json"  # written into the final folder, after every checkpoint of its run
    # A checkpoint's files keep their write time through the final folder's hard links; its folder may not.
    written = [(p / "trainer_state.json" if (p / "trainer_state.json").is_file() else p).stat().st_mtime for p in found]
    if found and (not finished.is_file() or max(written) > finished.stat().st_mtime):
        raise ValueError(
            f"{output_dir} holds checkpoints of an interrupted run ({', '.join(p.name for p in found)} in "
            f"{output_dir / 'checkpoints'}). Pass --resume_from_checkpoint latest to continue that run, choose "
            "another --output_dir (or clear this one), or pass --overwrite_output_dir to delete them and start afresh."
        )


def summarise_data(manifest, kept, guard_report, report_stats: dict) -> dict[str, Any]:
    """What `data_summary.json` and the model card say about the data: sources, licences, leakage, reports."""
    sources: dict[str, dict[str, Any]] = {}
    for row in kept.rows:
        name = row.get("source_dataset") or "unspecified"
        entry = sources.setdefault(name, {"count": 0, "license": row.get("license")})
        entry["count"] += 1
    licences = [info.get("license") or "" for info in sources.values()]
    # Published with the model: files are named, never located (no path of the training machine).
    leakage = {**guard_report.to_dict(), "removed": {rule: n for rule, n in guard_report.counts.items() if n}}
    leakage["exclude_sources"] = [Path(source).name for source in leakage.get("exclude_sources", [])]
    return {
        "manifest": Path(manifest.source).name,
        "rows_in_manifest": len(manifest),
        "rows_used": len(kept),
        "sources": sources,
        "modalities": dict(Counter(row.get("modality") or "unspecified" for row in kept.rows)),
        "leakage": leakage,
        "reports": report_stats,
        "all_cc_by_4": bool(licences) and all("CC BY 4.0" in text for text in licences),
    }


def _staging_paths(output_dir: Path) -> tuple[Path, Path]:
    """Hidden siblings of the output folder: the new folder being written, and the previous one during the swap."""
    output_dir = output_dir.resolve()
    return (output_dir.with_name(f".{output_dir.name}.acula-staging"),
            output_dir.with_name(f".{output_dir.name}.acula-previous"))


def can_swap_output_folder(output_dir: Path) -> bool:
    """Whether the finished folder can replace `output_dir` by renames in its parent: not a mount point, not the
    working directory (or above it), and a writable parent on the same file system."""
    output_dir = output_dir.resolve()
    parent = output_dir.parent
    if output_dir == Path(output_dir.anchor) or Path.cwd().resolve().is_relative_to(output_dir):
        return False
    if output_dir.exists() and (os.path.ismount(output_dir) or output_dir.stat().st_dev != parent.stat().st_dev):
        return False
    staging, _ = _staging_paths(output_dir)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        staging.rmdir()
    except OSError:
        return False
    return True


def recover_interrupted_swap(output_dir: Path) -> None:
    """Undo what a run killed inside `save_output_folder` left: its staging folder goes, and if it was killed
    between the two renames of the swap, the previous output folder (with its checkpoints) is put back."""
    staging, previous = _staging_paths(output_dir)
    if previous.exists():
        if output_dir.resolve().exists():
            shutil.rmtree(previous)
        else:
            os.replace(previous, output_dir.resolve())
    for leftover in (staging, output_dir / IN_FOLDER_STAGING):
        if leftover.exists():
            shutil.rmtree(leftover)


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (or, where links are not supported, copy) a folder's files into `target`; the source stays."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, ignore=shutil.ignore_patterns("*.tmp", ".tmp-*"))


def save_output_folder(model, extractor, output_dir: Path, *, full_finetune: bool, reports, kept, summary,
                       teacher_identity, args, run_facts, skipped_rows=(), repo_id: str | None = None,
                       swap_whole: bool = True, fit_readout: Callable[[Path], Any] | None = None,
                       write_alignment: bool = True, write_extra: Callable[[Path, Any], Any] | None = None) -> None:
    """Write the complete output folder as a hidden sibling and swap it in: the output folder is always either
    the previous one, whole, or this run's, whole (never a mix of two runs, never stale files of an earlier run).

    The run's own `checkpoints/` and `logs/` (which live inside the output folder while training) are hard-linked
    into the new folder, so that they stay in place until the swap and a run killed here still resumes. The model
    card names `repo_id` (the Hub id it will be pushed to; default: the folder name).

    Where the folder cannot be renamed (`swap_whole=False`, see [`can_swap_output_folder`]), the new files are
    staged inside it and moved in one by one after the earlier run's files are removed: an interruption there can
    leave a partial folder, but the checkpoints stay and a resume writes it again.

    Args:
        fit_readout (`Callable[[Path], Any]`, *optional*): fits the zero-shot / retrieval readout into the staged
            folder's `alignment/` (see [`~acula_train.readout.write_training_readout`]), before the swap. If it
            fails, the folder is still swapped in, and the error is raised after, naming the refit command.
        write_alignment (`bool`, *optional*, defaults to `True`): write `alignment/` (encoder + projection heads);
            a supervised run (`acula_train.supervised`), whose heads never trained, does not.
        write_extra (`Callable[[Path, model], Any]`, *optional*): writes further files into the staged folder,
            given the merged model (the supervised run's `classifier/`).

    `reports` may be `None` (a run without reports: no `reports.jsonl`).
    """
    recover_interrupted_swap(output_dir)
    staging, previous = _staging_paths(output_dir) if swap_whole else (output_dir / IN_FOLDER_STAGING, None)
    staging.mkdir(parents=True)
    # Everything but checkpoints/, logs/ and hidden files is published: no path of this machine goes in it.
    for config in {id(c): c for c in (model.config, getattr(model, "acula", model).config)}.values():
        scrub_config_paths(config)
    if not full_finetune:
        model.save_pretrained(staging / "adapter")  # the LoRA adapter + trained heads (peft format, safetensors)
        write_adapter_card(staging / "adapter", run_facts.get("init_from"))
        model = model.merge_and_unload()
    if write_alignment:
        model.save_pretrained(staging / "alignment")  # encoder + heads + decoder, for retrieval or more alignment
    model.acula.save_pretrained(staging)  # the merged encoder: what AutoModel loads
    if write_extra is not None:
        write_extra(staging, model)
    extractor.save_pretrained(staging)
    write_json_atomic(staging / "training_args.json", public_training_args(args, output_dir))
    write_json_atomic(staging / "teacher.json", public_teacher_identity(teacher_identity))
    write_json_atomic(staging / "data_summary.json", summary)
    if reports is not None:
        with open(staging / "reports.jsonl", "w", encoding="utf-8") as handle:
            for path, text in zip(kept.audio_paths, reports):
                relative = manifest_relative_path(path, kept.root)  # relative to the manifest's folder
                handle.write(json.dumps({"file": relative, "path": relative, "report": text}) + "\n")
    # Content hash of every aligned recording: the evaluator's leakage check, wherever the data lives then.
    write_aligned_recordings(staging / ALIGNED_RECORDINGS_FILE, kept)
    write_local_record(staging, kept)  # hidden, never uploaded: where the data was on this machine
    with open(staging / "skipped_rows.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in skipped_rows)
    card = render_model_card(repo_id=repo_id or output_dir.name, config=model.config, run=run_facts, data_summary=summary,
                             teacher_identity=public_teacher_identity(teacher_identity))
    card.save(staging / "README.md")
    readout_error = None
    if fit_readout is not None:
        try:
            fit_readout(staging)
        except ValueError as error:  # the trained model is still worth keeping: swap it in, then say so
            readout_error = error
    _swap_in(staging, previous, output_dir.resolve(), swap_whole)
    if readout_error is not None:
        raise ValueError(f"The model folder {output_dir} is written, but its zero-shot / retrieval readout could not "
                         f"be fitted: {readout_error} (refit it with `python -m acula_train.readout fit "
                         f"--model_dir {output_dir}`).") from readout_error


def _swap_in(staging: Path, previous: Path | None, target: Path, swap_whole: bool) -> None:
    """Put the staged folder in place of `target` (see [`save_output_folder`])."""
    refuse_foreign_output_dir(target)  # checked at the start too; files added during the run must not be lost
    if not swap_whole:
        for entry in target.iterdir():  # the earlier run's files (foreign ones were refused above)
            if entry.name not in ("checkpoints", "logs", IN_FOLDER_STAGING):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for entry in staging.iterdir():
            os.replace(entry, target / entry.name)
        staging.rmdir()
        return
    for name in ("checkpoints", "logs"):  # this run's (a run from step 0 cleared an earlier run's)
        if (target / name).is_dir():
            _link_tree(target / name, staging / name)
    if target.exists():
        os.replace(target, previous)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(previous, target)
            raise
        shutil.rmtree(previous)
    else:
        os.replace(staging, target)


def write_adapter_card(adapter_dir: Path, init_from: str | None) -> None:
    """Replace peft's template card (placeholders only) with what the adapter is and what it applies to, and name
    the base model in `adapter_config.json` only by a Hub id (a local path is neither useful nor to be published)."""
    config_path = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = hub_id_or_none(init_from)
    write_json_atomic(config_path, adapter_config)
    base = (f"the encoder this run started from, {describe_starting_encoder(init_from)}" if init_from else
            "the randomly initialised encoder this run started from, which is not published: use the merged model at "
            "the top of this folder instead")
    (adapter_dir / "README.md").write_text(
        "# LoRA adapter of an AcuLa alignment run\n\n"
        f"The peft adapter (and the trained projection heads and decoder) of this run. It applies to {base}. The "
        "top-level folder holds the same encoder with the adapter merged in, which is what "
        "`AutoModel.from_pretrained` loads; see its README.md for the training data, teacher and settings.\n",
        encoding="utf-8",
    )


def upload_file_list(output_dir: str | os.PathLike) -> list[str]:
    """The exact files `--push_to_hub` uploads (relative paths): the folder minus checkpoints, logs and temp files."""
    from huggingface_hub.utils import filter_repo_objects

    root = Path(output_dir)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return sorted(filter_repo_objects(files, ignore_patterns=UPLOAD_IGNORE_PATTERNS))


def push_output_folder(output_dir: Path, repo_id: str, private: bool) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(output_dir), repo_id=repo.repo_id, ignore_patterns=UPLOAD_IGNORE_PATTERNS,
                      commit_message="Upload AcuLa-aligned encoder")
    print(f"Pushed {len(upload_file_list(output_dir))} files to https://huggingface.co/{repo.repo_id}")
    return repo.repo_id


