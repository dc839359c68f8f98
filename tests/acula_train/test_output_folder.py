"""The output folder of a run (acula_train/output_folder.py): refused before any work, and an interrupted swap undone."""

import pytest

from acula_train import output_folder

from tests.testing_utils import run_in_process, tiny_args


def test_output_dir_with_other_files_is_refused_before_any_work(tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "notes.txt").write_text("not acula's")
    with pytest.raises(ValueError, match=r"holds files that train_acula.py does not write \(notes.txt\)"):
        run_in_process(tiny_args(out, tmp_path / "cache", "--max_steps", "1"))
    assert (out / "notes.txt").read_text() == "not acula's"
    assert output_folder.foreign_entries(out) == ["notes.txt"]
    (out / "notes.txt").unlink()
    for name in ("config.json", "model.safetensors", "model-00001-of-00002.safetensors", "adapter", "checkpoints"):
        (out / name).mkdir()
    assert output_folder.foreign_entries(out) == []


def test_cache_inside_the_output_folder_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="is inside --output_dir"):
        run_in_process(tiny_args(tmp_path / "out", tmp_path / "out" / "cache", "--max_steps", "1"))


def test_swap_killed_between_its_two_renames_is_undone_at_the_next_start(tmp_path):
    out = tmp_path / "out"
    staging, previous = output_folder._staging_paths(out)
    (previous / "checkpoints" / "step-00000002").mkdir(parents=True)  # the earlier folder, renamed away
    (staging / "adapter").mkdir(parents=True)  # the new one, not yet in place
    output_folder.recover_interrupted_swap(out)
    assert (out / "checkpoints" / "step-00000002").is_dir() and not staging.exists() and not previous.exists()
