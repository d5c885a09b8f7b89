"""--aug-repeats: the repeated-augmentation epoch plan against timm's RepeatAugSampler, and through Dataset."""

import numpy as np
import pytest
import torch
from timm.data.distributed_sampler import RepeatAugSampler

from jax_ema import data  # the one package that imports tensorflow (after triton, see _compat)
from jax_ema.config import parse_args
from jax_ema.data import sampler
from jax_ema.errors import UserError


@pytest.mark.parametrize('n', [10, 255, 300, 1000])
@pytest.mark.parametrize('repeats', [1, 2, 3, 2.5, 0.5])
@pytest.mark.parametrize('replicas', [1, 2, 3, 8])
def test_streams_are_timms_for_the_same_shuffle(n, repeats, replicas):
    """Each replica's samples and their count (timm's len(sampler)), given timm's own shuffle of the epoch."""
    epoch = 7
    generator = torch.Generator()
    generator.manual_seed(epoch)
    order = torch.randperm(n, generator=generator).numpy()
    index, copy = sampler.streams(order, repeats, replicas)
    for rank in range(replicas):
        theirs = RepeatAugSampler(list(range(n)), num_replicas=replicas, rank=rank, num_repeats=repeats)
        theirs.set_epoch(epoch)
        assert len(theirs) == index.shape[1]
        np.testing.assert_array_equal(index[rank], list(theirs))
    # copy: how often the example came earlier in timm's padded list (position r + R j), so never a pair twice
    seen = {}
    for position in np.argsort((np.arange(replicas)[:, None] + replicas * np.arange(index.shape[1])).ravel()):
        example = index.ravel()[position]
        assert copy.ravel()[position] == seen.get(example, 0)
        seen[example] = seen.get(example, 0) + 1


def test_copies_land_on_different_replicas():
    """DeiT's point: with R >= repeats, the copies of an image are on different devices, same step."""
    index, _ = sampler.epoch_plan(np.arange(600), 3, replicas=3, batch_size=12)
    batches = index.reshape(-1, 3, 4)  # [step, replica, row]
    for batch in batches:
        for row in range(4):
            assert len(set(batch[:, row])) == 1  # the same image on the 3 replicas, in the same row
    assert sampler.steps_per_epoch(600, 3, 3, 12) == len(batches) == (512 // 3) // 4


@pytest.fixture(scope='module')
def repeated():
    cfg = data.DataConfig(img_size=8, num_workers=1, aug_repeats=3, hflip=0.5)
    train, _ = data.load_datasets(cfg)
    return cfg, train


def test_dataset_plan_is_exact_over_processes_and_resume(repeated):
    cfg, train = repeated
    kw = dict(batch_size=64, epoch=2, replicas=4)
    steps = train.steps_per_epoch(64, replicas=4)
    assert steps == (train.num_examples // 256 * 256 // 4) // 16 == 20  # timm: num_selected per replica / local batch

    def images(n, **extra):  # the first n batches
        return [b['image'] for b, _ in zip(train.train_batches(**kw, **extra), range(n))]

    whole = images(4)
    halves = [images(4, process_index=p, process_count=2) for p in range(2)]
    for step, batch in enumerate(whole):
        np.testing.assert_array_equal(batch, np.concatenate([halves[0][step], halves[1][step]]))
    for a, b in zip(images(2, start_step=2), whole[2:]):
        np.testing.assert_array_equal(a, b)
    last = images(1, start_step=steps - 1)  # the epoch ends where timm's does
    assert len(last) == 1 and len(images(1, start_step=steps)) == 0


def test_each_copy_is_augmented_on_its_own(repeated):
    """On one replica the 3 copies of an image are consecutive rows: the same label, different crops."""
    _, train = repeated
    batch = next(iter(train.train_batches(12, 0)))
    labels, images = batch['label'].reshape(4, 3), batch['image'].reshape(4, 3, 8, 8, 3)
    assert (labels == labels[:, :1]).all()
    assert all(len({img.tobytes() for img in copies}) > 1 for copies in images)


def test_the_flag_reaches_the_data_config_and_is_checked():
    assert data.data_config(parse_args(['--aug-repeats', '3'])).aug_repeats == 3
    with pytest.raises(UserError, match='--aug-repeats'):
        parse_args(['--aug-repeats', '-1'])


def test_bad_batch_for_the_replicas_is_one_line(repeated):
    _, train = repeated
    with pytest.raises(UserError, match='does not divide among 4 devices'):
        train.steps_per_epoch(10, replicas=4)
    with pytest.raises(UserError, match='fewer than 350 images per epoch'):  # timm: 1438 // 256 * 256 / 4 = 320
        train.steps_per_epoch(1400, replicas=4)
