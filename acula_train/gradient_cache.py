"""The alignment loss of a whole accumulated batch, at the memory of one micro-batch (gradient caching).

CKA and InfoNCE are batch statistics: their value, bias and noise depend on how many recordings the batch holds. With
gradient accumulation the batch of an optimiser step is `micro-batch x accumulation x processes` recordings, but a
loss computed per micro-batch only ever sees one micro-batch (gathered over processes). Gradient caching (Gao et
al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup") makes the loss see them all,
with exact gradients:

1. embed every micro-batch without an autograd graph (the last one with its graph, kept for step 3);
2. gather the embeddings of all processes, compute the alignment loss on the whole set, and take its gradient with
   respect to the embeddings (cheap: they are small `(n, d)` matrices);
3. backpropagate the last micro-batch's kept graph, then re-run each other micro-batch with a graph, replaying the
   same random draws, and backpropagate the cached embedding gradients (`sum(embeds * grad)`) together with the
   per-micro-batch terms (masked-audio modeling, distillation).

The cost is one extra forward pass per micro-batch but one (the last micro-batch keeps its graph from step 1 and is
backpropagated first, so one graph is alive at a time); a window of one micro-batch takes the plain path.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from accelerate import Accelerator

# The per-micro-batch terms of `AculaForPreTrainingOutput`, averaged over the micro-batches of a window.
MICRO_BATCH_TERMS = ("mam_loss", "preservation_loss")


@dataclass
class WindowLosses:
    """
    What one accumulation window contributed, for logging and for the non-finite check.

    Args:
        alignment_batch_size (`int`): recordings the alignment loss was computed over (all processes).
        finite (`bool`): whether every loss of the window was finite on every process. When it is not, the window's
            gradients are not usable (the caller drops them).
        values (`dict[str, float]`): `loss`, `alignment_loss` and the micro-batch terms that exist, averaged over
            processes and micro-batches (the alignment loss is one value for the whole window).
        nonfinite_terms (`dict[str, float]`): the first non-finite values seen, to name in an error message.
    """

    alignment_batch_size: int
    finite: bool
    values: dict[str, float]
    nonfinite_terms: dict[str, float]


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (macOS, Windows, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc `malloc_trim(0)`; nothing elsewhere).

    The activations of one pass are tensors of tens of MB that glibc serves from its heap and keeps, fragmented,
    after they are freed; the next pass then grows the heap again instead of reusing them, and the process's
    resident memory climbs by up to a pass's activations (about 1 GB for Whisper-base's top two layers at batch 24).
    Trimming between passes costs milliseconds."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _all_finite(accelerator: Accelerator, *values: torch.Tensor | None) -> bool:
    # One decision for every process: a process that skipped a backward alone would hang the others in DDP.
    flags = [torch.isfinite(v.detach()).all() for v in values if v is not None]
    local = torch.stack(flags).all() if flags else torch.tensor(True)
    return bool(accelerator.gather(local.reshape(1).to(accelerator.device)).all())


def _mean_over_processes(accelerator: Accelerator, value: torch.Tensor) -> float:
    return accelerator.reduce(value.detach().reshape(()).to(accelerator.device), "mean").item()


def backward_over_window(
    model: torch.nn.Module,
    window: Sequence[dict[str, torch.Tensor]],
    accelerator: Accelerator,
    forward_seeds: Sequence[int],
) -> WindowLosses:
    """
    Accumulate into `.grad` the gradient of one optimiser step's loss: the alignment loss over every recording of
    the window (all micro-batches, all processes) plus the mean of the per-micro-batch terms.

    The caller clips, steps and zeroes the gradients. Under data parallelism the gradients are all-reduced during
    the last micro-batch's backward only. When a loss is not finite the returned `finite` is `False` on every process
    and the gradients must be dropped; every process still ran the same collectives.

    Args:
        model (`torch.nn.Module`):
            The prepared (possibly DDP-wrapped) [`AculaForPreTraining`], in training mode.
        window (`Sequence[dict[str, torch.Tensor]]`):
            The micro-batches of the step: keyword arguments of the model's forward (`input_values`,
            `teacher_embeds`, `noise`; or, with the prefix cache, `prefix_hidden_states`, `prefix_layers`,
            `audio_frame_mask` and `preservation_target` instead of `input_values`).
        accelerator (`accelerate.Accelerator`):
            Created with `gradient_accumulation_steps=1`: this function does the accumulation itself.
        forward_seeds (`Sequence[int]`):
            One seed per micro-batch, set before each of its forward passes so that both passes draw the same
            dropout masks.

    Returns:
        [`WindowLosses`].
    """
    if len(forward_seeds) != len(window):
        raise ValueError(f"backward_over_window: {len(window)} micro-batches but {len(forward_seeds)} seeds.")
    head = accelerator.unwrap_model(model).alignment_head
    weight = accelerator.unwrap_model(model).config.alignment_loss_weight
    local_size = sum(_rows(batch) for batch in window)
    alignment_batch_size = local_size * accelerator.num_processes
    if len(window) == 1:  # the loss already sees the whole (gathered) batch: one pass suffices
        torch.manual_seed(forward_seeds[0])
        outputs = model(**window[0])
        if not _all_finite(accelerator, outputs.loss):
            # The backward still runs (every process must join the all-reduce); the caller drops its gradients.
            accelerator.backward(outputs.loss.nan_to_num(0.0, 0.0, 0.0) * 0.0)
            return _nonfinite(alignment_batch_size, dict(outputs.items()))
        accelerator.backward(outputs.loss)
        values = {name: _mean_over_processes(accelerator, getattr(outputs, name))
                  for name in ("loss", "alignment_loss", *MICRO_BATCH_TERMS) if getattr(outputs, name) is not None}
        return WindowLosses(alignment_batch_size, True, values, {})

    # 1. Embeddings of every micro-batch, without a graph; the last one's with its graph, which step 3 backpropagates
    # first (so it runs once, not twice: one graph is alive at a time, as before). Its forward is unsynchronised:
    # DDP decides at forward time whether the backward all-reduces, and the synchronised one comes last.
    last = len(window) - 1
    audio, text = [], []
    for i, (batch, seed) in enumerate(zip(window, forward_seeds)):
        torch.manual_seed(seed)
        if i == last:
            with accelerator.no_sync(model):
                kept = model(**batch, compute_alignment_loss=False)
            audio.append(kept.audio_embeds.detach())
            text.append(kept.text_embeds.detach())
        else:
            with torch.no_grad():
                outputs = model(**batch, return_loss=False)
            audio.append(outputs.audio_embeds)
            text.append(outputs.text_embeds)
            del outputs
            release_freed_memory()

    # 2. The alignment loss of the whole window and its gradient with respect to this process's embeddings.
    gathered_audio = accelerator.gather(torch.cat(audio)).detach().requires_grad_(True)
    gathered_text = accelerator.gather(torch.cat(text)).detach().requires_grad_(True)
    leaves = [gathered_audio, gathered_text]
    logit_scale = None
    if isinstance(head.logit_scale, torch.nn.Parameter) and head.logit_scale.requires_grad:
        # A detached copy: the temperature's own gradient is added in the synchronised backward below, so that
        # the data-parallel wrapper sees every parameter's gradient arrive in the same backward pass.
        logit_scale = head.logit_scale.detach().requires_grad_(True)
        leaves.append(logit_scale)
    with torch.enable_grad():
        alignment_loss = head.loss_on_gathered(gathered_audio, gathered_text, logit_scale=logit_scale)
    if not _all_finite(accelerator, alignment_loss):
        return _nonfinite(alignment_batch_size, {"alignment_loss": alignment_loss})
    gradients = torch.autograd.grad(weight * alignment_loss, leaves)
    # Rows of this process in the gathered set (accelerate gathers in rank order), split by micro-batch. Every
    # process computed the same loss; the data-parallel all-reduce averages over processes, so each process
    # backpropagates `num_processes` times its rows' gradient to give the gradient of the one global loss.
    start = accelerator.process_index * local_size
    scale = accelerator.num_processes
    audio_grads = (gradients[0][start : start + local_size] * scale).split([a.shape[0] for a in audio])
    text_grads = (gradients[1][start : start + local_size] * scale).split([t.shape[0] for t in text])

    # 3. The last micro-batch through its kept graph, then each other one again with a graph (replaying its random
    # draws): cached embedding gradients plus its own terms. The last backward all-reduces.
    sums = {name: 0.0 for name in MICRO_BATCH_TERMS}
    present: set[str] = set()
    finite, nonfinite = True, {}
    order = [last, *range(last)]
    for i in order:
        synchronise = contextlib.nullcontext() if i == order[-1] else accelerator.no_sync(model)
        with synchronise:
            if i == last:
                outputs, kept = kept, None
            else:
                torch.manual_seed(forward_seeds[i])
                outputs = model(**window[i], compute_alignment_loss=False)
            surrogate = (outputs.audio_embeds * audio_grads[i]).sum() + (outputs.text_embeds * text_grads[i]).sum()
            if outputs.loss is not None:
                if _all_finite(accelerator, outputs.loss):
                    surrogate = surrogate + outputs.loss / len(window)
                else:  # keep the backward (every process must join the all-reduce); the step is dropped
                    finite = False
                    nonfinite = nonfinite or {n: getattr(outputs, n).item() for n in MICRO_BATCH_TERMS
                                              if getattr(outputs, n) is not None}
                    surrogate = surrogate + outputs.loss.nan_to_num(0.0, 0.0, 0.0) * 0.0
            if logit_scale is not None and i == order[-1]:
                surrogate = surrogate + (head.logit_scale * gradients[2] * scale).sum()
            accelerator.backward(surrogate)
        for name in MICRO_BATCH_TERMS:
            value = getattr(outputs, name)
            if value is not None:
                present.add(name)
                sums[name] += _mean_over_processes(accelerator, value) / len(window)
        del outputs, surrogate
        release_freed_memory()
    if not finite:
        return WindowLosses(alignment_batch_size, False, {}, nonfinite)
    values = {"alignment_loss": alignment_loss.item(), **{name: sums[name] for name in sorted(present)}}
    config = accelerator.unwrap_model(model).config
    weights = {"alignment_loss": weight, "mam_loss": config.mam_loss_weight,
               "preservation_loss": config.preservation_loss_weight}
    values["loss"] = sum(weights[name] * value for name, value in values.items())
    return WindowLosses(alignment_batch_size, True, values, {})


def backward_per_micro_batch(
    model: torch.nn.Module,
    window: Sequence[dict[str, torch.Tensor]],
    accelerator: Accelerator,
    forward_seeds: Sequence[int],
) -> WindowLosses:
    """
    Accumulate into `.grad` the gradient of a loss that is a mean over recordings (the supervised objective of
    `acula_train.supervised`): each micro-batch's loss divided by the number of micro-batches, all-reduced during
    the last micro-batch's backward only. A per-recording loss needs no gradient caching: one pass per micro-batch.

    Args:
        model (`torch.nn.Module`): the prepared module; its forward takes a micro-batch and returns a dict with
            `loss` and the terms to log (`supervised_loss`, `preservation_loss`, ...; `None` when absent).
        window, accelerator, forward_seeds: as in [`backward_over_window`].

    Returns:
        [`WindowLosses`]; `alignment_batch_size` is the number of recordings of the step (all processes).
    """
    if len(forward_seeds) != len(window):
        raise ValueError(f"backward_per_micro_batch: {len(window)} micro-batches but {len(forward_seeds)} seeds.")
    batch_size = sum(_rows(batch) for batch in window) * accelerator.num_processes
    sums: dict[str, float] = {}
    finite, nonfinite = True, {}
    last = len(window) - 1
    for i, (batch, seed) in enumerate(zip(window, forward_seeds)):
        torch.manual_seed(seed)
        with contextlib.nullcontext() if i == last else accelerator.no_sync(model):
            outputs = model(**batch)
            loss = outputs["loss"]
            if _all_finite(accelerator, loss):
                accelerator.backward(loss / len(window))
            else:  # keep the backward (every process must join the all-reduce); the step is dropped
                finite = False
                nonfinite = nonfinite or {name: value.item() for name, value in outputs.items()
                                          if name.endswith("loss") and value is not None}
                accelerator.backward(loss.nan_to_num(0.0, 0.0, 0.0) * 0.0)
        for name, value in outputs.items():
            if name.endswith("loss") and value is not None:
                sums[name] = sums.get(name, 0.0) + _mean_over_processes(accelerator, value) / len(window)
        del outputs, loss
        release_freed_memory()
    if not finite:
        return WindowLosses(batch_size, False, {}, nonfinite)
    return WindowLosses(batch_size, True, sums, {})


def _rows(batch: dict[str, torch.Tensor]) -> int:
    """Recordings in a micro-batch: of its spectrograms, or of its cached prefix states (the prefix cache)."""
    inputs = batch.get("input_values")
    return (inputs if inputs is not None else batch["prefix_hidden_states"]).shape[0]


def _nonfinite(alignment_batch_size: int, terms: dict) -> WindowLosses:
    named = {name: value.item() for name, value in terms.items()
             if name in ("loss", "alignment_loss", *MICRO_BATCH_TERMS) and isinstance(value, torch.Tensor)}
    return WindowLosses(alignment_batch_size, False, {}, named)


__all__ = ["WindowLosses", "backward_over_window", "backward_per_micro_batch"]
