"""prodesc.sampling: each epoch's length-grouped order depends on (seed, epoch) only, so a run
resumed in the middle of epoch 2 trains on the batches the uninterrupted run trained on."""

from __future__ import annotations

import pytest

from conftest import stage_paths, tiny_overrides, write_prepared
from prodesc import checkpoints, models, sampling, train


def _order(sampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(iter(sampler))


def test_order_ignores_the_global_rng_and_changes_per_epoch():
    import torch

    cls = sampling._sampler_class()
    lengths = [5 + (i * 7) % 23 for i in range(96)]
    a, b = cls(8, lengths, seed=42), cls(8, lengths, seed=42)
    torch.manual_seed(0)
    first = [_order(a, e) for e in range(3)]
    torch.manual_seed(123)  # another global state, as in a resumed process
    torch.rand(1000)
    second = [_order(b, e) for e in (2, 0, 1)]
    assert first == [second[1], second[2], second[0]]
    assert first[0] != first[1] != first[2]
    assert sorted(first[1]) == list(range(96))
    assert _order(cls(8, lengths, seed=7), 1) != first[1]
    # still grouped by length: the longest row leads the first batch
    assert lengths[first[0][0]] == max(lengths)


def test_the_training_stage_uses_it(tiny_model_dir, tmp_path):
    """The trainer 02 builds shuffles with the seeded sampler, and gives it the epoch."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    overrides = tiny_overrides(tiny_model_dir, tmp_path / "root")
    cfg, paths = stage_paths(overrides)
    write_prepared(paths)
    _, data = train.load_prepared(cfg, paths)
    dirs = checkpoints.checkpoint_dirs(cfg, paths)
    args = train.training_args(cfg, paths, dirs, "hf")
    model, tokenizer, _ = models.load_for_training(cfg, str(tiny_model_dir), "hf")
    trainer = train.build_trainer(cfg, paths, dirs, args, model, tokenizer, data)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and type(sampler) is not LengthGroupedSampler
    assert sampler.seed == cfg.seed
    loader = trainer.get_train_dataloader()
    loader.set_epoch(3)  # what the Trainer calls before each epoch (Accelerate forwards it)
    inner = loader.batch_sampler.sampler
    assert inner.epoch == 3


@pytest.mark.parametrize("epoch", [0, 1])
def test_seeds_differ_between_runs(epoch):
    cls = sampling._sampler_class()
    lengths = list(range(40))
    assert _order(cls(4, lengths, seed=1), epoch) != _order(cls(4, lengths, seed=2), epoch)
