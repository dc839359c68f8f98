"""Data order in which each optimiser step's recordings share one value of a manifest column (`--group_batches_by`).

Why: a global-batch alignment loss (CKA) computed over a batch that mixes heart, lung and cough recordings is mostly
satisfied by telling the sources apart, which the frozen encoder already does. When a step's batch comes from one
source, the loss can only be lowered by ordering the recordings *within* that source the way the teacher orders their
reports, which is the clinical structure alignment is meant to teach. Steps still alternate between sources, so the
encoder keeps serving all of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class GroupedStepSampler(Sampler[int]):
    """
    Row indices in blocks of one optimiser step each; a full block holds rows of a single group.

    Every epoch, each group's rows are shuffled and cut into blocks of `step_size`. The rows left over (fewer than
    `step_size` in a group) are pooled across groups, shuffled and cut into mixed blocks, so no row is left out
    beyond what the data loader's `drop_last` drops from the epoch's end. The blocks are then shuffled and yielded
    one after the other, a last partial block (if any) at the end. The order is a function of `(seed, epoch)` alone,
    so a resumed run replays it.

    Step boundaries line up with blocks when `step_size` is the rows of one optimiser step across all processes
    (`per_device_train_batch_size x num_processes x gradient_accumulation_steps`): Accelerate hands consecutive
    micro-batches of the sampled order to the processes in turn.

    Args:
        groups (`Sequence[str]`): the group of each row (e.g. its `source_dataset`).
        step_size (`int`): rows per optimiser step, across all processes and micro-batches.
        seed (`int`, *optional*, defaults to 0): seed of the shuffles.
    """

    def __init__(self, groups: Sequence[str], step_size: int, seed: int = 0):
        if step_size < 1:
            raise ValueError(f"step_size must be at least 1, got {step_size}.")
        self.groups = list(groups)
        self.step_size = step_size
        self.seed = seed
        self.epoch = 0
        self.rows_by_group: dict[str, list[int]] = {}
        for index, group in enumerate(self.groups):
            self.rows_by_group.setdefault(group, []).append(index)

    def set_epoch(self, epoch: int) -> None:
        """Called by the data loader before each epoch (Accelerate forwards `DataLoader.set_epoch` here)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.groups)

    def blocks(self) -> list[list[int]]:
        """This epoch's blocks, in the order they are yielded."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        full, leftover = [], []
        for group in sorted(self.rows_by_group):  # sorted: the order must not depend on the rows' order of groups
            rows = self.rows_by_group[group]
            shuffled = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
            cut = len(rows) - len(rows) % self.step_size
            full += [shuffled[start : start + self.step_size] for start in range(0, cut, self.step_size)]
            leftover += shuffled[cut:]
        leftover = [leftover[i] for i in torch.randperm(len(leftover), generator=generator).tolist()]
        mixed = [leftover[start : start + self.step_size] for start in range(0, len(leftover), self.step_size)]
        partial = mixed.pop() if mixed and len(mixed[-1]) < self.step_size else None
        blocks = full + mixed
        blocks = [blocks[i] for i in torch.randperm(len(blocks), generator=generator).tolist()]
        return blocks + ([partial] if partial else [])

    def __iter__(self) -> Iterator[int]:
        for block in self.blocks():
            yield from block

    def summary(self) -> str:
        """One line for the training log: the groups, their sizes and how many steps each fills."""
        sizes = {group: len(rows) for group, rows in sorted(self.rows_by_group.items())}
        single = sum(size // self.step_size for size in sizes.values())
        leftover = sum(size % self.step_size for size in sizes.values())
        parts = ", ".join(f"{group or '(empty)'} {size}" for group, size in sizes.items())
        return (f"{len(sizes)} groups ({parts}): {single} single-group steps of {self.step_size} rows per epoch; the "
                f"{leftover} rows left over fill mixed steps.")
