"""Apply a release delta to its start: the LoRA adapter merged by peft (in float32, which is how a run merges it and
so reproduces the trained folder bit for bit, or in float64, whose single final rounding depends on no machine's
float32 kernels), the trained heads, and any further tensor the delta carries whole."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from modeling_acula import AculaConfig, AculaForPreTraining, AculaModel

from .manifest import ReleaseError

ADAPTER_DIR = "adapter"
# Tensors trained outside the adapter (e.g. a final layer norm trained in full), stored whole, named as in the
# alignment model's state dict.
EXTRA_WEIGHTS = "extra_weights.safetensors"
MERGE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def apply_delta(config: AculaConfig, start: AculaModel, delta_dir: Path,
                extra: dict[str, torch.Tensor] | None = None, merge_dtype: str = "float32") -> AculaForPreTraining:
    """The alignment model of a release: `start` with the delta of `delta_dir` applied.

    Args:
        config ([`AculaConfig`]): the release's alignment config.
        start ([`AculaModel`]): the frozen start encoder (see [`~acula_train.release.base.build_start`]).
        delta_dir (`Path`): a folder holding `adapter/` (peft LoRA + the trained heads as `modules_to_save`) and,
            where needed, `extra_weights.safetensors`.
        extra (`dict[str, torch.Tensor]`, *optional*): tensors to set whole instead of reading `extra_weights`.
        merge_dtype (`str`, *optional*, defaults to `"float32"`): `"float32"` or `"float64"`, the dtype of the merge
            `W + scale * B @ A` (the result is float32 either way).

    Returns:
        [`AculaForPreTraining`]: the merged model in float32, in eval mode.
    """
    from peft import PeftModel

    if merge_dtype not in MERGE_DTYPES:
        raise ReleaseError(f"merge_dtype must be one of {sorted(MERGE_DTYPES)}, got {merge_dtype!r}")
    model = AculaForPreTraining(config)
    model.acula.load_state_dict(start.state_dict())
    model = model.to(MERGE_DTYPES[merge_dtype])  # float32 -> float64 -> float32 is exact for what is not merged
    peft_model = PeftModel.from_pretrained(model, str(delta_dir / ADAPTER_DIR), is_trainable=False)
    merged = peft_model.merge_and_unload().float().eval()
    if extra is None and (delta_dir / EXTRA_WEIGHTS).is_file():
        extra = load_file(str(delta_dir / EXTRA_WEIGHTS))
    if extra:
        state = merged.state_dict()
        unknown = sorted(set(extra) - set(state))
        if unknown:
            raise ReleaseError(f"{delta_dir / EXTRA_WEIGHTS} names tensors the model does not have: {unknown[:5]}")
        with torch.no_grad():
            for name, tensor in extra.items():
                state[name].copy_(tensor)
    return merged


def differing_tensors(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                      rtol: float = 1e-6, atol: float = 1e-8) -> tuple[list[str], float]:
    """Tensors of `state` not close to `reference` (`torch.allclose` with `rtol`, `atol`: the float64 merge and a
    float32 one differ by an ulp or two), and the largest absolute difference among the close ones.

    Raises:
        [`ReleaseError`]: the two hold different names or shapes.
    """
    if set(state) != set(reference):
        missing, unexpected = sorted(set(reference) - set(state)), sorted(set(state) - set(reference))
        raise ReleaseError(f"the rebuilt model's tensors differ from the trained folder's: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    far, closest = [], 0.0
    for name in sorted(reference):
        ours, theirs = state[name], reference[name]
        if ours.shape != theirs.shape:
            raise ReleaseError(f"{name}: shape {tuple(ours.shape)} rebuilt, {tuple(theirs.shape)} in the folder")
        if not ours.is_floating_point():
            if not torch.equal(ours, theirs):
                far.append(name)
            continue
        if not torch.allclose(ours, theirs, rtol=rtol, atol=atol):
            far.append(name)
        elif ours.numel():
            closest = max(closest, (ours.double() - theirs.double()).abs().max().item())
    return far, closest


__all__ = ["ADAPTER_DIR", "EXTRA_WEIGHTS", "MERGE_DTYPES", "apply_delta", "differing_tensors"]
