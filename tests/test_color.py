"""timm's default train augmentation (ColorJitter, random interpolation, --vflip, --grayscale-prob,
--gaussian-blur-prob, --no-aug), against torchvision's and timm's own transforms."""

import itertools

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as tv_transforms
from torchvision.transforms import functional as tv_functional

from jax_ema import data  # the one package that imports tensorflow (after triton, see _compat)
from jax_ema.data import color

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
