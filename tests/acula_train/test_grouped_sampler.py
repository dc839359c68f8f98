"""--group_batches_by: each optimiser step's recordings share one value of a manifest column."""

from collections import Counter

import pytest

from acula_train.grouped_sampler import GroupedStepSampler
from acula_train.trainer import AlignmentTrainer

from tests.testing_utils import read_log, run_in_process, tiny_args

GROUPS = ["heart"] * 23 + ["lung"] * 10 + ["cough"] * 7  # 40 rows: 2 full heart blocks, 1 lung, 0 cough


def epoch_blocks(sampler: GroupedStepSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    order = list(sampler)
    size = sampler.step_size
    return [order[start : start + size] for start in range(0, len(order), size)]


def test_every_row_once_per_epoch_and_full_group_blocks_first_class():
    sampler = GroupedStepSampler(GROUPS, step_size=8, seed=3)
    blocks = epoch_blocks(sampler, 0)
    assert sorted(i for block in blocks for i in block) == list(range(len(GROUPS)))
    single = [block for block in blocks if len({GROUPS[i] for i in block}) == 1]
    # heart 23 = 2 blocks + 7 left, lung 10 = 1 block + 2 left, cough 7 left: 3 single-group blocks, 16 rows mixed
    assert sorted(Counter(GROUPS[block[0]] for block in single).items()) == [("heart", 2), ("lung", 1)]
    assert [len(block) for block in blocks if block not in single] == [8, 8]
    assert "3 single-group steps of 8 rows" in sampler.summary()


def test_order_is_a_function_of_seed_and_epoch():
    first, again = GroupedStepSampler(GROUPS, 8, seed=1), GroupedStepSampler(GROUPS, 8, seed=1)
    assert epoch_blocks(first, 2) == epoch_blocks(again, 2)
    assert epoch_blocks(first, 2) != epoch_blocks(first, 3)
    assert epoch_blocks(first, 2) != epoch_blocks(GroupedStepSampler(GROUPS, 8, seed=2), 2)


def test_partial_block_goes_last():
    sampler = GroupedStepSampler(["a"] * 9 + ["b"] * 2, step_size=4, seed=0)
    blocks = epoch_blocks(sampler, 0)
    assert [len(block) for block in blocks] == [4, 4, 3]  # a a (mixed: 1 a + 2 b) last, where drop_last cuts it


def test_step_size_must_be_positive():
    with pytest.raises(ValueError, match="step_size"):
        GroupedStepSampler(GROUPS, step_size=0)


def test_training_steps_draw_from_one_group(tmp_path, monkeypatch):
    # The demo pack's 48 train rows: lung 24, breath 13, cough 11. Batch 4 x 2 accumulated: 8 rows a step, so
    # lung fills 3 steps, breath and cough one each, and their 8 leftover rows one mixed step.
    windows = []
    step_once = AlignmentTrainer.training_step

    def training_step(self, window, epoch, micro_step):
        windows.append([self.kept[i]["modality"] for batch in window for i in batch["index"].tolist()])
        return step_once(self, window, epoch, micro_step)

    monkeypatch.setattr(AlignmentTrainer, "training_step", training_step)
    args = tiny_args(tmp_path / "out", tmp_path / "cache", "--num_train_epochs", "1", "--checkpointing_steps", "0",
                     "--group_batches_by", "modality")
    args[args.index("--per_device_train_batch_size") + 1] = "4"
    args[args.index("--gradient_accumulation_steps") + 1] = "2"
    output = run_in_process(args)
    assert len(windows) == 6 and all(len(window) == 8 for window in windows)
    single = Counter(window[0] for window in windows if len(set(window)) == 1)
    assert sorted(single.items()) == [("breath", 1), ("cough", 1), ("lung", 3)]
    assert sum(Counter(modality for window in windows for modality in window).values()) == 48
    assert [record["step"] for record in read_log(output)] == [1, 2, 3, 4, 5, 6]
    settings = (output / "training_args.json").read_text()
    assert '"group_batches_by": "modality"' in settings


def test_unknown_column_is_refused_before_any_caching(tmp_path):
    args = tiny_args(tmp_path / "out", tmp_path / "cache", "--max_steps", "1", "--group_batches_by", "sourse")
    with pytest.raises(ValueError, match="--group_batches_by 'sourse': the manifest has no such column"):
        run_in_process(args)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))
