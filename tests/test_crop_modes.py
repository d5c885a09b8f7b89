"""--train-crop-mode rkrc / rkrr (issue 20): timm's ResizeKeepRatio, CenterCropOrPad and RandomCropOrPad,
pixel for pixel and in distribution, and in the pipeline."""

import numpy as np
import pytest
from PIL import Image

import data_world
from data_world import IMG, class_folders
from jax_ema import data
from jax_ema.config import parse_args

listing_cache = data_world.listing_cache  # fixture


def _keep_ratio(scale, ratio, interpolation='bilinear'):
    from timm.data.transforms import ResizeKeepRatio

    return ResizeKeepRatio(
        IMG,
        interpolation=interpolation,
        random_scale_prob=1.0,
        random_scale_range=scale,
        random_scale_area=True,
        random_aspect_prob=1.0,
        random_aspect_range=ratio,
    )


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
@pytest.mark.parametrize(
    'scale, ratio', [((0.64, 0.64), (1.0, 1.0)), ((1.0, 1.0), (1.3, 1.3)), ((0.5, 0.5), (0.8, 0.8))]
)
def test_rkrc_is_timms_resize_keep_ratio_and_center_crop_or_pad(scale, ratio, interpolation):
    """Fixed draws (probability 1, one-point ranges): ours and timm's transforms, pixel for pixel (1 level)."""
    from timm.data.transforms import CenterCropOrPad

    from jax_ema.data import crop_modes

    image = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    key = data.tf.constant([3, 4], data.tf.int64)
    size = crop_modes.keep_ratio_size(key, 45, 61, IMG, scale, ratio, scale_prob=1.0, aspect_prob=1.0)
    resized = _keep_ratio(scale, ratio, interpolation)(Image.fromarray(image))
    assert tuple(int(s) for s in size) == (resized.height, resized.width)
    ours = data.transforms.resize(data.tf.constant(image), data.tf.stack(size), interpolation)
    ours = crop_modes.crop_or_pad(ours, key, IMG, 'rkrc').numpy()
    expected = np.asarray(CenterCropOrPad(IMG, padding_mode='reflect')(resized))
    assert ours.shape == expected.shape == (IMG, IMG, 3)
    assert np.abs(ours.astype(int) - expected).max() <= 1


def test_rkrr_windows_are_timms_random_crop_or_pad():
    """Every rkrr output is one of timm's RandomCropOrPad placements, and all of them come up."""
    from timm.data.transforms import crop_or_pad

    from jax_ema.data import crop_modes

    resized = np.random.default_rng(2).integers(0, 256, (IMG - 3, IMG + 2, 3), dtype=np.uint8)  # pad rows, crop cols
    pil = Image.fromarray(resized)
    candidates = {
        (top, left): np.asarray(crop_or_pad(pil, top, left, IMG, IMG, padding_mode='reflect'))
        for top in range(-3, 1)
        for left in range(0, 3)
    }
    seen = set()
    for i in range(60):
        ours = crop_modes.crop_or_pad(data.tf.constant(resized), data.tf.constant([i, 9], data.tf.int64), IMG, 'rkrr')
        match = [k for k, v in candidates.items() if np.array_equal(v, ours.numpy())]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(candidates)


def test_keep_ratio_draws_are_distributed_as_timms():
    import random

    from timm.data.transforms import ResizeKeepRatio

    from jax_ema.data import crop_modes

    scale, ratio, n = (0.08, 1.0), (3 / 4, 4 / 3), 3000
    random.seed(0)
    dummy = Image.new('RGB', (300, 200))
    timm_h = [ResizeKeepRatio.get_params(dummy, (IMG, IMG), 0.0, 0.5, scale, True, 0.5, ratio)[0] for _ in range(n)]
    fn = data.tf.function(lambda k: crop_modes.keep_ratio_size(k, 200, 300, IMG, scale, ratio)[0])
    ours = [int(fn(data.tf.constant([i, 0], data.tf.int64))) for i in range(n)]
    assert abs(np.mean(ours) - np.mean(timm_h)) < 4 * np.std(timm_h) / np.sqrt(n / 2)
    assert abs(np.mean(np.array(ours) == IMG) - np.mean(np.array(timm_h) == IMG)) < 0.04  # neither drawn: 1/4


@pytest.mark.parametrize('mode', ['rkrc', 'rkrr'])
def test_train_crop_modes_in_the_pipeline(tmp_path, mode):
    root = class_folders(tmp_path / 'ds', ['ant', 'bee'])
    cfg = data.DataConfig(data_dir=str(root), img_size=IMG, train_crop_mode=mode)
    train, _ = data.load_datasets(cfg)
    first = next(train.train_batches(4, 0))['image']
    assert first.shape == (4, IMG, IMG, 3)
    np.testing.assert_array_equal(first, next(train.train_batches(4, 0))['image'])  # a pure function of the epoch
    assert parse_args(['--train-crop-mode', mode]).train_crop_mode == mode
