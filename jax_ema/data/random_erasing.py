"""Random erasing as timm's RandomErasing (timm.data.random_erasing), on one normalised image.

With probability `prob` an image gets `count` boxes, count uniform in 1..max_count. Each box tries ten
times for area ~ U(0.02, 1/3) * H * W / count and log aspect ~ U(log 0.3, log 1/0.3), h and w rounded;
the first try strictly smaller than the image is placed uniformly and filled with per-pixel normal
noise ('pixel'), one normal colour ('rand') or zeros ('const'). TF stateless ops of the image's key.
"""

import math

import tensorflow as tf  # already imported, after triton, by jax_ema.data

MODES = ('const', 'rand', 'pixel')
MIN_AREA, MAX_AREA = 0.02, 1 / 3  # timm's defaults, which its train.py keeps
MIN_ASPECT = 0.3
_TRIES = 10


def _box(key, height, width, count):
    """(top, left, h, w) of one box, as timm's RandomErasing._erase tries."""
    area_key, aspect_key, offset_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
    area = (tf.random.stateless_uniform([_TRIES], area_key, MIN_AREA, MAX_AREA, tf.float64)
            * tf.cast(height * width, tf.float64) / tf.cast(count, tf.float64))
    aspect = tf.exp(tf.random.stateless_uniform([_TRIES], aspect_key, math.log(MIN_ASPECT),
                                                -math.log(MIN_ASPECT), tf.float64))
    box_h = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    box_w = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (box_w < width) & (box_h < height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    found = tf.reduce_any(fits)
    box_h, box_w = tf.where(found, box_h[first], 0), tf.where(found, box_w[first], 0)
    offsets = tf.random.stateless_uniform([2], offset_key, dtype=tf.float64)  # randint, inclusive
    top = tf.cast(tf.floor(offsets[0] * tf.cast(height - box_h + 1, tf.float64)), tf.int32)
    left = tf.cast(tf.floor(offsets[1] * tf.cast(width - box_w + 1, tf.float64)), tf.int32)
    return top, left, box_h, box_w  # an empty box if no try fits


def random_erasing(image, key, prob: float, mode: str, max_count: int):
    """timm's RandomErasing(prob, mode=mode, max_count=max_count) of one [H, W, C] float image."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    erase_key, count_key, key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
    erase = tf.random.stateless_uniform([], erase_key, dtype=tf.float64) < prob
    count = tf.random.stateless_uniform([], count_key, 1, max_count + 1, tf.int32)

    def erase_boxes(image):
        for i, box_key in enumerate(tf.unstack(tf.random.experimental.stateless_split(key, max_count))):
            geometry_key, fill_key = tf.unstack(tf.random.experimental.stateless_split(box_key, 2))
            top, left, box_h, box_w = _box(geometry_key, height, width, count)
            if mode == 'pixel':
                patch = tf.random.stateless_normal([box_h, box_w, shape[2]], fill_key, dtype=image.dtype)
            elif mode == 'rand':
                colour = tf.random.stateless_normal([1, 1, shape[2]], fill_key, dtype=image.dtype)
                patch = tf.broadcast_to(colour, [box_h, box_w, shape[2]])
            else:
                patch = tf.zeros([box_h, box_w, shape[2]], image.dtype)
            around = [[top, height - top - box_h], [left, width - left - box_w], [0, 0]]
            inside = tf.pad(tf.ones_like(patch, tf.bool), around)
            image = tf.where((i < count) & inside, tf.pad(patch, around), image)
        return image

    return tf.cond(erase, lambda: erase_boxes(image), lambda: image)
