"""Property tests (hypothesis) of the feature extractor and the alignment losses over random shapes, rates and values."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_acula.feature_extraction_acula import AculaFeatureExtractor
from modeling_acula.losses import (
    ALIGNMENT_LOSSES,
    AlignmentLoss,
    debiased_linear_cka,
    linear_cka,
    released_covariance_cka,
    symmetric_info_nce,
)

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXTRACTOR = AculaFeatureExtractor()
RATES = [2000, 4000, 8000, 11025, 16000, 22050, 44100, 48000, 96000, 192000]


@st.composite
def recordings(draw) -> tuple[object, int]:
    """One recording: a random length (a few ms to 10 s, i.e. padded and cropped), rate, amplitude, dtype and
    channel layout (mono, frames x channels, channels x frames)."""
    rate = draw(st.sampled_from(RATES))
    seconds = draw(st.floats(0.005, 10.0))
    num_samples = max(int(seconds * rate), math.ceil(rate / 16000) + 1)
    channels = draw(st.sampled_from([1, 2, 6]))
    layout = draw(st.sampled_from(["frames_channels", "channels_frames"]))
    amplitude = draw(st.sampled_from([0.0, 1e-6, 1e-3, 0.3, 1.0, 50.0]))
    dtype = draw(st.sampled_from(["float32", "float64", "int16", "int32"]))
    kind = draw(st.sampled_from(["noise", "tone", "clicks"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "noise":
        signal = rng.standard_normal((num_samples, channels))
    elif kind == "tone":
        t = np.arange(num_samples)[:, None] / rate
        signal = np.sin(2 * np.pi * rng.uniform(60, rate / 2.2, size=channels) * t)
    else:
        signal = (rng.random((num_samples, channels)) > 0.999).astype(np.float64)
    signal = amplitude * signal
    if dtype.startswith("int"):
        full_scale = -np.iinfo(dtype).min
        signal = np.round(np.clip(signal, -1, 1) * (full_scale - 1)).astype(dtype)
    else:
        signal = signal.astype(dtype)
    if channels == 1:
        signal = signal[:, 0]
    elif layout == "channels_frames":
        signal = np.ascontiguousarray(signal.T)
    if num_samples <= channels and channels > 1:  # too short to tell the channel axis: keep it mono
        signal = signal[:, 0] if layout == "frames_channels" else signal[0]
    return signal, rate


@SETTINGS
@given(batch=st.lists(recordings(), min_size=1, max_size=3))
def test_feature_extractor_outputs_are_finite_in_range_and_batch_independent(batch):
    waveforms = [item for item, _ in batch]
    rates = [rate for _, rate in batch]
    batched = EXTRACTOR(waveforms, sampling_rate=rates, return_tensors="pt")["input_values"]
    assert batched.shape == (len(batch), 1, 256, 64) and batched.dtype == torch.float32
    assert torch.isfinite(batched).all()
    assert batched.min() >= 0.0 and batched.max() <= 1.0
    for index, (waveform, rate) in enumerate(batch):
        alone = EXTRACTOR([waveform], sampling_rate=rate, return_tensors="pt")["input_values"]  # a list: one item
        torch.testing.assert_close(batched[index : index + 1], alone, atol=1e-6, rtol=0)
        # every non-constant clip spans [0, 1] exactly; a constant one (silence, or below `amin`) is all zeros
        assert alone.max() in (0.0, 1.0) and alone.min() == 0.0


@SETTINGS
@given(
    item=recordings(),
    window=st.sampled_from([1.0, 2.5, 8.1875]),
    hop=st.sampled_from([None, 0.5, 1.0]),
)
def test_sliding_windows_cover_the_recording(item, window, hop):
    waveform, rate = item
    out = EXTRACTOR([waveform, waveform], sampling_rate=rate, window_seconds=window, hop_seconds=hop)
    values, index = out["input_values"], out["recording_index"]
    assert values.shape[1:] == (1, 256, 64) and torch.isfinite(values).all()
    assert values.min() >= 0.0 and values.max() <= 1.0
    per_recording = values.shape[0] // 2
    assert index.tolist() == [0] * per_recording + [1] * per_recording  # in order, same count for equal inputs
    torch.testing.assert_close(values[:per_recording], values[per_recording:], atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------- losses


@st.composite
def embedding_pairs(draw, min_n: int = 4, same_dim: bool = False):
    n = draw(st.integers(min_n, 24))
    d_x = draw(st.integers(1, 40))
    d_y = d_x if same_dim else draw(st.integers(1, 40))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(n, d_x, generator=generator, dtype=torch.float64)
    y = torch.randn(n, d_y, generator=generator, dtype=torch.float64)
    relation = draw(st.sampled_from(["independent", "linear", "constant_x", "scaled"]))
    if relation == "linear":
        y = x @ torch.randn(d_x, d_y, generator=generator, dtype=torch.float64)
    elif relation == "constant_x":
        x = torch.ones_like(x) * 3.0
    elif relation == "scaled":
        x = x * draw(st.sampled_from([1e-6, 1e6]))
    return x, y


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@SETTINGS
@given(pair=embedding_pairs(), seed=st.integers(0, 1000), scale=st.floats(1e-3, 1e3), shift=st.floats(-10, 10))
def test_linear_cka_is_bounded_and_invariant(pair, seed, scale, shift):
    x, y = pair
    value = linear_cka(x, y)
    assert torch.isfinite(value) and -1e-9 <= value.item() <= 1 + 1e-9
    torch.testing.assert_close(linear_cka(y, x), value)  # symmetric
    rotated = scale * x @ _orthogonal(x.shape[1], seed)
    # a shift relative to the spread: a huge shift makes any input "constant" under the documented eps rule
    transformed = rotated + shift * rotated.abs().max()
    torch.testing.assert_close(linear_cka(transformed, y), value, atol=1e-7, rtol=1e-6)
    if torch.linalg.matrix_norm(x - x.mean(0)) > 1e-3 * torch.linalg.matrix_norm(x):
        torch.testing.assert_close(linear_cka(x, x), torch.tensor(1.0, dtype=x.dtype))


@SETTINGS
@given(pair=embedding_pairs(), seed=st.integers(0, 1000), scale=st.floats(1e-3, 1e3), shift=st.floats(-10, 10))
def test_debiased_cka_is_finite_and_invariant(pair, seed, scale, shift):
    x, y = pair
    value = debiased_linear_cka(x, y)
    assert torch.isfinite(value)
    torch.testing.assert_close(debiased_linear_cka(y, x), value)
    rotated = scale * x @ _orthogonal(x.shape[1], seed)
    # a shift relative to the spread: a huge shift makes any input "constant" under the documented eps rule
    transformed = rotated + shift * rotated.abs().max()
    torch.testing.assert_close(debiased_linear_cka(transformed, y), value, atol=1e-7, rtol=1e-6)


@SETTINGS
@given(pair=embedding_pairs(min_n=2, same_dim=True), scale=st.floats(1e-3, 1e3))
def test_released_cka_and_infonce_are_finite(pair, scale):
    x, y = pair
    released = released_covariance_cka(x, y)
    assert torch.isfinite(released)
    if (x - x.mean(0)).abs().max() > 0:  # a constant input gives 0 / 0 rounding noise here (reproduction-only loss)
        torch.testing.assert_close(released_covariance_cka(scale * x, y), released, atol=1e-7, rtol=1e-6)
    info_nce = symmetric_info_nce(x, y, logit_scale=scale)
    assert torch.isfinite(info_nce)
    # Each row's cross-entropy over n candidates with logits in [-scale, scale] (cosines times the scale) lies
    # between log(1 + (n - 1) e^(-2 scale)) (own pair at +scale, the rest at -scale) and log(1 + (n - 1) e^(2 scale)):
    # about log(n) at small scales.
    n = x.shape[0]
    low, high = (np.logaddexp(0.0, math.log(n - 1) + sign * 2 * scale) for sign in (-1, 1))
    assert low - 1e-9 * (1 + low) <= info_nce.item() <= high + 1e-9 * (1 + high)
    # InfoNCE only sees directions: a positive rescaling of either input changes nothing
    torch.testing.assert_close(symmetric_info_nce(x * 7.0, y, logit_scale=scale), info_nce)


@SETTINGS
@given(
    kind=st.sampled_from(ALIGNMENT_LOSSES),
    pair=embedding_pairs(same_dim=True),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_alignment_loss_and_its_gradients_are_finite(kind, pair, dtype):
    x, y = (tensor.to(dtype).requires_grad_(True) for tensor in pair)
    loss_module = AlignmentLoss(kind, gather_across_processes=False)
    loss = loss_module(x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    if kind == "cka":
        assert -1e-5 <= loss.item() <= 1 + 1e-5  # 1 - CKA, CKA in [0, 1]
    loss.backward()
    for tensor in (x, y):
        assert tensor.grad is not None and tensor.grad.shape == tensor.shape
        assert torch.isfinite(tensor.grad.float()).all()
    if loss_module.logit_scale is not None:
        assert torch.isfinite(loss_module.logit_scale.grad)


@pytest.mark.parametrize("kind", ["cka", "debiased_cka"])
def test_constant_embeddings_give_zero_similarity_and_zero_gradients(kind):
    x = torch.full((8, 5), 2.0, requires_grad=True)
    y = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    loss = AlignmentLoss(kind, gather_across_processes=False)(x, y)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
