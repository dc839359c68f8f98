"""A NaN loss in training: `stop` raises a clear FloatingPointError and keeps the last good checkpoint whole;
`skip` drops the step, counts it, and the run finishes with finite weights.

The NaN is injected in-process by wrapping `AculaForPreTraining.forward` (no test hook in the library): from a
chosen call on, the returned loss is multiplied by NaN, so both the loss *and* its gradients are NaN, as they are
when a real overflow happens upstream of the loss.
"""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from modeling_acula import AculaForPreTraining
from acula_train.checkpoints import list_checkpoints
from tests.testing_utils import read_log, run_in_process, tiny_args


def _poison_forward(monkeypatch, bad_calls: set[int]) -> list[int]:
    """Make the loss of the given (1-based) forward calls NaN; returns the call counter."""
    original = AculaForPreTraining.forward
    calls = [0]

    def forward(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] in bad_calls and outputs.loss is not None:
            outputs["loss"] = outputs.loss * float("nan")
            outputs["alignment_loss"] = outputs.alignment_loss * float("nan")
        return outputs

    monkeypatch.setattr(AculaForPreTraining, "forward", forward)
    return calls


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Teacher vectors and spectrograms shared by the runs of this file."""
    return tmp_path_factory.mktemp("nonfinite-cache")


def _all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, cache_dir, monkeypatch):
    output = tmp_path / "out"
    _poison_forward(monkeypatch, {3})  # batch size 8, no accumulation: forward call 3 is step 3
    args = tiny_args(output, cache_dir, "--max_steps", "4", "--checkpointing_steps", "2")
    with pytest.raises(FloatingPointError) as raised:
        run_in_process(args)
    message = str(raised.value)
    assert "Non-finite loss at step 3" in message
    assert str(output / "checkpoints") in message and "--on_nonfinite_loss skip" in message

    # the checkpoint of step 2 is there, complete and finite; no half-written one, no final model
    checkpoints = list_checkpoints(output / "checkpoints")
    assert [p.name for p in checkpoints] == ["step-00000002"]
    assert not [p for p in (output / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["skipped_nonfinite"] == 0
    assert _all_finite(load_file(str(checkpoints[0] / "model.safetensors")))
    assert _all_finite(load_file(str(checkpoints[0] / "optimizer.safetensors")))
    assert not (output / "config.json").exists() and not (output / "alignment").exists()
    assert [record["step"] for record in read_log(output)] == [1, 2]  # nothing logged for the bad step

    # the kept checkpoint is usable: without the NaN the run resumes from it and finishes
    monkeypatch.undo()
    run_in_process(args + ["--resume_from_checkpoint", "latest"])
    assert [record["step"] for record in read_log(output)] == [1, 2, 3, 4]
    assert _all_finite(load_file(str(output / "alignment" / "model.safetensors")))


def test_skip_mode_drops_the_bad_steps_counts_them_and_finishes(tmp_path, cache_dir, monkeypatch, capsys):
    output = tmp_path / "skip"
    calls = _poison_forward(monkeypatch, {2, 3})
    run_in_process(tiny_args(output, cache_dir, "--max_steps", "4", "--checkpointing_steps", "3",
                             "--on_nonfinite_loss", "skip"))
    printed = capsys.readouterr().out
    assert printed.count("Skipped (--on_nonfinite_loss skip)") == 2
    assert "Non-finite loss at step 2" in printed and "Non-finite loss at step 3" in printed
    assert calls[0] == 4  # the skipped steps still count towards --max_steps

    # NaN gradients never reached the weights: the step after the skipped ones is finite again
    assert _all_finite(load_file(str(output / "alignment" / "model.safetensors")))
    log = read_log(output)
    assert [record["step"] for record in log] == [1, 2, 3, 4]
    assert [("loss" in record) for record in log] == [True, False, False, True]  # no NaN in the loss log
    assert all(math.isfinite(record["loss"]) for record in log if "loss" in record)

    # the checkpoint after step 3 counts both skips, and AdamW was stepped once only (steps 2 and 3 dropped)
    checkpoint = output / "checkpoints" / "step-00000003"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["skipped_nonfinite"] == 2
    optimizer = load_file(str(checkpoint / "optimizer.safetensors"))
    adam_steps = {float(value) for name, value in optimizer.items() if name.endswith(".step")}
    assert adam_steps == {1.0}
    assert _all_finite(optimizer) and _all_finite(load_file(str(checkpoint / "model.safetensors")))
