"""--aa (RandAugment), --reprob/--remode/--recount (random erasing, on the device) and -j, against timm's own code."""

import dataclasses
import os
import random
import subprocess
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa
from timm.data.random_erasing import RandomErasing

from jax_ema import (
    config as config_lib,
    data,  # the one package that imports tensorflow (after triton, see _compat)
    device_input,
)
from jax_ema.data import image_ops, rand_augment
from jax_ema.errors import UserError

tf = data.tf
FILL = data.transforms.AUGMENT_FILL
HPARAMS = dict(translate_const=100, img_mean=FILL)  # what timm's transforms_imagenet_train passes
GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')


def test_fill_is_timms():
    """timm's aa img_mean: the ImageNet mean in 0..255, rounded."""
    assert FILL == (124, 116, 104)


# --- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'config_str',
    [
        'rand-m9-mstd0.5',
        'rand-m9-mstd0.5-inc1',
        'rand-m7-n3-mstd101',
        'rand-mstd1-tweights',
        'rand',
        'rand-m15-mmax20-p0.7',
        'rand-n0',
        'rand-m9-m5-mstd1-mstd2-inc1-inc0',
        'rand-m9--n1-',
    ],
)
def test_parse_matches_timm(config_str):
    ours = rand_augment.parse(config_str)
    theirs = timm_aa.rand_augment_transform(config_str, dict(HPARAMS))
    assert ours.num_layers == theirs.num_layers
    assert list(ours.ops) == [op.name for op in theirs.ops]
    for op in theirs.ops:
        assert (op.prob, op.magnitude, op.magnitude_std, op.magnitude_max) == (
            ours.prob,
            ours.magnitude,
            ours.magnitude_std,
            ours.magnitude_max,
        )
    if theirs.choice_weights is None:
        assert ours.weights is None
    else:
        np.testing.assert_allclose(ours.weights, theirs.choice_weights, rtol=1e-12)


@pytest.mark.parametrize(
    'config_str',
    [
        'original',
        'v0',
        'augmix-m5-w4-d2',
        'trivial',
        'randaug-m9',
        'rand-x5',
        'rand-m',
        'rand-m1.5',
        'rand-t3a',
        'rand-tfoo',
        'rand-tweights-n16',
        'rand-p2',
        'rand-mstdx',
    ],
)
def test_bad_aa_is_one_line(config_str):
    with pytest.raises(UserError) as err:
        data.load_datasets(data.DataConfig(img_size=8, auto_augment=config_str))
    message = str(err.value)
    assert '\n' not in message and repr(config_str) in message and 'rand-m9-mstd0.5' in message


@pytest.mark.parametrize(
    'option, value, says', [('remode', 'noise', '--remode'), ('reprob', 1.5, '--reprob'), ('recount', 0, '--recount')]
)
def test_bad_erasing_option_is_one_line(option, value, says):
    with pytest.raises(UserError, match=says) as err:
        data.load_datasets(data.DataConfig(img_size=8, **{option: value}))
    assert '\n' not in str(err.value)


def test_cli_flags_have_timms_names_and_defaults():
    default = config_lib.parse_args([])
    assert (default.aa, default.reprob, default.remode, default.recount, default.workers) == (
        None,
        0.0,
        'pixel',
        1,
        None,
    )  # -j: None = sized to the host by tf.data
    cfg = config_lib.parse_args(
        ['--aa', 'rand-m9-mstd0.5', '--remode', 'pixel', '--reprob', '0.2', '--recount', '2', '-j', '7']
    )
    assert (cfg.aa, cfg.reprob, cfg.remode, cfg.recount, cfg.workers) == ('rand-m9-mstd0.5', 0.2, 'pixel', 2, 7)


# --- each op against timm's (PIL) op --------------------------------------------------------------


@pytest.fixture(scope='module')
def picture():
    """36x44 RGB: colour ramps plus noise, so that every op has something to change."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:36, 0:44]
    ramps = np.stack([xs * 5, ys * 6, (xs + ys) * 3], -1) % 256
    return np.clip(ramps + rng.integers(-30, 30, ramps.shape), 0, 255).astype(np.uint8)


def _timm_op(name, image, magnitude, negate, interpolation=Image.BILINEAR):
    """timm's AugmentOp at a fixed magnitude (no noise, applied always), sign chosen by `negate`."""
    op = timm_aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=dict(HPARAMS, interpolation=interpolation))
    with mock.patch.object(random, 'random', return_value=0.9 if negate else 0.1):  # > 0.5 negates
        return np.asarray(op(Image.fromarray(image)), np.int64)


@pytest.mark.parametrize(
    'name', sorted(set(rand_augment.RAND_TRANSFORMS) | set(rand_augment.RAND_INCREASING_TRANSFORMS))
)
def test_op_matches_timm(picture, name):
    """Colour ops are bit-exact. Geometric ops: PIL truncates a double-precision bilinear value to
    uint8, we a float32 one; where the exact value is (nearly) whole the two can land 1 level apart,
    which happens on a few percent of pixels (most at translate 0.45 * 44 = 19.8 px, fraction .8)."""
    top = 9.9 if name == 'PosterizeIncreasing' else 10  # at 10 timm's op fails, see the next test
    for magnitude in (3, 5.5, 9, top):
        for negate in (False, True):
            theirs = _timm_op(name, picture, magnitude, negate)
            image = tf.constant(picture, tf.float32)
            runs = [rand_augment.apply_op(name, image, magnitude, negate, FILL)]
            if name in rand_augment.COMPILED_OPS:  # and as the pipeline runs it, under XLA
                runs.append(rand_augment.compiled_op(name, FILL)(image, magnitude, negate))
            for ours in [run.numpy().astype(np.int64) for run in runs]:
                gap = np.abs(ours - theirs)
                if name in GEOMETRIC:
                    assert gap.max() <= 1 and np.mean(gap > 0) < 0.1, (magnitude, negate, np.mean(gap > 0))
                    assert np.any(np.all(ours == FILL, axis=-1)) or magnitude == 0  # the fill colour shows
                else:
                    assert gap.max() == 0, (magnitude, negate, np.mean(gap > 0))


@pytest.mark.parametrize('name, magnitude', [('Posterize', 2), ('PosterizeIncreasing', 10)])
def test_posterize_to_zero_bits_is_black(picture, name, magnitude):
    """timm's Posterize below magnitude 2.5 (PosterizeIncreasing at 10) keeps 0 bits, which Pillow >= 9
    refuses (ValueError) and older Pillow turned into black; we keep the old behaviour."""
    with pytest.raises(ValueError):
        _timm_op(name, picture, magnitude, False)
    ours = rand_augment.apply_op(name, tf.constant(picture, tf.float32), magnitude, False, FILL)
    assert np.all(ours.numpy() == 0)


def test_affine_nearest_matches_pil(picture):
    """The NEAREST path of image_ops.affine samples the same pixels as PIL's NEAREST."""
    coeffs = (0.9, 0.2, 3.3, -0.15, 1.1, -2.7)
    theirs = np.asarray(
        Image.fromarray(picture).transform((44, 36), Image.AFFINE, coeffs, Image.NEAREST, fillcolor=FILL), np.int64
    )
    ours = image_ops.affine(tf.constant(picture, tf.float32), coeffs, FILL, 'NEAREST').numpy()
    assert np.mean(ours != theirs) < 0.01  # float32 vs double at exact half-pixel ties only


@pytest.mark.parametrize('name', GEOMETRIC)
def test_geometric_op_matches_timm_bicubic(picture, name):
    """Under --interpolation bicubic timm's geometric ops resample with PIL's BICUBIC affine; ours too,
    in float64 as PIL: the same pixels but for a rare value PIL computes as nearly whole."""
    image = tf.constant(picture, tf.float32)
    compiled = rand_augment.compiled_op(name, FILL, 'BICUBIC')  # as the pipeline runs it, traced once
    for magnitude in (3, 10):
        for negate in (False, True):
            theirs = _timm_op(name, picture, magnitude, negate, Image.BICUBIC)
            args = tf.constant(magnitude, tf.float64), tf.constant(negate)
            for ours in (rand_augment.apply_op(name, image, *args, FILL, 'BICUBIC'), compiled(image, *args)):
                gap = np.abs(ours.numpy().astype(np.int64) - theirs)
                assert gap.max() <= 1 and np.mean(gap > 0) < 0.005, (magnitude, negate, np.mean(gap > 0))


def test_affine_bicubic_matches_pil(picture):
    """The BICUBIC path of image_ops.affine (cubic a = -1, clipped, truncated) gives PIL's pixels, also
    where the 4x4 neighbourhood runs over the edges."""
    for coeffs in [(0.9, 0.2, 3.3, -0.15, 1.1, -2.7), (1.3, -0.4, -6.0, 0.35, 0.8, 4.0)]:
        theirs = np.asarray(
            Image.fromarray(picture).transform((44, 36), Image.AFFINE, coeffs, Image.BICUBIC, fillcolor=FILL),
            np.int64,
        )
        ours = image_ops.affine(tf.constant(picture, tf.float32), coeffs, FILL, 'BICUBIC').numpy()
        assert np.mean(ours != theirs) < 0.005 and np.abs(ours - theirs).max() <= 1


def test_rand_augment_resamples_as_the_interpolation(picture):
    """rand_augment picks PIL's filter from --interpolation as timm's ops do: under 'bicubic' a Rotate
    layer gives the BICUBIC op's pixels (for the sign it drew), under 'bilinear' the BILINEAR op's."""
    policy = rand_augment.RandAugment(ops=('Rotate',), num_layers=1, magnitude=9, prob=1.0)
    image = tf.constant(picture, tf.float32)
    for interpolation, resample in (('bicubic', 'BICUBIC'), ('bilinear', 'BILINEAR')):
        ours = rand_augment.rand_augment(
            tf.constant(picture), tf.constant([3, 4], tf.int64), policy, FILL, interpolation
        )
        candidates = [rand_augment.apply_op('Rotate', image, 9, negate, FILL, resample) for negate in (False, True)]
        assert any(np.array_equal(ours.numpy(), c.numpy().astype(np.uint8)) for c in candidates), interpolation


# --- the per-image draws -----------------------------------------------------------------------------


def _keys(n, seed=0):
    return tf.random.experimental.stateless_split(tf.constant([seed, 1], tf.int64), n)


def _map(fn, keys, dtype):
    return tf.function(lambda k: tf.map_fn(fn, k, fn_output_signature=dtype))(keys).numpy()


def test_magnitude_draws_as_timm():
    """gauss(m, mstd) clipped to [0, mmax or 10]; mstd > 100: uniform in [0, m]."""
    keys = _keys(4000)
    gauss = _map(lambda k: rand_augment._magnitude(k, rand_augment.parse('rand-m9-mstd0.5')), keys, tf.float64)
    assert abs(gauss.mean() - 9) < 0.03 and abs(gauss.std() - 0.5) < 0.03 and gauss.max() <= 10
    clipped = _map(lambda k: rand_augment._magnitude(k, rand_augment.parse('rand-m10-mstd1')), keys, tf.float64)
    assert clipped.max() == 10 and abs(np.mean(clipped == 10) - 0.5) < 0.04
    uniform = _map(lambda k: rand_augment._magnitude(k, rand_augment.parse('rand-m8-mstd101')), keys, tf.float64)
    assert uniform.min() >= 0 and uniform.max() <= 8 and abs(uniform.mean() - 4) < 0.15
    wide = _map(lambda k: rand_augment._magnitude(k, rand_augment.parse('rand-m15-mstd3-mmax20')), keys, tf.float64)
    assert wide.max() > 15 and abs(wide.mean() - 15) < 0.2


def test_op_choice_frequencies():
    """Uniform with replacement (timm's np.random.choice); tweights: weighted, without replacement."""
    keys = _keys(6000)
    uniform = _map(lambda k: rand_augment._choices(k, rand_augment.parse('rand-n2')), keys, tf.int32)
    counts = np.bincount(uniform.ravel(), minlength=15) / uniform.size
    assert np.abs(counts - 1 / 15).max() < 0.01 and np.mean(uniform[:, 0] == uniform[:, 1]) > 0.04
    policy = rand_augment.parse('rand-n2-tweights')
    weighted = _map(lambda k: rand_augment._choices(k, policy), keys, tf.int32)
    assert np.all(weighted[:, 0] != weighted[:, 1])
    first = np.bincount(weighted[:, 0], minlength=15) / len(weighted)
    assert np.abs(first - np.array(policy.weights)).max() < 0.02


def test_layers_apply_with_probability_p():
    """Each of the n layers applies its op with probability p (here Invert, n=1, p=0.3)."""
    policy = rand_augment.RandAugment(ops=('Invert',), num_layers=1, prob=0.3)
    image = tf.zeros([4, 4, 3], tf.uint8)
    out = _map(lambda k: rand_augment.rand_augment(image, k, policy, FILL), _keys(3000), tf.uint8)
    inverted = out[:, 0, 0, 0] == 255
    assert np.all(out[inverted] == 255) and np.all(out[~inverted] == 0)
    assert abs(inverted.mean() - 0.3) < 0.03


# --- random erasing ----------------------------------------------------------------------------------


def _erased_ours(mode, count, n=2000, prob=0.5):
    image = jnp.full([32, 24, 3], 7.0)
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    erase = jax.jit(jax.vmap(lambda k: device_input.random_erasing(image, k, prob, mode, count)))
    return np.asarray(erase(keys))


def _erased_timms(mode, count, n=2000, prob=0.5):
    torch.manual_seed(0)
    random.seed(0)
    erase = RandomErasing(prob, mode=mode, max_count=count, device='cpu')
    return np.stack([erase(torch.full((3, 32, 24), 7.0)).permute(1, 2, 0).numpy() for _ in range(n)])


@pytest.mark.parametrize('count', [1, 3])
def test_erasing_statistics_match_timm(count):
    """Probability of erasing and the erased-area distribution, ours vs timm's RandomErasing."""
    ours = (_erased_ours('const', count, n=4000) != 7).any(-1).mean(axis=(1, 2))
    theirs = (_erased_timms('const', count, n=4000) != 7).any(-1).mean(axis=(1, 2))
    assert abs(np.mean(ours > 0) - np.mean(theirs > 0)) < 0.04  # both ~0.5; std error ~0.008
    assert abs(np.mean(ours > 0) - 0.5) < 0.04
    hit, hit_timm = ours[ours > 0], theirs[theirs > 0]
    assert hit.max() <= 1 / 3 + 0.05 and hit.min() >= 0.02 / count * 0.5
    for q in (0.1, 0.5, 0.9):
        assert abs(np.quantile(hit, q) - np.quantile(hit_timm, q)) < 0.02, q


def test_erasing_modes():
    """const: zeros; rand: one normal colour per box; pixel: independent N(0, 1) per pixel."""
    const = _erased_ours('const', 1, n=200, prob=1.0)
    assert set(np.unique(const)) <= {0.0, 7.0} and np.all((const == 0).any(axis=(1, 2, 3)))
    rand = _erased_ours('rand', 1, n=200, prob=1.0)
    for image in rand[:20]:
        box = image[(image != 7).any(-1)]
        assert len(np.unique(box, axis=0)) == 1
    pixel = _erased_ours('pixel', 1, n=200, prob=1.0)
    noise = pixel[pixel != 7]
    assert abs(noise.mean()) < 0.03 and abs(noise.std() - 1) < 0.03
    assert len(np.unique(noise)) > 0.99 * noise.size


def test_erasing_is_keyed_by_seed_update_and_row():
    """The device's erasing of a training batch: same (seed, update) -> same pixels, whatever else ran;
    another update or seed -> other boxes; uint8 in, normalised float32 out; float batches untouched."""
    images = jnp.full((16, 32, 24, 3), 100, jnp.uint8)
    inputs = device_input.DeviceInput(reprob=1.0, remode='const', seed=3)
    step = jax.jit(device_input.train_images, static_argnums=1)
    first, again = step(images, inputs, 7), step(images, inputs, 7)
    np.testing.assert_array_equal(first, again)
    assert first.dtype == jnp.float32
    plain = device_input.normalize(images)
    erased = np.asarray(first != plain).any(axis=(1, 2, 3))
    assert erased.all()  # reprob 1: every row erased, each differently
    assert len({np.asarray(row).tobytes() for row in first}) == 16
    assert not np.array_equal(step(images, inputs, 8), first)
    assert not np.array_equal(step(images, dataclasses.replace(inputs, seed=4), 7), first)
    floats = jnp.ones((2, 4, 4, 3))
    np.testing.assert_array_equal(device_input.train_images(floats, inputs, 7), floats)


def test_the_steps_import_without_tensorflow():
    """Normalising and erasing live in device_input.py, which the steps import: the GPU image has no
    TensorFlow, so neither it nor jax_ema.train may pull it in."""
    code = (
        'import sys, jax_ema.device_input, jax_ema.train\nassert "tensorflow" not in sys.modules, "tensorflow imported"'
    )
    done = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert done.returncode == 0, done.stderr[-2000:]


# --- the pipeline ------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def augmented():
    """The published mobilenetv3 command's data flags on the digits, through data.data_config."""
    argv = ['--aa', 'rand-m9-mstd0.5', '--reprob', '0.2', '--remode', 'pixel', '-j', '2', '--img-size', '32']
    train, _ = data.load_datasets(data.data_config(config_lib.parse_args(argv)))
    return train


def test_end_to_end_batch(augmented):
    """One batch; -j 1 gives the same batch as -j 2 (deterministic for seed and epoch)."""
    batch = next(augmented.train_batches(32, epoch=0))
    assert batch['image'].shape == (32, 32, 32, 3) and batch['image'].dtype == np.uint8
    plain, _ = data.load_datasets(data.DataConfig(img_size=32, scale=(0.6, 1.0), hflip=0.0, crop_pct=1.0))
    plain_batch = next(plain.train_batches(32, epoch=0))
    np.testing.assert_array_equal(batch['label'], plain_batch['label'])  # same order
    changed = np.abs(batch['image'].astype(int) - plain_batch['image']).max(axis=(1, 2, 3)) > 0
    assert 0.5 < changed.mean()  # most images augmented (n=2 ops at p=0.5)
    assert augmented.device_input == device_input.DeviceInput(reprob=0.2, remode='pixel', recount=1, seed=42)
    one_worker, _ = data.load_datasets(dataclasses.replace(augmented._cfg, num_workers=1))
    np.testing.assert_array_equal(batch['image'], next(one_worker.train_batches(32, epoch=0))['image'])
