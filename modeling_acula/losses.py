"""Batch-level alignment losses between audio projections and text (teacher) projections.

All losses compare a batch of audio projections `a` of shape `(n, d_a)` with the text projections `t` of
shape `(n, d_t)` of the same `n` recordings. They are *batch-level*: their value depends on the whole
batch, so under data parallelism the embeddings of all processes must be gathered first (see
[`gather_with_grad`]), otherwise every process silently optimises a different, smaller-batch objective.

Objectives:

- `"cka"`: standard linear CKA (Kornblith et al., 2019) on the `n x n` sample Gram matrices. It is biased
  towards 1 when `n` is small compared with the dimension (random 512-d projections of a batch of 24 already
  score about 0.95), so it is a weak training signal at the reference batch size.
- `"debiased_cka"` (default): linear CKA built on the unbiased HSIC estimator (Song et al., 2012; "debiased
  CKA" of Nguyen, Raghu & Kornblith, 2021); close to 0 for independent inputs at any batch size.
- `"released_covariance_cka"`: the variant of the authors' released code, the cosine between the two `d x d`
  feature covariance matrices of the sample-centred batches; it is not invariant to rotations and is kept only
  to reproduce their numbers.
- `"infonce"`: CLIP-style symmetric InfoNCE with a learnable temperature.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

ALIGNMENT_LOSSES = ("cka", "debiased_cka", "released_covariance_cka", "infonce")
CKA_LOSSES = ("cka", "debiased_cka", "released_covariance_cka")

# Relative size of ||X - mean(X)||_F with respect to ||X||_F below which an input counts as constant. The
# mean of identical float32 rows is only exact to a few ulps, so a strict zero test would let rounding noise
# through and turn a collapsed (constant) embedding into a random similarity.
DEFAULT_CONSTANT_EPS = 1e-6


def _check_pair(x: torch.Tensor, y: torch.Tensor, name: str, same_dim: bool = False) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: expected two tensors, got {type(x).__name__} and {type(y).__name__}.")
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(
            f"{name}: expected 2-D inputs of shape (batch, dim), got shapes {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name}: both inputs must hold the same number of samples, got {x.shape[0]} and {y.shape[0]}."
        )
    if same_dim and x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{name}: requires equal embedding sizes, got {x.shape[1]} and {y.shape[1]} (use projection heads "
            "with the same output size)."
        )


def _upcast(x: torch.Tensor) -> torch.Tensor:
    # The debiased estimator subtracts terms of similar size: half precision loses it entirely.
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _centre_and_normalise(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Centre the columns of `x` and scale it to unit Frobenius norm.

    CKA is invariant to the scale of each input, and the rescaling keeps the fourth-power terms of the
    estimators inside float32 range. A (numerically) constant input is mapped to zeros, flagged by the
    returned boolean, without any `sqrt(0)` or `0 / 0` on the autograd path (so gradients stay finite).

    Returns:
        `tuple(torch.Tensor, torch.Tensor)`: the normalised input and a 0-d boolean "is not constant".
    """
    centred = x - x.mean(dim=0, keepdim=True)
    squared_norm = centred.square().sum()
    with torch.no_grad():
        reference = x.square().sum()
        is_varying = squared_norm > (eps * eps) * reference
    norm = torch.sqrt(torch.where(is_varying, squared_norm, torch.ones_like(squared_norm)))
    normalised = torch.where(is_varying, centred / norm, torch.zeros_like(centred))
    return normalised, is_varying


def _dot_product_terms(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Return `(||X^T Y||_F^2, ||X^T X||_F^2, ||Y^T Y||_F^2)`, through the cheaper of two equal formulas.

    `||X^T Y||_F^2 = sum((X X^T) * (Y Y^T))`: the `n x n` Gram form costs about `n^2 (d_x + d_y)` and the
    `d x d` feature form about `n (d_x d_y + d_x^2 + d_y^2)`.
    """
    n, dim_x = x.shape
    dim_y = y.shape[1]
    if n * (dim_x + dim_y) < dim_x * dim_y + dim_x * dim_x + dim_y * dim_y:
        gram_x = x @ x.T
        gram_y = y @ y.T
        return (gram_x * gram_y).sum(), gram_x.square().sum(), gram_y.square().sum()
    return (x.T @ y).square().sum(), (x.T @ x).square().sum(), (y.T @ y).square().sum()


def _safe_ratio(numerator: torch.Tensor, product: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`numerator / sqrt(product)` where `valid`, else 0, with finite gradients in both branches."""
    valid = valid & (product > 0)
    denominator = torch.sqrt(torch.where(valid, product, torch.ones_like(product)))
    return torch.where(valid, numerator / denominator, torch.zeros_like(numerator))


def linear_cka(x: torch.Tensor, y: torch.Tensor, eps: float = DEFAULT_CONSTANT_EPS) -> torch.Tensor:
    r"""
    Standard linear CKA (Kornblith et al., 2019) between two batches of embeddings.

    `CKA = ||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)` with column-centred `Xc`, `Yc`, which equals the
    kernel-CKA of the `n x n` sample Gram matrices. It is invariant to orthogonal transforms, isotropic
    scaling and shifts of either input, lies in [0, 1], and is biased towards 1 when `n` is small compared
    with the dimension (prefer [`debiased_linear_cka`] for training).

    Args:
        x (`torch.Tensor` of shape `(n, d_x)`):
            First batch of embeddings.
        y (`torch.Tensor` of shape `(n, d_y)`):
            Second batch, same samples in the same order; `d_y` may differ from `d_x`.
        eps (`float`, *optional*, defaults to 1e-6):
            An input with `||X - mean(X)||_F <= eps * ||X||_F` counts as constant: its similarity is defined
            as 0 (with finite, zero gradients) instead of NaN.

    Returns:
        `torch.Tensor`: a 0-d tensor.
    """
    _check_pair(x, y, "linear_cka")
    x, is_varying_x = _centre_and_normalise(_upcast(x), eps)
    y, is_varying_y = _centre_and_normalise(_upcast(y), eps)
    cross, self_x, self_y = _dot_product_terms(x, y)
    return _safe_ratio(cross, self_x * self_y, is_varying_x & is_varying_y)


def _unbiased_hsic(
    dot_product: torch.Tensor,
    row_norms_x: torch.Tensor,
    row_norms_y: torch.Tensor,
    n: int,
) -> torch.Tensor:
    """
    Unbiased HSIC estimator (Song et al., 2012) of linear kernels of column-centred inputs, times `n (n - 3)`.

    With centred inputs the Gram matrices have zero row sums, and the estimator
    `tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2 / (n-2) 1^T K~ L~ 1` (`K~`: `K` with a zero diagonal)
    reduces to the expression below, which only needs `||X^T Y||_F^2` and the squared row norms.
    """
    return (
        dot_product
        - n / (n - 2) * (row_norms_x * row_norms_y).sum()
        + row_norms_x.sum() * row_norms_y.sum() / ((n - 1) * (n - 2))
    )


def debiased_linear_cka(x: torch.Tensor, y: torch.Tensor, eps: float = DEFAULT_CONSTANT_EPS) -> torch.Tensor:
    r"""
    Linear CKA built on the unbiased HSIC estimator ("debiased CKA", Nguyen, Raghu & Kornblith, 2021).

    Unlike [`linear_cka`], it is close to 0 for independent inputs at any batch size, so it stays an
    informative training signal when the batch is small compared with the embedding size. It keeps the
    invariances of linear CKA; being built on unbiased estimates it may be slightly negative (or, in
    degenerate batches, slightly above 1).

    Args:
        x (`torch.Tensor` of shape `(n, d_x)`):
            First batch of embeddings, `n >= 4`.
        y (`torch.Tensor` of shape `(n, d_y)`):
            Second batch, same samples in the same order; `d_y` may differ from `d_x`.
        eps (`float`, *optional*, defaults to 1e-6):
            An input with `||X - mean(X)||_F <= eps * ||X||_F` counts as constant: its similarity is 0.

    Returns:
        `torch.Tensor`: a 0-d tensor.
    """
    _check_pair(x, y, "debiased_linear_cka")
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"debiased_linear_cka: the unbiased HSIC estimator needs a batch of n >= 4, got n={n}.")
    x, is_varying_x = _centre_and_normalise(_upcast(x), eps)
    y, is_varying_y = _centre_and_normalise(_upcast(y), eps)
    cross, self_x, self_y = _dot_product_terms(x, y)
    row_norms_x = x.square().sum(dim=1)
    row_norms_y = y.square().sum(dim=1)
    hsic_xy = _unbiased_hsic(cross, row_norms_x, row_norms_y, n)
    hsic_xx = _unbiased_hsic(self_x, row_norms_x, row_norms_x, n)
    hsic_yy = _unbiased_hsic(self_y, row_norms_y, row_norms_y, n)
    return _safe_ratio(hsic_xy, hsic_xx * hsic_yy, is_varying_x & is_varying_y)


def released_covariance_cka(x: torch.Tensor, y: torch.Tensor, eps: float = DEFAULT_CONSTANT_EPS) -> torch.Tensor:
    r"""
    The "CKA" of the authors' released code (`compute_alignment_loss` in janine714/AcuLA `model.py`), kept ONLY to
    reproduce their numbers; do not use it otherwise.

    Each batch is centred over its samples (`X - mean_0(X)`, `Y - mean_0(Y)`), the two `d x d` feature
    covariance matrices `K = X^T X` and `L = Y^T Y` are formed, and the similarity is their cosine,
    `<K, L>_F / (||K||_F ||L||_F)`. There is no further centring of `K` or `L`. Unlike CKA on the `n x n` sample
    Gram matrices it is not invariant to rotations of either embedding space (`sim(X, XQ) != 1` for an
    orthogonal `Q`), and it needs `d_x == d_y`. Use [`linear_cka`] or [`debiased_linear_cka`] instead.

    Args:
        x (`torch.Tensor` of shape `(n, d)`):
            First batch of embeddings.
        y (`torch.Tensor` of shape `(n, d)`):
            Second batch, same samples in the same order and the same size `d`.
        eps (`float`, *optional*, defaults to `DEFAULT_CONSTANT_EPS`):
            Relative threshold below which a centred input counts as constant; the similarity is then 0 (the
            released code divides 0 by 0).

    Returns:
        `torch.Tensor`: a 0-d tensor.
    """
    _check_pair(x, y, "released_covariance_cka", same_dim=True)
    x, is_varying_x = _centre_and_normalise(_upcast(x), eps)
    y, is_varying_y = _centre_and_normalise(_upcast(y), eps)
    covariance_x = x.T @ x
    covariance_y = y.T @ y
    inner = (covariance_x * covariance_y).sum()
    product = covariance_x.square().sum() * covariance_y.square().sum()
    return _safe_ratio(inner, product, is_varying_x & is_varying_y)


def symmetric_info_nce(a: torch.Tensor, t: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    r"""
    CLIP-style symmetric InfoNCE over the batch: the `i`-th audio matches the `i`-th text and no other.

    Args:
        a (`torch.Tensor` of shape `(n, d)`):
            Audio embeddings (L2-normalised here).
        t (`torch.Tensor` of shape `(n, d)`):
            Text embeddings of the same samples (L2-normalised here).
        logit_scale (`torch.Tensor` or `float`):
            Multiplier of the cosine similarities, i.e. `1 / temperature` (already exponentiated, not its log).

    Returns:
        `torch.Tensor`: a 0-d tensor, the mean of the audio-to-text and text-to-audio cross-entropies.
    """
    _check_pair(a, t, "symmetric_info_nce", same_dim=True)
    a = F.normalize(_upcast(a), dim=-1)
    t = F.normalize(_upcast(t), dim=-1)
    logits = logit_scale * (a @ t.T)
    targets = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def _check_equal_shapes(x: torch.Tensor, group: dist.ProcessGroup | None, world_size: int) -> None:
    # Every process gets all shapes, so a mismatch raises on all of them (no process is left hanging).
    shape = torch.tensor(x.shape, dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size)]
    dist.all_gather(shapes, shape, group=group)
    shapes = [tuple(s.tolist()) for s in shapes]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(
            "gather_with_grad: every process must pass embeddings of the same shape (use drop_last=True or "
            f"equal per-process batches), got shapes {shapes} by rank."
        )


def gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """
    Concatenate the embeddings of all processes along dim 0, keeping gradients; identity without distribution.

    Use it before a batch-level loss, so that the loss is computed on the global batch. Each process must then
    compute the loss on the same gathered tensors; the backward of torch's differentiable `all_gather` sums the
    gradients for the local slice over all processes (a reduce-scatter), so that after DDP's gradient averaging
    the parameter gradients equal those of a single process on the global batch. Works with gloo (CPU) and NCCL.

    Args:
        x (`torch.Tensor` of shape `(n_local, ...)`):
            This process's embeddings; all processes must pass the same shape.
        group (`torch.distributed.ProcessGroup`, *optional*):
            Process group to gather over; defaults to the world.

    Returns:
        `torch.Tensor` of shape `(world_size * n_local, ...)`, in rank order (`x` itself when
        torch.distributed is not initialised or has a single process).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return x
    world_size = dist.get_world_size(group=group)
    if world_size == 1:
        return x
    _check_equal_shapes(x, group, world_size)
    # Imported here: it needs a torch build with torch.distributed, which the library does not otherwise.
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x, group=dist.group.WORLD if group is None else group), dim=0)


class AlignmentLoss(nn.Module):
    r"""
    Alignment loss between the audio projections and the text projections of a batch.

    For the CKA kinds the loss is `1 - similarity` and the module has no parameters. For `"infonce"` it owns a
    `logit_scale` (the log of `1 / temperature`, as in CLIP), learnable by default and clamped at
    `log(max_logit_scale)` in the forward pass.

    Args:
        kind (`str`, *optional*, defaults to `"debiased_cka"`):
            One of `"cka"`, `"debiased_cka"`, `"released_covariance_cka"` (reproduction of the authors' code
            only) or `"infonce"`.
        init_temperature (`float`, *optional*, defaults to 0.07):
            Initial InfoNCE temperature (ignored by the CKA kinds).
        learnable_temperature (`bool`, *optional*, defaults to `True`):
            Whether the InfoNCE temperature is a trainable parameter (otherwise a fixed buffer).
        max_logit_scale (`float`, *optional*, defaults to 100.0):
            Upper bound of `1 / temperature`.
        gather_across_processes (`bool`, *optional*, defaults to `True`):
            Whether to gather the embeddings of all processes (with gradients) before computing the loss,
            so that data-parallel training optimises the loss of the global batch.
    """

    def __init__(
        self,
        kind: str = "debiased_cka",
        init_temperature: float = 0.07,
        learnable_temperature: bool = True,
        max_logit_scale: float = 100.0,
        gather_across_processes: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ALIGNMENT_LOSSES:
            raise ValueError(f"AlignmentLoss: `kind` must be one of {ALIGNMENT_LOSSES}, got {kind!r}.")
        self.kind = kind
        self.gather_across_processes = gather_across_processes
        self.max_logit_scale = float(max_logit_scale)
        if kind != "infonce":
            self.logit_scale = None
        else:
            if not init_temperature > 0:
                raise ValueError(f"AlignmentLoss: `init_temperature` must be > 0, got {init_temperature}.")
            if not 1.0 / init_temperature <= self.max_logit_scale:
                raise ValueError(
                    f"AlignmentLoss: 1 / init_temperature = {1.0 / init_temperature:g} exceeds "
                    f"max_logit_scale = {self.max_logit_scale:g}."
                )
            initial = torch.tensor(math.log(1.0 / init_temperature))
            if learnable_temperature:
                self.logit_scale = nn.Parameter(initial)
            else:
                self.register_buffer("logit_scale", initial)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, gather_across_processes={self.gather_across_processes}"

    def forward(self, audio_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """
        Args:
            audio_embeds (`torch.Tensor` of shape `(batch, d_audio)`):
                Audio projections of this process's batch.
            text_embeds (`torch.Tensor` of shape `(batch, d_text)`):
                Text projections of the same recordings, in the same order.

        Returns:
            `torch.Tensor`: the scalar loss (identical on every process when gathering).
        """
        _check_pair(audio_embeds, text_embeds, f"AlignmentLoss({self.kind!r})")
        if self.gather_across_processes:
            audio_embeds = gather_with_grad(audio_embeds)
            text_embeds = gather_with_grad(text_embeds)
        return self.loss_on_gathered(audio_embeds, text_embeds)

    def loss_on_gathered(
        self, audio_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        The loss of embeddings that already hold the whole batch (no gathering).

        Args:
            audio_embeds (`torch.Tensor` of shape `(batch, d_audio)`):
                Audio projections of the whole batch.
            text_embeds (`torch.Tensor` of shape `(batch, d_text)`):
                Text projections of the same recordings, in the same order.
            logit_scale (`torch.Tensor`, *optional*):
                InfoNCE only: the log of `1 / temperature` to use instead of the module's own (gradient caching
                passes a detached copy, to take its gradient outside the data-parallel wrapper).

        Returns:
            `torch.Tensor`: the scalar loss.
        """
        _check_pair(audio_embeds, text_embeds, f"AlignmentLoss({self.kind!r})")
        # Autocast would run the matmuls in half precision, which the debiased estimator cannot afford.
        with torch.autocast(device_type=audio_embeds.device.type, enabled=False):
            audio_embeds, text_embeds = _upcast(audio_embeds), _upcast(text_embeds)
            if self.kind == "infonce":
                logit_scale = self.logit_scale if logit_scale is None else logit_scale
                logit_scale = logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()
                return symmetric_info_nce(audio_embeds, text_embeds, logit_scale)
            if self.kind == "cka":
                similarity = linear_cka(audio_embeds, text_embeds)
            elif self.kind == "debiased_cka":
                similarity = debiased_linear_cka(audio_embeds, text_embeds)
            else:
                similarity = released_covariance_cka(audio_embeds, text_embeds)
            return 1.0 - similarity


__all__ = [
    "ALIGNMENT_LOSSES",
    "AlignmentLoss",
    "debiased_linear_cka",
    "gather_with_grad",
    "linear_cka",
    "released_covariance_cka",
    "symmetric_info_nce",
]
