"""A data order that a resumed run reproduces: length-grouped batches shuffled per (seed, epoch).

transformers' ``LengthGroupedSampler`` (``train_sampling_strategy="group_by_length"``) shuffles
with torch's *global* random generator at the start of each epoch. A run resumed in the middle of
epoch 2 or later draws that epoch's order from a generator in another state than the
uninterrupted run had there (the checkpoint's RNG state is restored only after the skipped batches,
and it is the state at the checkpoint, not at the epoch's start), so it trains on other batches.
Found by ``bench/kill_trials.py``: resuming a 16-step tiny run from steps 8, 10 or 14 (epochs 2
and 3) ended 1e-3 away from the uninterrupted adapter; from steps 2, 4, 6 and 12 (epoch 1 or an
epoch boundary) it was identical.

:func:`install` makes the trainer build a sampler that shuffles with its own generator seeded
from the run's seed and the epoch number (the Trainer, through Accelerate's dataloader, calls
``set_epoch`` before each epoch, the resumed one included), so every epoch's order is a function
of (seed, epoch) alone. Batches are still grouped by length exactly as before.
"""

from __future__ import annotations

from typing import Any


def _sampler_class() -> type:
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        """``LengthGroupedSampler`` whose shuffle depends only on (seed, epoch)."""

        def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
            super().__init__(batch_size, lengths=list(lengths))
            self.seed = int(seed)
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def __iter__(self):
            generator = torch.Generator()
            generator.manual_seed(self.seed * 100_003 + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    return EpochSeededLengthGroupedSampler


def install(trainer: Any, seed: int) -> Any:
    """Make ``trainer`` shuffle its length-grouped training batches per (``seed``, epoch)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    seeded = _sampler_class()
    original = trainer._get_train_sampler

    def get_train_sampler(*args: Any, **kwargs: Any) -> Any:
        sampler = original(*args, **kwargs)
        if type(sampler) is LengthGroupedSampler:  # the global-RNG shuffle: replace it
            return seeded(sampler.batch_size, sampler.lengths, seed)
        return sampler

    trainer._get_train_sampler = get_train_sampler
    return trainer
