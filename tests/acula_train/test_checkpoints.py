"""Crash-safe checkpoints (acula_train/checkpoints.py): pruning and damaged files."""

import pytest
import torch

from acula_train.checkpoints import list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint


def _tiny_optimisation():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    model, optimizer, scheduler = _tiny_optimisation()
    folder = tmp_path / "checkpoints"
    for step in (4, 6):  # left by an earlier timeline
        save_checkpoint(folder, step, model.state_dict(), optimizer, scheduler, {}, total_limit=2)
    written = save_checkpoint(folder, 2, model.state_dict(), optimizer, scheduler, {}, total_limit=2)
    assert written.is_dir() and resolve_checkpoint(folder, "latest") == written
    assert [p.name for p in list_checkpoints(folder)] == ["step-00000002"]
    for step in (4, 6, 8):  # the limit still applies to the run's own checkpoints
        save_checkpoint(folder, step, model.state_dict(), optimizer, scheduler, {}, total_limit=2)
    assert [p.name for p in list_checkpoints(folder)] == ["step-00000006", "step-00000008"]


@pytest.mark.parametrize(("damaged", "words"), [
    ("optimizer.safetensors", "not valid safetensors"),
    ("model.safetensors", "not valid safetensors"),
    ("trainer_state.json", "not valid JSON"),
])
def test_damaged_checkpoint_file_is_a_value_error_naming_it(tmp_path, damaged, words):
    model, optimizer, scheduler = _tiny_optimisation()
    path = save_checkpoint(tmp_path, 2, model.state_dict(), optimizer, scheduler, {"epoch": 0})
    with open(path / damaged, "r+b") as handle:
        handle.truncate(100)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=words) as error:
        load_checkpoint(path, model, optimizer, scheduler)
    assert str(path / damaged) in str(error.value) and "--resume_from_checkpoint" in str(error.value)
    for name, value in model.state_dict().items():  # nothing restored from a damaged checkpoint
        assert torch.equal(value, weights[name])
