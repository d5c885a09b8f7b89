"""timm's default train augmentation (ColorJitter, random interpolation, --vflip, --grayscale-prob,
--gaussian-blur-prob, --no-aug), against torchvision's and timm's own transforms."""

import dataclasses
import itertools
import os

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms_factory import transforms_imagenet_train, transforms_noaug_train
from torchvision import transforms as tv_transforms
from torchvision.transforms import functional as tv_functional

from jax_ema import data  # the one package that imports tensorflow (after triton, see _compat)
from jax_ema.config import parse_args
from jax_ema.data import color
from jax_ema.errors import UserError

tf = data.tf
ADJUST = (tv_functional.adjust_brightness, tv_functional.adjust_contrast, tv_functional.adjust_saturation)


@pytest.fixture(scope='module')
def picture():
    """36x44 RGB: colour ramps plus noise, every hue and saturation well represented."""
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[0:36, 0:44]
    ramps = np.stack([xs * 6, ys * 7, (xs * 3 + ys * 5)], -1) % 256
    return np.clip(ramps + rng.integers(-40, 40, ramps.shape), 0, 255).astype(np.uint8)


def _ours(fn, picture, *args):
    return fn(tf.constant(picture, tf.float32), *args).numpy().astype(np.int64)


HUE_FACTORS = [-0.5, -0.31, -0.1, -0.002, 0.004, 0.05, 0.2, 0.37, 0.5]
compiled_hue = tf.function(color.hue, jit_compile=True, autograph=False)


@pytest.mark.parametrize('factor', HUE_FACTORS)
@pytest.mark.parametrize('hue', [color.hue, compiled_hue], ids=['kernels', 'xla'])
def test_hue_matches_torchvision(picture, factor, hue):
    """adjust_hue through Pillow's HSV, with TensorFlow's kernels and compiled by XLA: bit-exact."""
    theirs = np.asarray(tv_functional.adjust_hue(Image.fromarray(picture), factor), np.int64)
    np.testing.assert_array_equal(_ours(hue, picture, tf.constant(factor, tf.float64)), theirs)


def _hsv_round_trip(rgb, compiled):
    """Ours and Pillow's RGB -> HSV of `rgb` and HSV -> RGB of the same bytes read as HSV."""
    zero = tf.constant(0)
    to_hsv = lambda x: tf.stack(color._rgb_to_hsv(*tf.unstack(tf.cast(x, tf.float32), axis=-1), zero), -1)  # noqa: E731
    to_rgb = lambda x: tf.stack(color._hsv_to_rgb(*tf.unstack(tf.cast(x, tf.float32), axis=-1), zero), -1)  # noqa: E731
    if compiled:
        to_hsv, to_rgb = (tf.function(f, jit_compile=True, autograph=False) for f in (to_hsv, to_rgb))
    for rows in np.array_split(rgb, max(1, len(rgb) // 1024)):
        np.testing.assert_array_equal(
            to_hsv(tf.constant(rows)).numpy(), np.asarray(Image.fromarray(rows).convert('HSV'))
        )
        theirs = np.asarray(Image.fromarray(rows, 'HSV').convert('RGB'))
        np.testing.assert_array_equal(to_rgb(tf.constant(rows)).numpy(), theirs)


@pytest.mark.parametrize('compiled', [False, True], ids=['kernels', 'xla'])
def test_hsv_round_trip_of_sampled_colours_matches_pillow(compiled):
    """Pillow's RGB -> HSV and HSV -> RGB over a sample of 2^18 triples (all 2^24: the slow test below)."""
    _hsv_round_trip(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8), compiled)


def _every_colour():
    """All 2^24 triples as a 4096x4096 image."""
    index = np.arange(1 << 24, dtype=np.uint32)
    return np.stack([index >> 16, index >> 8, index], -1).astype(np.uint8).reshape(4096, 4096, 3)


@pytest.mark.slow  # ~10 s
def test_compiled_hue_of_every_colour_matches_pillow_and_torchvision():
    """Under XLA: Pillow's RGB -> HSV of all 2^24 colours, its HSV -> RGB of all 2^24 triples, and
    torchvision's adjust_hue of every colour at two factors, bit for bit."""
    rgb = _every_colour()
    _hsv_round_trip(rgb, compiled=True)
    for factor in (-0.37, 0.21):
        theirs = np.asarray(tv_functional.adjust_hue(Image.fromarray(rgb), factor))
        for rows, expected in zip(np.split(rgb, 4), np.split(theirs, 4)):
            ours = compiled_hue(tf.constant(rows, tf.float32), factor).numpy()
            np.testing.assert_array_equal(ours, expected)


ORDERS = list(itertools.permutations(range(4)))
HUE_DRAWS = np.random.default_rng(4).uniform([0.6, 0.6, 0.0, -0.5], [1.4, 1.4, 1.5, 0.5], (len(ORDERS), 4))


@pytest.mark.parametrize('path', ['xla', 'kernels'])
@pytest.mark.parametrize('dtype', ['uint8', 'float32'])
def test_jitter_with_hue_matches_torchvision_in_every_order(picture, path, dtype, monkeypatch):
    """ColorJitter.forward's loop (adjust_* on a PIL image) in each of the 24 orders: bit-exact, compiled by
    XLA (uint8 or float32 in and out) and with TensorFlow's kernels (color.COMPILED off, the benchmark's)."""
    monkeypatch.setattr(color, 'COMPILED', path == 'xla')
    ranges = ((0, 2),) * 3 + ((-0.5, 0.5),)
    for order, factors in zip(ORDERS, HUE_DRAWS.tolist()):
        image = Image.fromarray(picture)
        for op in order:
            image = (ADJUST + (tv_functional.adjust_hue,))[op](image, factors[op])
        ours = color.jitter(tf.constant(picture, dtype), tf.constant(order), factors, ranges)
        assert ours.dtype == dtype
        np.testing.assert_array_equal(ours.numpy().astype(np.int64), np.asarray(image, np.int64), err_msg=str(order))


@pytest.mark.parametrize(
    'order, factors, ranges',
    [
        ((0, 1, 2, 3), (0.6, 1.4, 0.75), ((0, 2),) * 3),
        ((3, 2, 1, 0), (1.31, 0.62, 1.2), ((0, 2),) * 3),
        ((2, 3, 0, 1), (0.93, 1.07, 0.0), ((0, 2),) * 3),
        ((1, 0, 3, 2), (1.4, 0.6, 1.39), ((0, 2),) * 3),
        ((0, 2, 1, 3), (1.2, 1.0, 0.7), ((0, 2), None, (0, 2))),  # contrast off
    ],
)
@pytest.mark.parametrize('dtype', ['uint8', 'float32'])
def test_jitter_without_hue_matches_torchvision(picture, order, factors, ranges, dtype):
    """timm's default (no hue) runs compiled by XLA, uint8 or float32 in and out: bit-exact with torchvision."""
    image = Image.fromarray(picture)
    for op in order:
        if op < 3 and ranges[op] is not None:
            image = ADJUST[op](image, factors[op])
    ours = color.jitter(tf.constant(picture, dtype), tf.constant(order), factors + (0.0,), ranges + (None,))
    assert ours.dtype == dtype
    np.testing.assert_array_equal(ours.numpy().astype(np.int64), np.asarray(image, np.int64))


# Factors at which XLA's fused multiply-add (one rounding) moved Image.blend's result for some pairs of levels
# (found by search: ~1 factor in 500 does; 1.1351351 for 127 of the 65,536 pairs).
FMA_SENSITIVE = (1.1351350545883179, 0.3796297013759613, 1.2515723705291748, 1.3152174949645996, 0.34090912342071533)


def test_compiled_blend_rounds_as_pils_for_every_pair_of_levels():
    """Image.blend of every (degenerate, image) pair of levels, at factors where a fused multiply-add differs
    and 60 random ones: exact, because color._apart keeps XLA from fusing the product into the sum."""
    degenerate, image = (v.astype(np.uint8) for v in np.meshgrid(np.arange(256), np.arange(256)))
    blend = tf.function(color.blend, jit_compile=True, autograph=False)
    args = [tf.constant(v, tf.float32) for v in (degenerate, image)]
    factors = np.concatenate([FMA_SENSITIVE, np.random.default_rng(2).uniform(0.0, 2.0, 60)]).astype(np.float32)
    for factor in factors:
        theirs = np.asarray(Image.blend(Image.fromarray(degenerate), Image.fromarray(image), float(factor)))
        np.testing.assert_array_equal(blend(*args, tf.constant(factor), tf.constant(0)).numpy(), theirs)


@pytest.mark.parametrize('hue', [None, (-0.5, 0.5)], ids=['no-hue', 'hue'])
def test_compiled_contrast_rounds_a_mean_of_exactly_half_up_as_pil(hue):
    """Grey images whose mean level is k + 1/2 exactly: PIL's int(mean + 0.5) rounds up. XLA turned the
    division by the (constant) pixel count into a product by its rounded reciprocal, which fell just below
    for about half of such 224 x 224 images, until the count became a runtime value (color._runtime)."""
    rng = np.random.default_rng(5)
    for _ in range(8):  # 224 x 224: of the sizes tried, the one where the product fell short (11 of 20)
        levels = np.full(224 * 224, rng.integers(1, 250))
        levels[rng.choice(levels.size, levels.size // 2, replace=False)] += 1
        rgb = np.repeat(levels.reshape(224, 224).astype(np.uint8)[..., None], 3, -1)
        theirs = np.asarray(tv_functional.adjust_contrast(Image.fromarray(rgb), 1.3))
        ranges = (None, (0, 2), None, hue)
        ours = color.jitter(tf.constant(rgb), tf.constant([1, 0, 2, 3]), (1.0, 1.3, 1.0, 0.0), ranges)
        np.testing.assert_array_equal(ours.numpy(), theirs)


@pytest.mark.parametrize('value', [(0.4,), (0.1, 0.0, 1.3), (0.4, 0.4, 0.4, 0.1), (0.0,)])
def test_jitter_ranges_are_torchvisions(value):
    """timm: a scalar means brightness = contrast = saturation, no hue; torchvision's ColorJitter ranges."""
    theirs = tv_transforms.ColorJitter(*(value * 3 if len(value) == 1 else value))
    expected = tuple(None if r is None else tuple(r) for r in (theirs.brightness, theirs.contrast, theirs.saturation))
    expected += (None if theirs.hue is None else tuple(theirs.hue),)
    ours = color.jitter_ranges(value)
    assert ours == expected  # the same float arithmetic: 1 - v, 1 + v


def test_jitter_draws_are_uniform(picture):
    """Factors uniform in their ranges, all 24 orders equally likely, applied with color_jitter_prob."""
    keys = tf.random.experimental.stateless_split(tf.constant([3, 4], tf.int64), 2400)
    ranges = ((0.6, 1.4), (0.0, 1.5), None, (-0.1, 0.1))

    def one(key):
        order, factors, u = color.draw_jitter(key, ranges)
        return tf.concat([tf.cast(order, tf.float64), tf.stack(factors), tf.cast(u, tf.float64)[None]], 0)

    drawn = tf.function(lambda keys: tf.map_fn(one, keys, fn_output_signature=tf.float64))(keys).numpy()
    for column, (lo, hi) in zip(drawn[:, 4:8].T, ((0.6, 1.4), (0.0, 1.5), (1.0, 1.0), (-0.1, 0.1))):
        assert lo <= column.min() and column.max() <= hi
        for q in (0.1, 0.5, 0.9):
            assert abs(np.quantile(column, q) - (lo + (hi - lo) * q)) <= 0.03 * (hi - lo)
    assert abs((drawn[:, 8] < 0.3).mean() - 0.3) < 0.04  # the draw that color_jitter_prob compares
    counts = np.unique(drawn[:, :4] @ [1000, 100, 10, 1], return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > 60  # 100 expected each
    flat = tf.fill([2, 2, 3], 150.0)
    jittered = tf.function(lambda k: color.color_jitter(flat, k, ranges[:1] + (None,) * 3, 0.3)[0, 0, 0])
    applied = tf.map_fn(jittered, keys[:400], fn_output_signature=tf.float32).numpy() != 150
    assert 0.22 < applied.mean() < 0.38


def test_grayscale_matches_torchvision(picture):
    theirs = np.asarray(tv_transforms.RandomGrayscale(p=1.0)(Image.fromarray(picture)), np.int64)
    ours = color.random_grayscale(tf.constant(picture, tf.float32), tf.constant([0, 1], tf.int64), 1.0)
    np.testing.assert_array_equal(ours.numpy().astype(np.int64), theirs)


@pytest.mark.parametrize('sigma', [0.1, 0.7, 1.3, 2.0])
def test_gaussian_blur_matches_torchvision(picture, sigma):
    """torchvision's 23x23 float32 convolution vs our two 1-D passes: float rounding only."""
    theirs = np.asarray(tv_functional.gaussian_blur(Image.fromarray(picture), [23, 23], [sigma, sigma]), np.int64)
    ours = _ours(color.gaussian_blur, picture, sigma)
    gap = np.abs(ours - theirs)
    assert gap.max() <= 1 and np.mean(gap > 0) < 0.01


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
