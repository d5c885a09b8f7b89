"""PIL's box filter (timm's 'box' interpolation), bit-exact: Resample.c's coefficients for its box filter
computed with TF ops on dynamic sizes (so it runs inside the tf.data map), each output the fixed-point mean of a run
of consecutive input pixels. TensorFlow's own box kernel weighs the pixels at a span's edges otherwise (up to 127
levels off PIL at some ratios, e.g. 3 -> 2)."""

from __future__ import annotations

import tensorflow as tf  # already imported, after triton, by jax_ema.data


def resize_region(window, offset, in_size, out_size, start, size, height_first):
    """transforms.resize_region for 'box', PIL's pixels exactly: per output the mean of the input pixels whose
    centres lie in its half-open span (`_taps`), in 22-bit fixed point, one axis then the other (`height_first`:
    a bool, or a boolean tensor as transforms.pillow_height_first gives), uint8 between. Each pass runs on the rows
    of a 2-D uint8 image; 2-D transposes (cheap in uint8) move the width."""
    in_size, out_size, offset, start, size = (tf.cast(v, tf.int32) for v in (in_size, out_size, offset, start, size))
    height, width, channels = tf.unstack(tf.shape(window))

    def along(rows, axis):
        return _rows(rows, in_size[axis], out_size[axis], offset[axis], start[axis], size[axis])

    def tall_first():
        tall = along(tf.reshape(window, [height, -1]), 0)  # [out H, W * C]
        wide = along(tf.reshape(tf.transpose(tall), [width, -1]), 1)  # [W, C * out H] -> [out W, C * out H]
        return tf.transpose(tf.reshape(wide, [-1, size[0]]))  # [out H, out W * C]

    def width_first():
        wide = along(tf.reshape(tf.transpose(tf.reshape(window, [height, -1])), [width, -1]), 1)  # [out W, C * H]
        return along(tf.transpose(tf.reshape(wide, [-1, height])), 0)  # [H, out W * C] -> [out H, out W * C]

    if isinstance(height_first, bool):
        resized = tall_first() if height_first else width_first()
    else:
        resized = tf.cond(height_first, tall_first, width_first)
    return tf.reshape(resized, [size[0], size[1], channels])


def _taps(in_size, out_size, offset, start, size):
    """(first, count, weight) per output start..start+size-1 of PIL's box resize along one axis, in the float64
    steps of Resample.c's precompute_coeffs: input pixels first..+count-1 (from `offset`), each weighing 1/count
    in 22-bit fixed point. Of the pixels within PIL's rounded bounds it keeps those whose centres lie in the
    filter's (-1/2, 1/2]: consecutive ones, so a count describes them."""
    scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    filter_scale = tf.maximum(scale, 1.0)  # widened when shrinking
    support = 0.5 * filter_scale
    centers = (tf.cast(start + tf.range(size), tf.float64) + 0.5) * scale
    low = tf.maximum(tf.cast(centers - support + 0.5, tf.int32), 0)  # C's (int): truncation
    high = tf.minimum(tf.cast(centers + support + 0.5, tf.int32), in_size)
    steps = tf.range(tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1)
    x = (tf.cast(low[:, None] + steps, tf.float64) - centers[:, None] + 0.5) * (1.0 / filter_scale)
    inside = (steps < (high - low)[:, None]) & (x > -0.5) & (x <= 0.5)
    count = tf.reduce_sum(tf.cast(inside, tf.int32), 1)
    first = low + tf.argmax(tf.cast(inside, tf.int32), 1, output_type=tf.int32) - offset
    weight = tf.where(count > 0, tf.floor(0.5 + 4194304.0 / tf.cast(tf.maximum(count, 1), tf.float64)), 0.0)
    return first, count, weight


def _rows(rows, in_size, out_size, offset, start, size):
    """PIL's box pass along axis 0 of a uint8 [N, M] image: [size, M] uint8. The sums of up to 65793 pixels are
    exact in float32, and so is PIL's (sum * weight + 2^21) >> 22 as sum * (weight / 2^22) + 1/2 truncated, for
    up to 160 pixels per output (checked for every sum); more (shrinking over 160 times) take float64, exact."""
    first, count, weight = _taps(in_size, out_size, offset, start, size)
    most = tf.reduce_max(count)
    steps = tf.range(most)[:, None]
    taps = tf.where(steps < count, first + steps, tf.shape(rows)[0])  # [most, size]; past a count: the zero row
    padded = tf.concat([rows, tf.zeros_like(rows[:1])], 0)
    sums = tf.reduce_sum(tf.cast(tf.gather(padded, taps), tf.float32), 0)
    share = (weight / 4194304.0)[:, None]  # whole multiples of 2^-22 below 2: exact in float32 too

    def rounded(dtype):
        return tf.cast(tf.minimum(tf.cast(sums, dtype) * tf.cast(share, dtype) + 0.5, 255.5), tf.uint8)

    return tf.cond(most <= 160, lambda: rounded(tf.float32), lambda: rounded(tf.float64))
