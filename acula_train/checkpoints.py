"""Crash-safe training checkpoints in safetensors and JSON only.

Accelerate's `save_state` pickles the optimizer, scheduler and RNG states; acula writes nothing that needs
unpickling to resume. A checkpoint is a folder `checkpoints/step-00000042/` holding

- `model.safetensors`: the full state dict of the (unwrapped) model being trained,
- `optimizer.safetensors` + the `optimizer` entry of `trainer_state.json`: tensors and the JSON part of the
  optimizer's state dict,
- `trainer_state.json`: global step, epoch, batches done in that epoch, scheduler state, the run's counters, and
  the settings that define the run (`run_config`: learning rate, batch size, accumulation, seed, process count,
  data, model and adaptation); a resume with other settings is refused, naming the fields that differ.

RNG state is not saved: the training loop derives every random draw (data order, masks, dropout) from the seed
and the step, so a resumed run repeats exactly what the uninterrupted run does.

Writes are atomic: everything goes to a hidden temporary folder that is renamed into place only when complete, so
a crash while saving leaves the previous checkpoint whole and never a half-written one under a checkpoint name.
Pruning (`total_limit`) never removes the checkpoint just written; checkpoints of later steps than it (a timeline
that a resume from an earlier checkpoint replaced) are removed so that `latest` is always the newest one.
A damaged checkpoint file is a `ValueError` naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CHECKPOINT_PREFIX = "step-"
TMP_PREFIX = ".tmp-"
STATE_NAME = "trainer_state.json"
MODEL_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.safetensors"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_step(path: str | os.PathLike) -> int:
    return int(Path(path).name[len(CHECKPOINT_PREFIX):])


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `folder`, oldest first (temporary folders of interrupted saves are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / STATE_NAME).is_file()]
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(folder: str | os.PathLike, which: str) -> Path | None:
    """`which` is `"latest"` (None when there is none yet: a fresh start) or the path of a checkpoint folder."""
    if which == "latest":
        checkpoints = list_checkpoints(folder)
        return checkpoints[-1] if checkpoints else None
    path = Path(which)
    if not (path / STATE_NAME).is_file():
        raise ValueError(f"--resume_from_checkpoint {which}: not a complete acula checkpoint (no {STATE_NAME}).")
    return path


def _optimizer_to_flat(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into named tensors and a JSON-serialisable remainder."""
    tensors: dict[str, torch.Tensor] = {}
    json_state: dict[str, dict[str, Any]] = {}
    for param_id, entries in state_dict["state"].items():
        json_state[str(param_id)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{key}"] = value.detach().cpu().contiguous()
                json_state[str(param_id)][key] = {"tensor": f"{param_id}.{key}"}
            else:
                json_state[str(param_id)][key] = value
    return tensors, {"state": json_state, "param_groups": state_dict["param_groups"]}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], json_part: dict[str, Any]) -> dict[str, Any]:
    state = {}
    for param_id, entries in json_part["state"].items():
        state[int(param_id)] = {
            key: tensors[value["tensor"]] if isinstance(value, dict) and "tensor" in value else value
            for key, value in entries.items()
        }
    return {"state": state, "param_groups": json_part["param_groups"]}


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(
    folder: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    total_limit: int | None = None,
    run_config: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically and keep at most `total_limit` of them. Call on the main process only.

    Args:
        folder (`str` or `os.PathLike`): the run's checkpoints folder.
        step (`int`): global optimisation step the checkpoint is taken after.
        model_state (`dict[str, torch.Tensor]`): state dict of the unwrapped model.
        optimizer (`torch.optim.Optimizer`): its state dict is stored as safetensors + JSON.
        scheduler: a learning-rate scheduler whose `state_dict()` is JSON-serialisable (LambdaLR and friends).
        trainer_state (`dict`): JSON-serialisable loop state (epoch, batches done, counters).
        total_limit (`int`, *optional*): number of checkpoints to keep; older ones are removed after the new one
            is in place. The new one is always kept, and checkpoints of later steps than `step` are removed.
        run_config (`dict`, *optional*): JSON-serialisable settings that define the run; [`load_checkpoint`]
            refuses to resume a run whose settings differ.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    temporary = folder / f"{TMP_PREFIX}{checkpoint_name(step)}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()

    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(temporary / MODEL_NAME))
    optimizer_tensors, optimizer_json = _optimizer_to_flat(optimizer.state_dict())
    save_file(optimizer_tensors, str(temporary / OPTIMIZER_NAME))
    state = {**trainer_state, "global_step": step, "optimizer": optimizer_json, "scheduler": scheduler.state_dict()}
    if run_config is not None:
        state["run_config"] = run_config
    (temporary / STATE_NAME).write_text(json.dumps(state, indent=1), encoding="utf-8")
    _fsync_folder(temporary)  # complete on disk before it is published under its name

    if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(temporary, final)

    # Never prune the checkpoint just written. Later steps than it belong to a timeline this run replaced (it
    # resumed from an earlier checkpoint); left in place they would be what `latest` resumes from.
    others = [p for p in list_checkpoints(folder) if p.name != final.name]
    for stale in [p for p in others if checkpoint_step(p) > step]:
        shutil.rmtree(stale, ignore_errors=True)
    if total_limit is not None and total_limit > 0:
        earlier = [p for p in others if checkpoint_step(p) < step]
        for old in earlier[: max(0, len(earlier) - (total_limit - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in folder.glob(f"{TMP_PREFIX}*"):  # debris of saves interrupted in earlier runs
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def _read_json(file: Path) -> dict[str, Any]:
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ValueError(f"{file}: missing; the checkpoint is incomplete. {_DAMAGED_HINT}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file}: damaged checkpoint file (not valid JSON: {error}). {_DAMAGED_HINT}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{file}: damaged checkpoint file (not a JSON object). {_DAMAGED_HINT}")
    return state


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise ValueError(f"{file}: missing; the checkpoint is incomplete. {_DAMAGED_HINT}")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ValueError(
            f"{file}: damaged checkpoint file (not valid safetensors: {error}). {_DAMAGED_HINT}"
        ) from error


_DAMAGED_HINT = ("Resume from an earlier checkpoint (pass its folder to --resume_from_checkpoint) or delete this "
                 "checkpoint folder.")


def run_config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`field: checkpoint value -> current value` for every setting that differs (values compared as JSON)."""
    saved = json.loads(json.dumps(saved))
    current = json.loads(json.dumps(current))
    return [
        f"{key}: {saved.get(key, '<not recorded>')!r} -> {current.get(key, '<not recorded>')!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    run_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore model, optimizer and scheduler in place from `path`; returns the trainer state.

    Every file is read and checked before anything is restored: a damaged or missing file, or a checkpoint of a
    run with other settings, is a `ValueError` and leaves model, optimizer and scheduler untouched.

    Args:
        path (`str` or `os.PathLike`): a checkpoint folder written by [`save_checkpoint`].
        model (`torch.nn.Module`): the unwrapped model (same architecture and adapters as when saved).
        optimizer (`torch.optim.Optimizer`): the optimizer over the same parameters.
        scheduler: the learning-rate scheduler.
        run_config (`dict`, *optional*): the settings of the run that resumes; refused (listing the fields
            that differ) when the checkpoint recorded other settings.
    """
    path = Path(path)
    state = _read_json(path / STATE_NAME)
    missing_keys = [key for key in ("global_step", "optimizer", "scheduler") if key not in state]
    if missing_keys:
        raise ValueError(f"{path / STATE_NAME}: damaged checkpoint file (no {missing_keys}). {_DAMAGED_HINT}")
    model_state = _read_tensors(path / MODEL_NAME)
    optimizer_tensors = _read_tensors(path / OPTIMIZER_NAME)
    saved_config = state.pop("run_config", None)
    if run_config is not None:
        if saved_config is None:
            warnings.warn(f"Checkpoint {path} records no run settings (written by an older acula): cannot check "
                          "that this run uses the same settings as the interrupted one.", UserWarning, stacklevel=2)
        else:
            differences = run_config_differences(saved_config, run_config)
            if differences:
                raise ValueError(
                    f"Cannot resume from {path}: it belongs to a run with other settings (checkpoint -> now): "
                    + "; ".join(differences) + ". Resume with the interrupted run's settings, or start a new run "
                    "in another --output_dir (or pass --overwrite_output_dir, without --resume_from_checkpoint, "
                    f"to discard the checkpoints in {path.parent})."
                )
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint {path} does not fit this model: missing {missing[:5]}..., unexpected {unexpected[:5]}... "
            "Resume with the same model, preset and LoRA settings as the interrupted run."
        )
    try:
        optimizer.load_state_dict(_optimizer_from_flat(optimizer_tensors, state.pop("optimizer")))
    except KeyError as error:
        raise ValueError(f"{path}: optimizer state and {OPTIMIZER_NAME} do not match (no tensor {error}). "
                         f"{_DAMAGED_HINT}") from error
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


__all__ = ["list_checkpoints", "load_checkpoint", "resolve_checkpoint", "run_config_differences", "save_checkpoint"]
