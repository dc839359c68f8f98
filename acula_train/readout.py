"""A readout of an aligned model's audio-text space that is valid for the loss the heads were trained with.

Zero-shot classification and retrieval compare audio projections with text projections by cosine similarity.
That is only meaningful when the loss put both sides in the same coordinates:

- `infonce` trains on cosine similarities directly: the cosine of the two projections *is* the readout
  (`kind="cosine"`, nothing to fit).
- The CKA losses compare the geometry of the two batches of projections, not their coordinates. Linear CKA
  (`cka`, `debiased_cka`) does not change under a rotation, a uniform scaling or a shift of either side, so after
  training the audio projections can be a rotated, scaled and shifted copy of the text projections, with
  CKA = 1 and retrieval R@1 = 0 by plain cosine. (`released_covariance_cka` compares the two d x d feature
  covariances, which ties no audio to its own report at all.) For these heads a map from audio projections to
  text projections is fitted on the alignment training pairs only, and the comparison is made after it.

Fitted readouts (`kind`):

- `"procrustes"` (the default for CKA heads): orthogonal Procrustes with a shift and one scale,
  `a -> s (a - mean_a) W + mean_t` with `W` orthogonal. These are exactly the transformations linear CKA cannot
  see, so this is the smallest readout that is valid for CKA heads: it undoes what the loss left free and nothing
  more. It is not free of capacity, though: a rotation of a d-dimensional space has d(d-1)/2 parameters (130,816 at
  d = 512), and fitted on enough pairs it aligns even untrained heads to a degree (RESULTS.md, section 0: random
  heads with this readout score about as well as the trained ones). Compare with that control before crediting the
  alignment. Needs the two projections to have the same width (they do: both heads end in `projection_dim`).
- `"ridge"`: least squares with an intercept and an L2 penalty, `W = (X^T X + lam I)^-1 X^T Y` on centred `X`
  (audio) and `Y` (text); `lam = ridge_alpha * trace(X^T X) / d`, i.e. `ridge_alpha` times the mean eigenvalue of
  `X^T X`, so the penalty does not depend on the scale of the projections (default `ridge_alpha = 0.1`, fixed, not
  tuned). Any linear map, so more capacity still; use it to ask how much a general linear readout recovers.

With fewer training pairs than the projection width (the 48-recording demo run against 512-d heads) the map is
underdetermined outside the span of the training projections, and its numbers on new recordings mean little.

Comparison space: both sides are compared relative to the text mean, `audio(a) = s (a - mean_a) W` and
`text(t) = t - mean_t` (cosine between these). The means carry no aligned information (the CKA losses centre each
batch), and leaving a large common offset in would push every cosine towards 1. `apply(a)` gives the predicted text
projection itself, `audio(a) + mean_t`.

Storage, next to the heads it belongs to: `<output folder>/alignment/readout.json` (kind, sizes, how and on what it
was fitted, in-sample diagnostics) and, for fitted kinds, `alignment/readout.safetensors` (`weight`, `audio_mean`,
`text_mean`, `scale`). No pickles. `train_acula.py` writes them at the end of a run; for an older folder:

    python -m acula_train.readout fit --model_dir outputs/my-acula [--kind ridge]

which re-reads the training pairs from the folder's `reports.jsonl` (recordings and their reports), the teacher
from `teacher.json` and the spectrograms and teacher vectors from the training caches where they still are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from modeling_acula.file_utils import acula_cache_dir, atomic_write, write_json_atomic
from modeling_acula.losses import CKA_LOSSES

READOUT_KINDS = ("procrustes", "ridge", "cosine")
FITTED_READOUT_KINDS = ("procrustes", "ridge")
DEFAULT_READOUT_KIND = "procrustes"
DEFAULT_RIDGE_ALPHA = 0.1
READOUT_JSON = "readout.json"
READOUT_WEIGHTS = "readout.safetensors"
READOUT_FORMAT_VERSION = 1
_TENSOR_NAMES = ("weight", "audio_mean", "text_mean", "scale")


def readout_kind_for_loss(alignment_loss: str) -> str:
    """The readout a model trained with `alignment_loss` gets by default: cosine for `infonce`, a fitted
    Procrustes map for the CKA losses."""
    if alignment_loss == "infonce":
        return "cosine"
    if alignment_loss in CKA_LOSSES:
        return DEFAULT_READOUT_KIND
    raise ValueError(f"Unknown alignment_loss {alignment_loss!r}: expected infonce or one of {CKA_LOSSES}.")


def _as_float64(values: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    tensor = tensor.detach().to("cpu", torch.float64)
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (pairs, width) array, got shape {tuple(tensor.shape)}.")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} holds NaN or Inf: the readout cannot be fitted.")
    return tensor


class AlignmentReadout:
    """
    How audio projections are compared with text projections: identity (`"cosine"`) or a fitted map into the
    text projections' coordinates (`"procrustes"`, `"ridge"`). See the module docstring for why and which.

    Args:
        kind (`str`): one of `"procrustes"`, `"ridge"`, `"cosine"`.
        weight (`torch.Tensor` of shape `(audio_dim, text_dim)`, *optional*): the linear map (fitted kinds).
        audio_mean (`torch.Tensor` of shape `(audio_dim,)`, *optional*): mean audio projection of the fit pairs.
        text_mean (`torch.Tensor` of shape `(text_dim,)`, *optional*): mean text projection of the fit pairs.
        scale (`float`, *optional*, defaults to 1.0): uniform scale (Procrustes; 1 for ridge).
        info (`dict`, *optional*): JSON-serialisable description (what it was fitted on, diagnostics).
    """

    def __init__(self, kind: str, weight: torch.Tensor | None = None, audio_mean: torch.Tensor | None = None,
                 text_mean: torch.Tensor | None = None, scale: float = 1.0, info: dict[str, Any] | None = None):
        if kind not in READOUT_KINDS:
            raise ValueError(f"Readout kind must be one of {READOUT_KINDS}, got {kind!r}.")
        fitted = kind in FITTED_READOUT_KINDS
        if fitted and any(t is None for t in (weight, audio_mean, text_mean)):
            raise ValueError(f"A {kind} readout needs weight, audio_mean and text_mean.")
        if fitted:
            weight, audio_mean, text_mean = (t.detach().float().cpu() for t in (weight, audio_mean, text_mean))
            if weight.ndim != 2 or audio_mean.shape != (weight.shape[0],) or text_mean.shape != (weight.shape[1],):
                raise ValueError(f"Inconsistent readout shapes: weight {tuple(weight.shape)}, audio_mean "
                                 f"{tuple(audio_mean.shape)}, text_mean {tuple(text_mean.shape)}.")
        self.kind = kind
        self.weight, self.audio_mean, self.text_mean = weight, audio_mean, text_mean
        self.scale = float(scale)
        self.info = dict(info or {})

    # ------------------------------------------------------------------ construction

    @classmethod
    def cosine(cls, info: dict[str, Any] | None = None) -> "AlignmentReadout":
        """The identity readout: plain cosine between the projections (valid for InfoNCE-trained heads)."""
        return cls("cosine", info=info)

    @classmethod
    def fit(cls, audio_embeds: torch.Tensor | np.ndarray, text_embeds: torch.Tensor | np.ndarray,
            kind: str = DEFAULT_READOUT_KIND, ridge_alpha: float = DEFAULT_RIDGE_ALPHA,
            info: dict[str, Any] | None = None) -> "AlignmentReadout":
        """
        Fit the map from audio projections to text projections on paired rows (in float64).

        Args:
            audio_embeds (`torch.Tensor` or `np.ndarray` of shape `(n, audio_dim)`): audio projections of the
                alignment training pairs.
            text_embeds (`torch.Tensor` or `np.ndarray` of shape `(n, text_dim)`): text projections of the same
                pairs, row for row.
            kind (`str`, *optional*, defaults to `"procrustes"`): `"procrustes"` or `"ridge"`.
            ridge_alpha (`float`, *optional*, defaults to 0.1): ridge penalty relative to the mean eigenvalue of the
                centred audio Gram matrix (ridge only).
            info (`dict`, *optional*): extra description stored with the readout.
        """
        if kind not in FITTED_READOUT_KINDS:
            raise ValueError(f"Only {FITTED_READOUT_KINDS} readouts are fitted, got {kind!r}.")
        audio = _as_float64(audio_embeds, "audio_embeds")
        text = _as_float64(text_embeds, "text_embeds")
        if audio.shape[0] != text.shape[0]:
            raise ValueError(f"audio_embeds has {audio.shape[0]} rows but text_embeds has {text.shape[0]}: the "
                             "readout is fitted on pairs.")
        if audio.shape[0] < 2:
            raise ValueError(f"Fitting a readout needs at least 2 pairs, got {audio.shape[0]}.")
        audio_mean, text_mean = audio.mean(0), text.mean(0)
        x, y = audio - audio_mean, text - text_mean
        details: dict[str, Any] = {}
        if kind == "procrustes":
            if x.shape[1] != y.shape[1]:
                raise ValueError(f"Procrustes maps between spaces of one width; audio projections have {x.shape[1]} "
                                 f"and text projections {y.shape[1]}. Use kind='ridge'.")
            u, singular, vh = torch.linalg.svd(x.T @ y, full_matrices=False)
            weight = u @ vh
            energy = float((x**2).sum())
            if energy == 0.0:
                raise ValueError("Every audio projection of the fit pairs is the same: no map can be fitted.")
            scale = float(singular.sum()) / energy  # the least-squares scale for this rotation
        else:
            if ridge_alpha <= 0:
                raise ValueError(f"ridge_alpha must be > 0, got {ridge_alpha}.")
            gram = x.T @ x
            penalty = ridge_alpha * float(torch.trace(gram)) / gram.shape[0]
            if penalty == 0.0:
                raise ValueError("Every audio projection of the fit pairs is the same: no map can be fitted.")
            weight = torch.linalg.solve(gram + penalty * torch.eye(gram.shape[0], dtype=gram.dtype), x.T @ y)
            scale = 1.0
            details = {"ridge_alpha": float(ridge_alpha), "ridge_lambda": penalty}
        predicted = scale * x @ weight
        residual = float(((predicted - y) ** 2).sum())
        total = float((y**2).sum())
        description = {
            **details,
            "num_pairs": int(audio.shape[0]),
            "audio_dim": int(audio.shape[1]),
            "text_dim": int(text.shape[1]),
            # In-sample: how much of the centred text projections the map explains on its own fit pairs.
            "in_sample_r2": 1.0 - residual / total if total > 0 else float("nan"),
            **(info or {}),
        }
        return cls(kind, weight=weight, audio_mean=audio_mean, text_mean=text_mean, scale=scale, info=description)

    # ------------------------------------------------------------------ use

    @property
    def is_identity(self) -> bool:
        return self.kind == "cosine"

    def _checked(self, values: torch.Tensor, width: int, name: str) -> torch.Tensor:
        if values.shape[-1] != width:
            raise ValueError(f"{name} have width {values.shape[-1]}, but this {self.kind} readout was fitted on "
                             f"width {width}: not the heads it was fitted for.")
        return values

    def audio(self, audio_embeds: torch.Tensor) -> torch.Tensor:
        """Audio projections in the comparison space (compare by cosine with [`~AlignmentReadout.text`])."""
        if self.is_identity:
            return audio_embeds
        self._checked(audio_embeds, self.weight.shape[0], "audio projections")
        weight = self.weight.to(audio_embeds.device, audio_embeds.dtype)
        return self.scale * (audio_embeds - self.audio_mean.to(weight)) @ weight

    def text(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """Text projections in the comparison space (the text mean of the fit pairs removed)."""
        if self.is_identity:
            return text_embeds
        self._checked(text_embeds, self.weight.shape[1], "text projections")
        return text_embeds - self.text_mean.to(text_embeds.device, text_embeds.dtype)

    def apply(self, audio_embeds: torch.Tensor) -> torch.Tensor:
        """Audio projections mapped into the text projections' coordinates (the predicted text projection)."""
        if self.is_identity:
            return audio_embeds
        return self.audio(audio_embeds) + self.text_mean.to(audio_embeds.device, audio_embeds.dtype)

    def similarity(self, audio_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """`(n_audio, n_text)` cosine similarities through the readout."""
        audio = torch.nn.functional.normalize(self.audio(audio_embeds), dim=-1)
        text = torch.nn.functional.normalize(self.text(text_embeds), dim=-1)
        return audio @ text.T

    def describe(self) -> dict[str, Any]:
        """What the evaluator records: the kind and where the readout came from."""
        return {"kind": self.kind, **{k: self.info[k] for k in ("source", "num_pairs", "fitted_on") if k in self.info}}

    # ------------------------------------------------------------------ files

    def save(self, folder: str | os.PathLike) -> None:
        """Write `readout.safetensors` (fitted kinds) and then `readout.json` into `folder` (the output folder's
        `alignment/`), each atomically; the JSON is written last, so a folder with it has a complete readout."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.is_identity:
            (folder / READOUT_WEIGHTS).unlink(missing_ok=True)  # a stale map must not outlive a cosine readout
        else:
            tensors = {"weight": self.weight.contiguous(), "audio_mean": self.audio_mean.contiguous(),
                       "text_mean": self.text_mean.contiguous(), "scale": torch.tensor([self.scale])}
            metadata = {"kind": self.kind, "format_version": str(READOUT_FORMAT_VERSION)}
            atomic_write(folder / READOUT_WEIGHTS, lambda path: save_file(tensors, path, metadata=metadata))
        write_json_atomic(folder / READOUT_JSON, {"kind": self.kind, "format_version": READOUT_FORMAT_VERSION,
                                                   **{k: v for k, v in self.info.items() if k != "kind"}})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "AlignmentReadout | None":
        """Read the readout saved in `folder` (an output folder's `alignment/`); `None` when there is none.

        Raises:
            `ValueError`: when `readout.json` is unreadable, names an unknown kind or format, or its
                `readout.safetensors` is missing, damaged or of another kind.
        """
        folder = Path(folder)
        path = folder / READOUT_JSON
        if not path.is_file():
            return None
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not readable JSON ({error}); refit the readout with `python -m "
                             "acula_train.readout fit --model_dir <output folder>`.") from error
        kind = info.get("kind")
        if kind not in READOUT_KINDS:
            raise ValueError(f"{path}: field 'kind' must be one of {READOUT_KINDS}, got {kind!r}.")
        if info.get("format_version") != READOUT_FORMAT_VERSION:
            raise ValueError(f"{path}: field 'format_version' is {info.get('format_version')!r}; this acula reads "
                             f"version {READOUT_FORMAT_VERSION}.")
        if kind == "cosine":
            return cls.cosine(info=info)
        weights_path = folder / READOUT_WEIGHTS
        try:
            with safe_open(str(weights_path), framework="pt") as handle:
                stored_kind = (handle.metadata() or {}).get("kind")
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except (OSError, SafetensorError) as error:
            raise ValueError(f"{path} names a {kind} readout but {weights_path} cannot be read ({error}).") from error
        missing = [name for name in _TENSOR_NAMES if name not in tensors]
        if missing:
            raise ValueError(f"{weights_path} lacks the tensors {missing}.")
        if stored_kind != kind:  # the kind is in both files: they must come from one fit
            raise ValueError(f"{weights_path} holds a {stored_kind!r} readout but {path} says {kind!r}: the two "
                             "files are from different fits.")
        return cls(kind, weight=tensors["weight"], audio_mean=tensors["audio_mean"], text_mean=tensors["text_mean"],
                   scale=float(tensors["scale"].reshape(-1)[0]), info=info)


# ---------------------------------------------------------------------- projections of the training pairs


def recall_at_k(
    audio: np.ndarray, text: np.ndarray, reports: Sequence[str], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, dict[str, float]]:
    """
    Audio -> report and report -> audio recall@k by cosine similarity.

    Templated reports repeat (every normal Yaseen clip gets the same text), so reports are deduplicated: audio ->
    report ranks the distinct texts and hits when the recording's own text is in the top k; report -> audio hits
    when any recording with that text is in the top k. A cut-off that cannot miss is left out: audio -> report
    R@k needs k < the number of distinct reports, report -> audio R@k needs k <= n minus the most recordings that
    share one report.

    Args:
        audio (`np.ndarray`): `(n, d)` normalised audio projections (in the readout's space, see
            [`~acula_eval.retrieval.AlignedSpace`]).
        text (`np.ndarray`): `(n, d)` normalised text projections of each recording's report (same space).
        reports (`Sequence[str]`): the report of each recording.
        ks (`Sequence[int]`): cut-offs.

    Returns:
        `{"audio_to_report": {"R@1": ...}, "report_to_audio": {...}, "num_recordings": n, "num_reports": m}`.
    """
    unique: dict[str, int] = {}
    for report in reports:
        unique.setdefault(report, len(unique))
    if len(unique) < 2:
        raise ValueError(f"Retrieval needs at least two distinct reports; all {len(reports)} recordings share one "
                         "(metadata without findings gives every recording the same templated report).")
    owner = np.array([unique[r] for r in reports])
    largest_share = int(np.bincount(owner).max())
    first = np.array([reports.index(r) for r in unique])
    similarity = audio @ text[first].T  # (n recordings, m distinct reports)
    audio_rank = np.argsort(-similarity, axis=1, kind="stable")
    report_rank = np.argsort(-similarity.T, axis=1, kind="stable")
    result: dict[str, Any] = {"audio_to_report": {}, "report_to_audio": {}, "num_recordings": len(reports),
                              "num_reports": len(unique)}
    for k in ks:
        if k < len(unique):
            hits_a = [owner[i] in audio_rank[i, :k] for i in range(len(reports))]
            result["audio_to_report"][f"R@{k}"] = float(np.mean(hits_a))
        if k <= len(reports) - largest_share:
            hits_t = [np.any(owner[report_rank[j, :k]] == j) for j in range(len(unique))]
            result["report_to_audio"][f"R@{k}"] = float(np.mean(hits_t))
    return result


def check_prefix_states(model, dataset: Dataset, prefix_layers: int) -> None:
    """Refuse prefix states that `model`'s own bottom layers would not produce.

    Args:
        model ([`AculaForPreTraining`]): the model whose top layers continue the states.
        dataset ([`~acula_train.prefix_cache.PrefixStateDataset`]): items read from a prefix cache.
        prefix_layers (`int`): the layers the cached states went through.

    Raises:
        `ValueError`: when the cache was filled by other bottom weights, another depth or feature settings.
    """
    from .prefix_cache import prefix_cache_identity

    cached = dataset.cache.identity
    own = prefix_cache_identity(model.acula, prefix_layers, cached["spectrograms"])
    def as_json(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    differ = sorted(key for key in ("prefix_layers", "prefix_weights_sha256", "backbone", "attention")
                    if as_json(cached.get(key)) != as_json(own.get(key)))
    if differ:
        raise ValueError(f"The prefix cache {dataset.cache.folder} was not filled by this model's first "
                         f"{prefix_layers} layers ({', '.join(differ)} differ): its states cannot stand in for the "
                         "recordings.")


def find_prefix_states(model, pairs: Dataset, prefix_layers: int | None, cache_dir: str | os.PathLike):
    """The pairs of `pairs` as cached prefix states, when a prefix cache under `<cache_dir>/prefix` was filled by
    `model`'s own bottom layers (training fills one with LoRA on the top layers) and holds every recording; else
    `None`. Found by what decides an entry (the bottom's weights, depth, backbone and spectrograms), so that a refit
    runs only the layers above it.

    Args:
        model ([`AculaForPreTraining`]): the saved alignment model.
        pairs ([`~acula_train.dataset.AudioSpectrogramDataset`]): the training pairs, with teacher vectors.
        prefix_layers (`int`, *optional*): the frozen layers of the run (`None`: the run had no frozen prefix).
        cache_dir (`str` or `os.PathLike`): the training caches' folder.
    """
    from .prefix_cache import PrefixStateDataset
    from .tensor_cache import TensorCache, identity_hash

    if prefix_layers is None or pairs.cache is None:
        return None
    for identity_file in sorted((Path(cache_dir) / "prefix").glob("*/identity.json")):
        try:
            identity = json.loads(identity_file.read_text(encoding="utf-8"))["featurizer"]
        except (OSError, ValueError, KeyError):
            continue
        if (identity_hash(identity)[:16] != identity_file.parent.name
                or identity.get("spectrograms") != pairs.cache.identity_hash):
            continue
        states = PrefixStateDataset(pairs.manifest, TensorCache(identity_file.parent.parent, identity,
                                                                 kind="encoder prefix"), pairs.teacher_vectors)
        try:
            check_prefix_states(model, states, prefix_layers)
        except ValueError:
            continue
        if all(states.cache.entry_path(path).is_file() for path in pairs.manifest.audio_paths):
            return states
    return None


@torch.no_grad()
def pair_projections(model, dataset: Dataset, *, batch_size: int = 16, device: str | torch.device | None = None,
                     num_workers: int = 0, show_progress: bool = True,
                     prefix_layers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Audio and text projections of every (recording, teacher vector) pair of `dataset`, in eval mode.

    The heads are applied to the encoder's pooled output exactly as [`AculaForPreTraining.forward`] does, but
    without its loss terms (no masked-audio decoder, and no alignment loss, which gathers across processes and so
    must not run on one process alone).

    Args:
        model ([`AculaForPreTraining`]): the alignment model (not wrapped for DDP).
        dataset (`Dataset`): items with `input_values` and `teacher_embeds` (an
            [`~acula_train.dataset.AudioSpectrogramDataset`] with teacher vectors), or, with `prefix_layers`,
            items with `prefix_hidden_states`, `audio_frame_mask` and `teacher_embeds` (a
            [`~acula_train.prefix_cache.PrefixStateDataset`]): only the layers above the cached prefix then run, the
            same projections at a fraction of the cost (checked against the model's own bottom weights first).
        batch_size (`int`, *optional*, defaults to 16): pairs per forward pass.
        device (`str` or `torch.device`, *optional*): where to run (default: where the model is).
        num_workers (`int`, *optional*, defaults to 0): DataLoader workers.
        show_progress (`bool`, *optional*, defaults to `True`): show a tqdm bar.
        prefix_layers (`int`, *optional*): the depth of the cached prefix states `dataset` holds.

    Returns:
        `(audio_embeds, text_embeds)`, float32 on CPU, one row per item in dataset order.
    """
    from modeling_acula.modeling_acula import pool_audio_encoder_output

    if prefix_layers is not None:
        check_prefix_states(model, dataset, prefix_layers)
    was_training = model.training
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    audio, text = [], []
    try:
        for batch in tqdm(loader, desc="readout pairs", unit="batch", disable=not show_progress):
            if "teacher_embeds" not in batch:
                raise ValueError("The readout is fitted on (recording, report) pairs: the dataset's items need "
                                 "teacher_embeds (build it with teacher_vectors).")
            if prefix_layers is None:
                outputs = model.acula(batch["input_values"].to(device))
            elif "prefix_hidden_states" in batch:
                outputs = model.acula.forward_from_layer(batch["prefix_hidden_states"].to(device), prefix_layers,
                                                         batch["audio_frame_mask"].to(device))
            else:
                raise ValueError("prefix_layers was given but the dataset's items have no prefix_hidden_states.")
            pooled = pool_audio_encoder_output(outputs, None, model.acula)
            audio_embeds = model.audio_projection(pooled)
            audio.append(audio_embeds.float().cpu())
            text.append(model.text_projection(batch["teacher_embeds"].to(device, audio_embeds.dtype)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(audio), torch.cat(text)


def _in_sample_retrieval(readout: AlignmentReadout, audio: torch.Tensor, text: torch.Tensor,
                         reports: Sequence[str] | None) -> dict[str, Any]:
    """Audio -> report R@1 on the fit pairs, by plain cosine and through the readout (in-sample: optimistic, a
    check that the fit worked and a measure of how far plain cosine was off)."""
    if reports is None or len(set(reports)) < 2:
        return {}

    def r_at_1(a: torch.Tensor, t: torch.Tensor) -> float | None:
        a = torch.nn.functional.normalize(a.double(), dim=-1).numpy()
        t = torch.nn.functional.normalize(t.double(), dim=-1).numpy()
        return recall_at_k(a, t, list(reports), ks=(1,))["audio_to_report"].get("R@1")

    return {"in_sample_audio_to_report_r1_cosine": r_at_1(audio, text),
            "in_sample_audio_to_report_r1_readout": r_at_1(readout.audio(audio), readout.text(text)),
            "in_sample_num_reports": len(set(reports))}


def fit_readout(model, dataset: Dataset, *, kind: str | None = None, ridge_alpha: float = DEFAULT_RIDGE_ALPHA,
                reports: Sequence[str] | None = None, batch_size: int = 16, device: str | torch.device | None = None,
                num_workers: int = 0, show_progress: bool = True, info: dict[str, Any] | None = None,
                prefix_layers: int | None = None) -> AlignmentReadout:
    """
    The readout for `model`'s alignment loss, fitted on the pairs of `dataset` where the loss needs one.

    Args:
        model ([`AculaForPreTraining`]): the trained alignment model.
        dataset (`Dataset`): the alignment training pairs (items with `input_values` and `teacher_embeds`).
        kind (`str`, *optional*): `"procrustes"`, `"ridge"` or `"cosine"`; default [`readout_kind_for_loss`]. A
            cosine readout is refused for CKA-trained heads.
        ridge_alpha (`float`, *optional*, defaults to 0.1): see [`AlignmentReadout.fit`].
        reports (`Sequence[str]`, *optional*): the report of each pair, for the in-sample R@1 diagnostics.
        batch_size, device, num_workers, show_progress, prefix_layers: see [`pair_projections`].
        info (`dict`, *optional*): extra description stored with the readout.
    """
    loss = model.config.alignment_loss
    kind = kind or readout_kind_for_loss(loss)
    description = {"alignment_loss": loss, **(info or {})}
    if kind == "cosine":
        if loss in CKA_LOSSES:
            raise ValueError(f"The heads were trained with {loss}, which leaves rotations and shifts of either "
                             "projection free: plain cosine is not a valid readout for them (use procrustes or ridge).")
        return AlignmentReadout.cosine(info={**description, "why": "infonce trains the cosine itself"})
    audio, text = pair_projections(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers,
                                   show_progress=show_progress, prefix_layers=prefix_layers)
    readout = AlignmentReadout.fit(audio, text, kind=kind, ridge_alpha=ridge_alpha, info=description)
    readout.info.update(_in_sample_retrieval(readout, audio, text, reports))
    return readout


def load_alignment_model(model_dir: str | os.PathLike, device: str | torch.device | None = None):
    """The [`AculaForPreTraining`] in `<model_dir>/alignment` (the heads the readout belongs to), in eval mode."""
    from modeling_acula.modeling_acula import AculaForPreTraining

    alignment = Path(model_dir) / "alignment"
    if not (alignment / "config.json").is_file():
        raise ValueError(f"{model_dir} has no alignment/config.json: a readout belongs to the projection heads that "
                         "train_acula.py writes into alignment/.")
    return AculaForPreTraining.from_pretrained(alignment).eval().to(device or "cpu")


def write_training_readout(output_dir: str | os.PathLike, dataset: Dataset, *, reports: Sequence[str] | None = None,
                           batch_size: int = 16, device: str | torch.device | None = None, num_workers: int = 0,
                           show_progress: bool = True, prefix_dataset: Dataset | None = None,
                           prefix_layers: int | None = None) -> AlignmentReadout:
    """
    Fit (CKA heads) or record (InfoNCE heads: cosine) the readout of a finished training run and save it into
    `<output_dir>/alignment/`. Called by `train_acula.py` on the main process, in the staged output folder before it
    is swapped in (see [`~acula_train.output_folder.save_output_folder`]).

    The heads are reloaded from `alignment/` (the saved, merged model the evaluator loads), so the readout fits
    exactly those weights whatever the training wrapper (LoRA, DDP) was.

    Args:
        output_dir (`str` or `os.PathLike`): the written (or staged) output folder.
        dataset (`Dataset`): the run's training pairs (spectrograms with teacher vectors), in `reports.jsonl` order.
        reports (`Sequence[str]`, *optional*): the report of each pair (in-sample diagnostics only).
        batch_size, device, num_workers, show_progress: see [`pair_projections`].
        prefix_dataset (`Dataset`, *optional*): the same pairs as the run's cached prefix states (a
            [`~acula_train.prefix_cache.PrefixStateDataset`] of `prefix_layers` layers): the readout then runs only
            the layers above the prefix. Used when the saved model's bottom layers are the ones that filled it (they
            are, when training adapted only the top layers); else `dataset` is encoded in full.
        prefix_layers (`int`, *optional*): the depth of `prefix_dataset`'s states.
    """
    model = load_alignment_model(output_dir, device)
    info = {"source": "train_acula.py",
            "fitted_on": "the alignment training pairs of this run (reports.jsonl; the training crop of each recording)"}
    if prefix_dataset is not None and prefix_layers is not None:
        try:
            check_prefix_states(model, prefix_dataset, prefix_layers)
            dataset, info["encoded_from"] = prefix_dataset, f"the run's prefix cache ({prefix_layers} layers)"
        except ValueError as error:  # the full encoder gives the same projections, only slower
            info["encoded_from"] = f"the spectrograms ({error})"
            prefix_layers = None
    else:
        prefix_layers = None
    readout = fit_readout(model, dataset, reports=reports, batch_size=batch_size, device=device,
                          num_workers=num_workers, show_progress=show_progress, info=info,
                          prefix_layers=prefix_layers)
    readout.save(Path(output_dir) / "alignment")
    return readout


# ---------------------------------------------------------------------- refit an existing folder


def training_pairs_dataset(model_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                           device: str | torch.device | None = None, teacher_batch_size: int = 64,
                           show_progress: bool = True):
    """
    The alignment training pairs of an output folder, rebuilt (with the dataset function training uses,
    [`~acula_train.dataset.pair_dataset`]) from what it records: `reports.jsonl` (each
    recording's path and report), `teacher.json` (the teacher, reloaded with its layer, pooling and max length)
    and the folder's feature extractor. Spectrograms and teacher vectors are read from the training caches when
    they are still there (`cache_dir`, default [`~modeling_acula.file_utils.acula_cache_dir`], as for training), else computed
    (and cached).

    Returns:
        `(dataset, reports)`: an [`~acula_train.dataset.AudioSpectrogramDataset`] with teacher
        vectors, and the report of each row.
    """
    from .teacher import load_teacher
    from modeling_acula.feature_extraction_acula import AculaFeatureExtractor
    from .manifest import load_manifest
    from .teacher_cache import TeacherEmbeddingCache
    from .dataset import pair_dataset, spectrogram_cache

    folder = Path(model_dir)
    pairs_file = folder / "reports.jsonl"
    if not pairs_file.is_file():
        raise ValueError(f"{pairs_file} does not exist: the readout is fitted on the run's training pairs, which "
                         "train_acula.py lists there.")
    if not (folder / "teacher.json").is_file():
        raise ValueError(f"{folder / 'teacher.json'} does not exist: the run's teacher is needed for the text side.")
    # Recordings are listed relative to the training manifest's folder, which only this machine's hidden local
    # record knows (older folders list absolute paths, which resolve without it).
    from .public_paths import recorded_data_root

    manifest = load_manifest(pairs_file, audio_column="path", report_column="report",
                             root=recorded_data_root(folder))
    reports = [str(row["report"]) for row in manifest.rows]
    root = Path(cache_dir).expanduser() if cache_dir else acula_cache_dir()
    teacher = load_teacher(folder, device)
    vectors = TeacherEmbeddingCache(root / "teacher", teacher.identity).get_or_compute(
        reports, teacher, batch_size=teacher_batch_size, show_progress=show_progress)
    del teacher
    extractor = AculaFeatureExtractor.from_pretrained(folder)
    dataset = pair_dataset(manifest, extractor, spectrogram_cache(root, extractor), vectors)
    return dataset, reports


def run_prefix_layers(model_dir: str | os.PathLike, config) -> int | None:
    """The frozen layers below a finished run's adapters, from its `training_args.json` (`None`: no fixed prefix)."""
    from .prefix_cache import frozen_prefix_layers
    from .arguments import DEFAULT_WHISPER_LORA_TOP_LAYERS

    try:
        recorded = json.loads((Path(model_dir) / "training_args.json").read_text(encoding="utf-8"))["model"]
    except (OSError, ValueError, KeyError):
        return None
    top = recorded.get("lora_top_layers")
    top = DEFAULT_WHISPER_LORA_TOP_LAYERS if top is None else top
    return frozen_prefix_layers(config, full_finetune=bool(recorded.get("full_finetune")), top_layers=top or None)[0]


def fit_folder_readout(model_dir: str | os.PathLike, *, kind: str | None = None,
                       ridge_alpha: float = DEFAULT_RIDGE_ALPHA, cache_dir: str | os.PathLike | None = None,
                       batch_size: int = 16, device: str | torch.device | None = None, num_workers: int = 0,
                       show_progress: bool = True) -> AlignmentReadout:
    """
    Fit the readout of an existing output folder (e.g. one written before readouts existed) and save it into its
    `alignment/`, replacing any earlier one.

    Args:
        model_dir (`str` or `os.PathLike`): an output folder of `train_acula.py`.
        kind (`str`, *optional*): `"procrustes"`, `"ridge"` or `"cosine"` (default: by the recorded loss).
        ridge_alpha (`float`, *optional*, defaults to 0.1): see [`AlignmentReadout.fit`].
        cache_dir (`str` or `os.PathLike`, *optional*): the training caches (see [`training_pairs_dataset`]).
        batch_size, device, num_workers, show_progress: see [`pair_projections`].
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_alignment_model(model_dir, device)
    kind = kind or readout_kind_for_loss(model.config.alignment_loss)
    dataset, reports = (None, None) if kind == "cosine" else training_pairs_dataset(
        model_dir, cache_dir=cache_dir, device=device, show_progress=show_progress)
    info = {"source": "python -m acula_train.readout fit",
            "fitted_on": "the alignment training pairs listed in reports.jsonl (the training crop of each recording)"}
    prefix_layers = None
    if dataset is not None:
        states = find_prefix_states(model, dataset, run_prefix_layers(model_dir, model.config),
                                    Path(cache_dir).expanduser() if cache_dir else acula_cache_dir())
        if states is not None:
            prefix_layers = run_prefix_layers(model_dir, model.config)
            dataset, info["encoded_from"] = states, f"the run's prefix cache ({prefix_layers} layers)"
    readout = fit_readout(model, dataset, kind=kind, ridge_alpha=ridge_alpha, reports=reports, batch_size=batch_size,
                          device=device, num_workers=num_workers, show_progress=show_progress, info=info,
                          prefix_layers=prefix_layers)
    readout.save(Path(model_dir) / "alignment")
    return readout


def main(argv: list[str] | None = None) -> AlignmentReadout:
    parser = argparse.ArgumentParser(
        prog="python -m acula_train.readout",
        description="Fit the zero-shot / retrieval readout of an acula output folder on its alignment training "
                    "pairs and store it in <model_dir>/alignment/ (readout.json, readout.safetensors).")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit and store the readout of an output folder")
    fit.add_argument("--model_dir", required=True, help="output folder of train_acula.py")
    fit.add_argument("--kind", choices=READOUT_KINDS, default=None,
                     help="default: procrustes for CKA-trained heads, cosine for infonce")
    fit.add_argument("--ridge_alpha", type=float, default=DEFAULT_RIDGE_ALPHA,
                     help="ridge penalty relative to the mean eigenvalue of the audio Gram matrix")
    fit.add_argument("--cache_dir", default=None, help="training caches (default: $ACULA_CACHE, else acula's folder in the Hugging Face cache)")
    fit.add_argument("--batch_size", type=int, default=16)
    fit.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    fit.add_argument("--num_workers", type=int, default=0, help="DataLoader workers")
    args = parser.parse_args(argv)
    try:
        readout = fit_folder_readout(args.model_dir, kind=args.kind, ridge_alpha=args.ridge_alpha,
                                     cache_dir=args.cache_dir, batch_size=args.batch_size, device=args.device,
                                     num_workers=args.num_workers)
    except ValueError as error:
        if argv is not None:
            raise
        print(f"alignment_readout: error: {error}", file=sys.stderr)
        sys.exit(1)
    summary = {k: v for k, v in readout.info.items() if k.startswith(("in_sample", "num_pairs", "alignment_loss"))}
    print(f"{readout.kind} readout written to {Path(args.model_dir) / 'alignment'} {json.dumps(summary)}")
    return readout


__all__ = [
    "DEFAULT_READOUT_KIND",
    "DEFAULT_RIDGE_ALPHA",
    "READOUT_JSON",
    "READOUT_KINDS",
    "READOUT_WEIGHTS",
    "AlignmentReadout",
    "check_prefix_states",
    "fit_folder_readout",
    "find_prefix_states",
    "fit_readout",
    "load_alignment_model",
    "pair_projections",
    "readout_kind_for_loss",
    "recall_at_k",
    "training_pairs_dataset",
    "write_training_readout",
]


if __name__ == "__main__":
    main()
