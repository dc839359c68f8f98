"""Gradient caching: the alignment loss of an optimiser step sees every accumulated micro-batch, with exact gradients.

Equivalence is checked on gradients (and with plain SGD on parameters): Adam's first step is about `lr * sign(g)`,
which would hide most gradient errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from safetensors.torch import load_file

from modeling_acula import AculaConfig, AculaForPreTraining
from acula_train.gradient_cache import backward_over_window

from tests.testing_utils import REPO, TINY, read_log, run_in_process, run_script, tiny_args

TINY_CONFIG = json.loads(TINY)


@pytest.fixture
def accelerator():
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


def _model(kind: str, projection_dropout: float = 0.0) -> AculaForPreTraining:
    torch.manual_seed(0)
    config = AculaConfig.from_preset("cpu-small", **{**TINY_CONFIG, "projection_dropout": projection_dropout},
                                     alignment_loss=kind)
    return AculaForPreTraining(config).train()


def _batch(n: int, seed: int, config: AculaConfig) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"input_values": torch.rand(n, 1, 256, 64, generator=generator),
            "teacher_embeds": torch.randn(n, config.teacher_hidden_size, generator=generator),
            "noise": torch.rand(n, config.num_patches, generator=generator)}


def _split(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, batch["input_values"].shape[0], size)]


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["debiased_cka", "released_covariance_cka", "infonce"])
def test_three_micro_batches_give_the_gradient_of_one_batch_of_24(kind, accelerator):
    model = _model(kind)
    batch = _batch(24, 0, model.config)
    whole = backward_over_window(model, [batch], accelerator, [1])
    expected = _gradients(model)
    model.zero_grad(set_to_none=True)
    cached = backward_over_window(model, _split(batch, 8), accelerator, [1, 2, 3])
    got = _gradients(model)
    assert set(got) == set(expected)
    if kind == "infonce":
        assert "alignment_head.logit_scale" in got  # the temperature learns through the cached path too
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=2e-5, rtol=1e-4, msg=name)
    assert cached.alignment_batch_size == whole.alignment_batch_size == 24
    for name in ("loss", "alignment_loss", "mam_loss"):
        assert cached.values[name] == pytest.approx(whole.values[name], rel=1e-5)


def test_per_micro_batch_loss_would_differ(accelerator):
    # What the check above guards against: the mean of three 8-recording losses is another objective.
    model = _model("debiased_cka")
    batch = _batch(24, 0, model.config)
    backward_over_window(model, [batch], accelerator, [1])
    expected = _gradients(model)["audio_projection.fc2.weight"]
    model.zero_grad(set_to_none=True)
    for part in _split(batch, 8):
        (model(**part).loss / 3).backward()
    per_micro_batch = model.audio_projection.fc2.weight.grad
    assert (per_micro_batch - expected).abs().max() > 1e-3


def test_dropout_draws_are_replayed_between_the_two_passes(accelerator):
    # With dropout on, the cached gradient equals that of one graph over the three micro-batches drawn with the
    # same seeds; a second pass with fresh draws would pair gradients with other embeddings.
    model = _model("debiased_cka", projection_dropout=0.5)
    parts = _split(_batch(24, 0, model.config), 8)
    seeds = [11, 12, 13]
    audio, text, mam = [], [], []
    for part, seed in zip(parts, seeds):
        torch.manual_seed(seed)
        outputs = model(**part, compute_alignment_loss=False)
        audio.append(outputs.audio_embeds)
        text.append(outputs.text_embeds)
        mam.append(outputs.mam_loss)
    reference = model.alignment_head(torch.cat(audio), torch.cat(text)) + torch.stack(mam).mean()
    reference.backward()
    expected = _gradients(model)
    model.zero_grad(set_to_none=True)
    backward_over_window(model, parts, accelerator, seeds)
    got = _gradients(model)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=2e-5, rtol=1e-4, msg=name)


def test_nonfinite_window_is_reported_not_stepped(accelerator):
    model = _model("debiased_cka")
    parts = _split(_batch(24, 0, model.config), 8)
    parts[1]["input_values"][0] = float("nan")
    result = backward_over_window(model, parts, accelerator, [1, 2, 3])
    assert not result.finite and result.values == {}
    assert any(value != value for value in result.nonfinite_terms.values())  # the NaN is named for the message


SGD_LAUNCHER = """
import sys
import torch
sys.path.insert(0, {repo!r})
import train_acula
# Plain SGD: a parameter's change is lr times its gradient, so equal parameters mean equal gradients.
torch.optim.AdamW = lambda params, lr, weight_decay=0.0, **kwargs: torch.optim.SGD(params, lr=lr)
train_acula.main()
"""


def _one_sgd_step(*extra: str) -> list[str]:
    # lr 1 and no clipping: after one step the parameters differ exactly as the gradients do.
    return ["--max_steps", "1", "--warmup_steps", "0", "--learning_rate", "1", "--max_grad_norm", "1e9",
            "--weight_decay", "0", "--checkpointing_steps", "0", "--full_finetune", *extra]


def _layout(args: list[str], per_device: int, accumulation: int) -> list[str]:
    args[args.index("--per_device_train_batch_size") + 1] = str(per_device)
    args[args.index("--gradient_accumulation_steps") + 1] = str(accumulation)
    return args


def _weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(output / "alignment" / "model.safetensors")


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], start: dict[str, torch.Tensor]):
    assert set(a) == set(b)
    moved = [name for name in a if not torch.equal(a[name], start[name])]
    assert len(moved) > 10  # the step did change the encoder, decoder and heads
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)


@pytest.fixture(scope="module")
def one_step_24x1(tmp_path_factory):
    root = tmp_path_factory.mktemp("gradcache")
    patch = pytest.MonkeyPatch()
    patch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay=0.0, **kwargs: torch.optim.SGD(params, lr=lr))
    try:
        output = run_in_process(_layout(tiny_args(root / "24x1", root / "cache", *_one_sgd_step()), 24, 1))
        start = run_in_process(_layout(tiny_args(root / "start", root / "cache", *_one_sgd_step(
            "--learning_rate", "0")), 24, 1))
    finally:
        patch.undo()
    return root, _weights(output), _weights(start)


def test_one_step_8x3_equals_one_step_24x1(one_step_24x1, monkeypatch):
    root, expected, start = one_step_24x1
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, weight_decay=0.0, **kwargs: torch.optim.SGD(params, lr=lr))
    output = run_in_process(_layout(tiny_args(root / "8x3", root / "cache", *_one_sgd_step()), 8, 3))
    _assert_same_weights(_weights(output), expected, start)
    (record,) = read_log(output)
    assert record["alignment_batch_size"] == 24
    assert "global batch 24, the batch the alignment loss sees" in (output / "README.md").read_text()


@pytest.mark.slow
def test_two_process_8x3_equals_one_process_48x1(one_step_24x1, tmp_path):
    root, _, start = one_step_24x1
    launcher = tmp_path / "sgd_train_acula.py"
    launcher.write_text(SGD_LAUNCHER.format(repo=str(REPO)))
    two = run_script(_layout(tiny_args(tmp_path / "ddp", root / "cache", *_one_sgd_step()), 8, 3), processes=2,
                     script=launcher)
    assert two.returncode == 0, two.stderr[-4000:]
    one = run_script(_layout(tiny_args(tmp_path / "one", root / "cache", *_one_sgd_step()), 48, 1), script=launcher)
    assert one.returncode == 0, one.stderr[-4000:]
    _assert_same_weights(_weights(tmp_path / "ddp"), _weights(tmp_path / "one"), start)
    (record,) = read_log(tmp_path / "ddp")
    assert record["alignment_batch_size"] == 48
