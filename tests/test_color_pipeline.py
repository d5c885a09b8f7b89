"""timm's default train augmentation through the whole train transform (the crop's random interpolation, the
jitter's draws, --vflip, --grayscale-prob, --gaussian-blur-prob, --no-aug) against timm's own
transforms_imagenet_train, and its flags; the colour ops one by one: test_color.py."""

import dataclasses
import os

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms_factory import transforms_imagenet_train, transforms_noaug_train
from torchvision import transforms as tv_transforms

from jax_ema import data  # the one package that imports tensorflow (after triton, see _compat)
from jax_ema.config import parse_args
from jax_ema.data import color
from jax_ema.errors import UserError

tf = data.tf
# --- the whole train transform against timm's transforms_imagenet_train ---------------------------

SIZE = 24


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """A folder of 4 colour pictures: ramps and a fine checker."""
    root = tmp_path_factory.mktemp('photos')
    ys, xs = np.mgrid[0:40, 0:48]
    for i in range(4):
        pixels = np.stack([xs * (3 + i), ys * (4 - i) + 40 * i, 255 - xs * 2 - ys], -1) % 200
        pixels += ((xs // 2 + ys // 3) % 2 * 50)[..., None]  # some texture, where filters differ
        os.makedirs(root / 'train' / f'c{i % 2}', exist_ok=True)
        os.makedirs(root / 'validation' / f'c{i % 2}', exist_ok=True)
        for split in ('train', 'validation'):
            Image.fromarray(pixels.astype(np.uint8)).save(root / split / f'c{i % 2}' / f'{i}.png')
    return str(root)


def _timm_images(transform, path, n):
    image = Image.open(path).convert('RGB') if isinstance(path, str) else path
    return np.stack([transform(image).permute(1, 2, 0).numpy() for _ in range(n)]).astype(np.int64)


def _our_draws(cfg, n):
    """{path: n train transforms of it, under n keys} (the transform is a pure function of the key)."""
    train, _ = data.load_datasets(cfg)
    keys = tf.random.experimental.stateless_split(tf.constant([5, 6], tf.int64), n)
    return {
        p: np.stack([train._train_fn(tf.constant(p), tf.constant(0), k)[0].numpy() for k in keys]).astype(np.int64)
        for p in train.paths
    }


def _our_images(cfg, epochs):
    train, _ = data.load_datasets(cfg)
    batches = [next(iter(train.train_batches(train.num_examples, epoch))) for epoch in range(epochs)]
    order = [data.epoch_order(cfg.seed, epoch, train.num_examples) for epoch in range(epochs)]
    return train, np.concatenate([b['image'] for b in batches]).astype(np.int64), np.concatenate(order)


FIXED_CROP = dict(scale=(1.0, 1.0), ratio=(2.0, 3.0), hflip=0.0)  # no try fits: timm's centre fallback


@pytest.mark.slow  # ~10 s
def test_default_jitter_statistics_match_timm(photos):
    """Fixed crop, no flip: the only randomness is timm's default ColorJitter(0.4, 0.4, 0.4). Per image, the
    distributions of its mean, contrast (std) and colourfulness, ours vs timm's, over 300 draws each."""
    cfg = data.DataConfig(
        data_dir=photos, img_size=SIZE, color_jitter=(0.4,), train_interpolation='bilinear', **FIXED_CROP
    )
    torch.manual_seed(0)
    timm = transforms_imagenet_train(SIZE, interpolation='bilinear', use_prefetcher=True, **FIXED_CROP)
    assert any(isinstance(t, tv_transforms.ColorJitter) for t in timm.transforms)  # timm's default jitter
    for path, ours in list(_our_draws(cfg, 300).items())[:2]:
        theirs = _timm_images(timm, path, len(ours))
        for stat in (
            lambda x: x.mean(axis=(1, 2, 3)),
            lambda x: x.std(axis=(1, 2, 3)),
            lambda x: np.abs(x - x.mean(-1, keepdims=True)).mean(axis=(1, 2, 3)),
        ):
            a, b = stat(ours), stat(theirs)
            assert abs(a.mean() - b.mean()) < 4 * np.hypot(a.std(), b.std()) / np.sqrt(len(a))
            assert 0.8 < a.std() / b.std() < 1.25
            assert abs(np.quantile(a, 0.1) - np.quantile(b, 0.1)) < 0.3 * b.std()
            assert abs(np.quantile(a, 0.9) - np.quantile(b, 0.9)) < 0.3 * b.std()
    plain = _our_draws(dataclasses.replace(cfg, color_jitter=()), 2)  # and the jitter is what moved them
    assert all(np.ptp(v.mean(axis=(1, 2, 3))) == 0 for v in plain.values())


def test_random_interpolation_is_bilinear_or_bicubic_evenly(photos):
    """'random' (timm's train default): each image is timm's bilinear or its bicubic crop, about half each."""
    cfg = data.DataConfig(data_dir=photos, img_size=SIZE, train_interpolation='random', **FIXED_CROP)
    picks = []
    for path, ours in list(_our_draws(cfg, 100).items())[:1]:
        expected = [
            _timm_images(
                transforms_imagenet_train(SIZE, interpolation=m, color_jitter=None, use_prefetcher=True, **FIXED_CROP),
                path,
                1,
            )[0]
            for m in ('bilinear', 'bicubic')
        ]
        assert np.abs(expected[0] - expected[1]).max() > 1  # the two filters differ on these pictures
        for image in ours:
            gaps = [np.abs(image - e).max() for e in expected]
            assert min(gaps) <= 1
            picks.append(gaps[1] < gaps[0])
    assert 0.35 < np.mean(picks) < 0.65  # 100 draws


@pytest.mark.parametrize('mode', ['rkrc', 'rkrr'])
def test_random_interpolation_in_keep_ratio_crop_modes_is_timms(photos, mode):
    """--train-crop-mode rkrc / rkrr with 'random': timm's ResizeKeepRatio picks bilinear or bicubic per image
    (random.choice, as RandomResizedCropAndInterpolation): each of ours is one of timm's crops (any placement
    RandomCropOrPad can draw, for rkrr) at one of the two filters, about half each."""
    from timm.data.transforms import ResizeKeepRatio, crop_or_pad

    fixed = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the resized size is then drawn-free: 24 x 29
    cfg = data.DataConfig(
        data_dir=photos, img_size=SIZE, train_crop_mode=mode, train_interpolation='random', hflip=0.0, **fixed
    )
    path, ours = next(iter(_our_draws(cfg, 40).items()))
    picks = []
    for filter_ in ('bilinear', 'bicubic'):
        resized = ResizeKeepRatio(SIZE, interpolation=filter_)(Image.open(path).convert('RGB'))
        lefts = range(resized.width - SIZE + 1) if mode == 'rkrr' else [round((resized.width - SIZE) / 2)]
        picks.append([np.asarray(crop_or_pad(resized, 0, left, SIZE, SIZE), np.int64) for left in lefts])
    assert resized.size == (29, 24)
    assert min(np.abs(a - b).max() for a in picks[0] for b in picks[1]) > 1  # the filters tell apart
    bicubic = []
    for image in ours:
        gaps = [min(np.abs(image - c).max() for c in candidates) for candidates in picks]
        assert min(gaps) <= 1
        bicubic.append(gaps[1] < gaps[0])
    assert 0.25 < np.mean(bicubic) < 0.75  # 40 draws


def test_no_aug_is_timms_noaug_train(photos):
    """--no-aug: resize the short side to img_size and centre crop, at the data config's interpolation."""
    for interpolation in ('bilinear', 'bicubic'):
        cfg = data.DataConfig(
            data_dir=photos, img_size=SIZE, no_aug=True, interpolation=interpolation, color_jitter=(0.4,), hflip=1.0
        )
        train, ours, order = _our_images(cfg, 1)
        timm = transforms_noaug_train(SIZE, interpolation=interpolation, use_prefetcher=True)
        for image, index in zip(ours, order):
            assert np.abs(image - _timm_images(timm, train.paths[index], 1)[0]).max() <= 1


def test_vflip_grayscale_blur_follow_their_probabilities(photos):
    kw = dict(data_dir=photos, img_size=SIZE, train_interpolation='bilinear', **FIXED_CROP)
    plain = _our_draws(data.DataConfig(**kw), 1)
    for path, flipped in _our_draws(data.DataConfig(vflip=1.0, **kw), 3).items():
        np.testing.assert_array_equal(flipped, np.broadcast_to(plain[path][:, ::-1], flipped.shape))
    grey = np.concatenate(list(_our_draws(data.DataConfig(grayscale_prob=0.5, **kw), 30).values()))
    assert 0.35 < (grey == grey[..., :1]).all(axis=(1, 2, 3)).mean() < 0.65
    for path, blurred in _our_draws(data.DataConfig(gaussian_blur_prob=0.5, **kw), 30).items():
        changed = (blurred != plain[path]).any(axis=(1, 2, 3))
        assert 0.2 < changed.mean() < 0.8  # 30 draws per image


def test_hue_jitter_in_the_pipeline_keeps_each_pixels_value(photos):
    """--color-jitter 0 0 0 0.5 through the train transform (uint8, compiled): the hue moves, HSV's value
    (the largest channel) stays, pixel for pixel."""
    kw = dict(data_dir=photos, img_size=SIZE, train_interpolation='bilinear', **FIXED_CROP)
    plain = _our_draws(data.DataConfig(**kw), 1)
    for path, shifted in _our_draws(data.DataConfig(color_jitter=(0.0, 0.0, 0.0, 0.5), **kw), 6).items():
        np.testing.assert_array_equal(shifted.max(-1), np.broadcast_to(plain[path].max(-1), shifted.shape[:-1]))
        assert (shifted != plain[path]).any(axis=(1, 2, 3)).mean() > 0.6


def test_jitter_is_dropped_under_auto_augment_as_timm():
    theirs = transforms_imagenet_train(SIZE, auto_augment='rand-m9-mstd0.5')
    assert not any(isinstance(t, tv_transforms.ColorJitter) for t in theirs.transforms)
    assert color.jitter_disabled('rand-m9-mstd0.5') and not color.jitter_disabled(None)
    assert not color.jitter_disabled('3a')  # timm keeps it for 3-Augment


def test_flags_have_timms_names_and_defaults():
    """With DATA: timm's train.py defaults (ColorJitter 0.4, random filter); the digits keep no jitter."""
    with_data = data.data_config(parse_args(['/some/data']))
    assert (with_data.color_jitter, with_data.train_interpolation) == ((0.4,), 'random')
    assert (with_data.vflip, with_data.grayscale_prob, with_data.gaussian_blur_prob) == (0, 0, 0)
    assert with_data.color_jitter_prob is None and not with_data.no_aug
    digits = data.data_config(parse_args([]))
    assert (digits.color_jitter, digits.train_interpolation) == ((0.0,), '')
    given = data.data_config(
        parse_args(
            '--color-jitter 0.1 0.2 0.3 0.05 --color-jitter-prob 0.8 --grayscale-prob 0.2 --gaussian-blur-prob 0.1 '
            '--train-interpolation bicubic --vflip 0.5 --no-aug'.split()
        )
    )
    assert given.color_jitter == (0.1, 0.2, 0.3, 0.05) and given.color_jitter_prob == 0.8
    assert (given.grayscale_prob, given.gaussian_blur_prob, given.vflip) == (0.2, 0.1, 0.5)
    assert given.train_interpolation == 'bicubic' and given.no_aug


@pytest.mark.parametrize(
    'argv, says',
    [
        ('--color-jitter 0.1 0.2', '1, 3 or 4'),
        ('--color-jitter 0.1 0.2 0.3 0.6', 'hue'),
        ('--color-jitter -0.4', '>= 0'),
        ('--grayscale-prob 1.5', '--grayscale-prob must be a probability'),
        ('--color-jitter-prob -0.1', '--color-jitter-prob must be a probability'),
        ('--vflip 2', '--vflip must be a probability'),
        ('--train-interpolation nearest', '--train-interpolation'),
        ('--gaussian-blur-prob 0.5 --img-size 8', 'img-size >= 12'),
    ],
)
def test_bad_flags_are_one_line(argv, says):
    with pytest.raises(UserError, match=says):
        parse_args(argv.split())


@pytest.mark.parametrize(
    'field, value, says',
    [('train_interpolation', 'nearest', '--train-interpolation'), ('color_jitter', (0.1, 0.2), '1, 3 or 4')],
)
def test_bad_data_config_is_one_line(field, value, says):
    with pytest.raises(UserError, match=says):
        data.load_datasets(data.DataConfig(img_size=8, **{field: value}))
