"""timm's other train crops (`--train-crop-mode`, transforms_factory): `rkrc` and `rkrr`, ResizeKeepRatio with a
random scale and aspect, each drawn with probability 0.5 (scale as RandomResizedCrop's area: the zoom is
1 / sqrt(U(scale)); aspect sqrt(exp(U(log ratio)))), then CenterCropOrPad (rkrc) or RandomCropOrPad (rkrr) to
img_size with reflect padding. `rrc` (RandomResizedCrop) is transforms.py's. Draws are TF stateless ops keyed
per example, so they are pure functions of (seed, epoch, index) as everything else here."""

import math

import tensorflow as tf  # already imported, after triton, by jax_ema.data

MODES = ('rrc', 'rkrc', 'rkrr')
RANDOM_PROB = 0.5  # timm's random_scale_prob and random_aspect_prob in transforms_imagenet_train


def keep_ratio_size(key, height, width, target, scale, ratio, scale_prob=RANDOM_PROB, aspect_prob=RANDOM_PROB):
    """ResizeKeepRatio.get_params (longest=0, random_scale_area=True): the short side to `target`, times the
    random zoom, the random aspect split between the sides. (new_height, new_width), rounded half to even."""
    keys = tf.unstack(tf.random.experimental.stateless_split(key, 4))
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    fit = tf.minimum(h / target, w / target)

    def draw(k, low, high):
        return tf.random.stateless_uniform([], k, low, high, tf.float64) if low < high else tf.constant(low, tf.float64)

    zoom = tf.where(
        tf.random.stateless_uniform([], keys[0], dtype=tf.float64) < scale_prob,
        1.0 / tf.sqrt(draw(keys[1], scale[0], scale[1])),
        tf.constant(1.0, tf.float64),
    )
    aspect = tf.where(
        tf.random.stateless_uniform([], keys[2], dtype=tf.float64) < aspect_prob,
        tf.sqrt(tf.exp(draw(keys[3], math.log(ratio[0]), math.log(ratio[1])))),
        tf.constant(1.0, tf.float64),
    )
    new_h = tf.round(h * (zoom / aspect) / fit)
    new_w = tf.round(w * (zoom * aspect) / fit)
    return tf.cast(tf.maximum(new_h, 1.0), tf.int32), tf.cast(tf.maximum(new_w, 1.0), tf.int32)


def _axis_window(key, size, target, mode):
    """(pad_before, start) along one axis: CenterCropOrPad's (rkrc) or RandomCropOrPad's (rkrr) placement of a
    `target` window in `size` pixels; the window starts at `start` of the image padded by pad_before."""
    if mode == 'rkrc':
        pad_before = tf.maximum(target - size, 0) // 2
        padded = tf.maximum(size, target)
        start = tf.cast(tf.round(tf.cast(padded - target, tf.float64) / 2.0), tf.int32)
        return pad_before, start
    delta = size - target
    u = tf.random.stateless_uniform([], key, dtype=tf.float64)
    offset = tf.cast(tf.floor(u * tf.cast(tf.abs(delta) + 1, tf.float64)), tf.int32)  # randint(0, |delta|)
    return tf.where(delta < 0, offset, 0), tf.where(delta < 0, 0, offset)


def _reflect(index, size):
    """numpy's 'reflect' padding (torchvision's for PIL): indices outside [0, size) mirrored, edge not repeated."""
    period = tf.maximum(2 * (size - 1), 1)
    folded = tf.math.floormod(tf.abs(index), period)
    return tf.where(folded >= size, period - folded, folded) * tf.cast(size > 1, tf.int32)


def crop_or_pad(image, key, target: int, mode: str):
    """The `target` x `target` window of CenterCropOrPad / RandomCropOrPad (reflect padding) of a resized image."""
    keys = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    shape = tf.shape(image)
    rows, cols = (
        _axis_window(k, shape[a], target, mode) for k, a in ((keys[0], 0), (keys[1], 1))
    )  # (pad_before, start)
    row_index = _reflect(tf.range(target) + rows[1] - rows[0], shape[0])
    col_index = _reflect(tf.range(target) + cols[1] - cols[0], shape[1])
    return tf.gather(tf.gather(image, row_index, axis=0), col_index, axis=1)
