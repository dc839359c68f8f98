"""Crash-safe training checkpoints in safetensors and JSON only.

Accelerate's `save_state` pickles the optimizer, scheduler and RNG states; acula writes nothing that needs
unpickling to resume. A checkpoint is a folder `checkpoints/step-00000042/` holding

- `model.safetensors`: the full state dict of the (unwrapped) model being trained,
- `optimizer.safetensors` + the `optimizer` entry of `trainer_state.json`: tensors and the JSON part of the
  optimizer's state dict,
- `trainer_state.json`: global step, epoch, batches done in that epoch, scheduler state, and the run's counters.

RNG state is not saved: the training loop derives every random draw (data order, masks, dropout) from the seed
and the step, so a resumed run repeats exactly what the uninterrupted run does.

Writes are atomic: everything goes to a hidden temporary folder that is renamed into place only when complete, so
a crash while saving leaves the previous checkpoint whole and never a half-written one under a checkpoint name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_PREFIX = "step-"
TMP_PREFIX = ".tmp-"
STATE_NAME = "trainer_state.json"
MODEL_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.safetensors"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `folder`, oldest first (temporary folders of interrupted saves are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


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
    before_publish: Any = None,
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
            is in place.
        before_publish (`callable`, *optional*): called with the temporary folder just before it is renamed into
            place (used by the fault-injection tests).
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
    (temporary / STATE_NAME).write_text(json.dumps(state, indent=1), encoding="utf-8")
    _fsync_folder(temporary)
    if before_publish is not None:
        before_publish(temporary)

    if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(temporary, final)

    if total_limit is not None and total_limit > 0:
        for old in list_checkpoints(folder)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in folder.glob(f"{TMP_PREFIX}*"):  # debris of saves interrupted in earlier runs
        shutil.rmtree(leftover, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore model, optimizer and scheduler in place from `path`; returns the trainer state.

    Args:
        path (`str` or `os.PathLike`): a checkpoint folder written by [`save_checkpoint`].
        model (`torch.nn.Module`): the unwrapped model (same architecture and adapters as when saved).
        optimizer (`torch.optim.Optimizer`): the optimizer over the same parameters.
        scheduler: the learning-rate scheduler.
    """
    path = Path(path)
    state = json.loads((path / STATE_NAME).read_text(encoding="utf-8"))
    missing, unexpected = model.load_state_dict(load_file(str(path / MODEL_NAME)), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint {path} does not fit this model: missing {missing[:5]}..., unexpected {unexpected[:5]}... "
            "Resume with the same model, preset and LoRA settings as the interrupted run."
        )
    optimizer.load_state_dict(_optimizer_from_flat(load_file(str(path / OPTIMIZER_NAME)), state.pop("optimizer")))
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


__all__ = ["list_checkpoints", "load_checkpoint", "resolve_checkpoint", "save_checkpoint"]
