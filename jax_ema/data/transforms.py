"""Per-example transforms: decode, timm's train (crop, flip, RandAugment, random erasing) and eval."""

import math

import tensorflow as tf  # already imported, after triton, by jax_ema.data

from jax_ema.data import rand_augment as rand_augment_lib
from jax_ema.data import random_erasing as random_erasing_lib

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)  # timm.data.constants
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ('bilinear', 'bicubic')  # of PIL's resize, as the data config names them


def augment_fill(mean) -> tuple:
    """timm's RandAugment fill colour (aa img_mean): the normalisation mean in 0..255."""
    return tuple(min(255, round(255 * m)) for m in mean)


AUGMENT_FILL = augment_fill(IMAGENET_DEFAULT_MEAN)


def decode_image(data):
    """[H, W, 3] uint8: JPEG with the accurate DCT (bit-identical to PIL), PNG; grey/RGBA/palette -> RGB."""
    return tf.cond(tf.io.is_jpeg(data),
                   lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE'),
                   lambda: tf.io.decode_png(data, channels=3, dtype=tf.uint8))


def resize(image, size, method='bilinear'):
    """PIL's resize (antialiased when shrinking), rounded and clipped back to whole pixel values as PIL's uint8.

    Bilinear and bicubic use PIL's kernels (triangle; Keys cubic with a = -0.5), widened by the scale when
    shrinking. PIL resizes in two uint8 passes (each rounded and clipped) with 22-bit fixed-point weights;
    TF in one float pass. Bilinear thus differs by at most 1 level; bicubic, whose overshoot PIL clips
    between its passes, by more than 1 level on ~1 % of values next to sharp edges (up to 10-20 levels).
    tests/test_data.py measures both against timm's eval transform; docs/finetune.md has the numbers.
    """
    return tf.clip_by_value(tf.round(tf.image.resize(image, size, method=method, antialias=True)), 0.0, 255.0)


def _normalize(image, mean, std):
    """0..255 -> [0, 1] -> (x - mean) / std, float32."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def random_resized_crop_box(key, height, width, scale, ratio):
    """(top, left, crop_height, crop_width) by timm's RandomResizedCropAndInterpolation.get_params.

    Ten tries of area ~ U(scale) * H * W and log aspect ~ U(log ratio); the first crop that fits wins,
    at a uniform offset. If none fits: a centre crop clamped to the ratio range. `key` seeds TF's
    stateless random ops, so the box is a pure function of it.
    """
    keys = tf.random.experimental.stateless_split(key, 3)
    h_img, w_img = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    area = tf.random.stateless_uniform([10], keys[0], scale[0], scale[1], tf.float64) * h_img * w_img
    aspect = tf.exp(tf.random.stateless_uniform([10], keys[1], math.log(ratio[0]), math.log(ratio[1]),
                                                tf.float64))
    crop_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)  # round half to even, as Python
    crop_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    # (> 0 is ours: timm would fail on an empty crop, possible only for images of a few pixels.)
    fits = (crop_w <= width) & (crop_h <= height) & (crop_w > 0) & (crop_h > 0)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    in_ratio = w_img / h_img
    lo, hi = min(ratio), max(ratio)
    fallback_w = tf.where(in_ratio > hi, tf.cast(tf.round(h_img * hi), tf.int32), width)
    fallback_h = tf.where(in_ratio < lo, tf.cast(tf.round(w_img / lo), tf.int32), height)
    found = tf.reduce_any(fits)
    crop_h = tf.where(found, crop_h[first], fallback_h)
    crop_w = tf.where(found, crop_w[first], fallback_w)
    # randint(0, H - h) inclusive, from a uniform draw in [0, 1).
    offsets = tf.random.stateless_uniform([2], keys[2], dtype=tf.float64)
    top = tf.cast(tf.floor(offsets[0] * tf.cast(height - crop_h + 1, tf.float64)), tf.int32)
    left = tf.cast(tf.floor(offsets[1] * tf.cast(width - crop_w + 1, tf.float64)), tf.int32)
    top = tf.where(found, top, (height - crop_h) // 2)
    left = tf.where(found, left, (width - crop_w) // 2)
    return top, left, crop_h, crop_w


def train_transform(image, key, cfg, policy=None):
    """timm's train order: random-resized crop to img_size (cfg.interpolation), horizontal flip (hflip),
    RandAugment `policy` (if any), normalise, random erasing (if reprob > 0)."""
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    augment_key, erase_key = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(key, 1), 2))  # crop and flip draw as before
    shape = tf.shape(image)
    top, left, crop_h, crop_w = random_resized_crop_box(crop_key, shape[0], shape[1], cfg.scale,
                                                        cfg.ratio)
    crop = resize(image[top:top + crop_h, left:left + crop_w], (cfg.img_size, cfg.img_size), cfg.interpolation)
    flip = tf.random.stateless_uniform([], flip_key) < cfg.hflip
    crop = tf.cond(flip, lambda: tf.image.flip_left_right(crop), lambda: crop)
    if policy is not None:
        crop = rand_augment_lib.rand_augment(crop, augment_key, policy, augment_fill(cfg.mean))
    image = _normalize(crop, cfg.mean, cfg.std)
    if cfg.reprob > 0:
        image = random_erasing_lib.random_erasing(image, erase_key, cfg.reprob, cfg.remode.lower(),
                                                  cfg.recount)
    return tf.ensure_shape(image, (cfg.img_size, cfg.img_size, 3))


def eval_transform(image, cfg):
    """Shorter side to floor(img_size / crop_pct), centre crop img_size (torchvision rounding), normalise."""
    short_target = math.floor(cfg.img_size / cfg.crop_pct)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    short = tf.minimum(height, width)
    # torchvision Resize(int): short side -> target, long side -> int(target * long / short).
    new_h = tf.where(height <= width, short_target,
                     tf.cast(tf.floor(short_target * height / short), tf.int32))
    new_w = tf.where(width < height, short_target,
                     tf.cast(tf.floor(short_target * width / short), tf.int32))
    image = resize(image, tf.stack([new_h, new_w]), cfg.interpolation)
    top = tf.cast(tf.round(tf.cast(new_h - cfg.img_size, tf.float64) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - cfg.img_size, tf.float64) / 2), tf.int32)
    image = image[top:top + cfg.img_size, left:left + cfg.img_size]
    return _normalize(tf.ensure_shape(image, (cfg.img_size, cfg.img_size, 3)), cfg.mean, cfg.std)
