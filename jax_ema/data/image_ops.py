"""PIL's image operations as RandAugment uses them (timm.data.auto_augment), written with TF ops.

Images are float32 [H, W, 3] holding whole numbers 0..255, as PIL's 8-bit RGB; every op returns
whole numbers again, rounded where PIL rounds and truncated where PIL truncates, so the colour
ops match PIL exactly and the geometric ones to within float rounding (tests/test_augment.py).
Arguments may be tensors (they are drawn per image).
"""

import tensorflow as tf  # already imported, after triton, by jax_ema.data


def invert(image):
    """ImageOps.invert."""
    return 255.0 - image


def posterize(image, bits):
    """ImageOps.posterize: keep the top `bits` bits; bits >= 8 keeps all, bits <= 0 none (black)."""
    step = tf.pow(2.0, tf.cast(8 - tf.clip_by_value(bits, 0, 8), tf.float32))
    return tf.floor(image / step) * step


def solarize(image, threshold):
    """ImageOps.solarize: values >= threshold are inverted."""
    return tf.where(image < tf.cast(threshold, tf.float32), image, 255.0 - image)


def solarize_add(image, add, threshold=128):
    """timm's solarize_add: values below threshold get `add` more, capped at 255."""
    added = tf.minimum(image + tf.cast(add, tf.float32), 255.0)
    return tf.where(image < tf.cast(threshold, tf.float32), added, image)


def _lookup(image, lut):
    """Per-channel table lookup: lut is [3, 256], as PIL's Image.point with a 768-entry list."""
    index = tf.cast(image, tf.int32) + tf.constant([0, 256, 512])
    return tf.gather(tf.reshape(tf.cast(lut, tf.float32), [-1]), index)


def _histograms(image):
    """[3, 256] int32 pixel counts per channel."""
    index = tf.reshape(tf.cast(image, tf.int32) + tf.constant([0, 256, 512]), [-1])
    return tf.reshape(tf.math.bincount(index, minlength=768, maxlength=768), [3, 256])


def auto_contrast(image):
    """ImageOps.autocontrast (no cutoff): each channel's [min, max] stretched to [0, 255].

    PIL's table is int(i * scale + offset) in double precision; computed here the same way.
    """
    values = tf.cast(tf.range(256), tf.float64)[None]
    lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float64)[:, None]
    hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float64)[:, None]
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = tf.clip_by_value(tf.floor(values * scale - lo * scale), 0.0, 255.0)  # floor = int() for >= 0
    return _lookup(image, tf.where(hi > lo, stretched, values))


def equalize(image):
    """ImageOps.equalize: per channel, step = (pixels - count of the top value) // 255 and
    table[i] = (step // 2 + pixels below i) // step (capped at 255); identity if step is 0."""
    hist = _histograms(image)
    used = hist > 0
    top = tf.reduce_max(tf.where(used, tf.range(256)[None], -1), axis=1, keepdims=True)
    top_count = tf.reduce_sum(tf.where(tf.range(256)[None] == top, hist, 0), axis=1, keepdims=True)
    step = (tf.reduce_sum(hist, axis=1, keepdims=True) - top_count) // 255
    below = tf.cumsum(hist, axis=1, exclusive=True)
    table = tf.minimum((step // 2 + below) // tf.maximum(step, 1), 255)
    identity = tf.broadcast_to(tf.range(256)[None], [3, 256])
    return _lookup(image, tf.where(step > 0, table, identity))


def blend(degenerate, image, factor):
    """Image.blend(degenerate, image, factor): float32 interpolation, truncated and clipped as PIL's C."""
    factor = tf.cast(factor, tf.float32)
    return tf.clip_by_value(tf.floor(degenerate + factor * (image - degenerate)), 0.0, 255.0)


def grayscale(image):
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16, as [H, W, 1]."""
    rgb = tf.cast(image, tf.int32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 32768) // 65536
    return tf.cast(luma, tf.float32)[..., None]


def color(image, factor):
    """ImageEnhance.Color: blend with the image's greyscale."""
    return blend(tf.broadcast_to(grayscale(image), tf.shape(image)), image, factor)


def contrast(image, factor):
    """ImageEnhance.Contrast: blend with a flat image of the greyscale mean (rounded)."""
    mean = tf.floor(tf.reduce_mean(tf.cast(grayscale(image), tf.float64)) + 0.5)
    return blend(tf.cast(mean, tf.float32), image, factor)


def brightness(image, factor):
    """ImageEnhance.Brightness: blend with black."""
    return blend(tf.zeros_like(image), image, factor)


def smooth(image):
    """ImageFilter.SMOOTH: 3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13, rounded; border pixels unchanged."""
    kernel = tf.tile(tf.constant([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]])[:, :, None, None], [1, 1, 3, 1])
    total = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], 'VALID')[0]  # exact: < 2^24
    inner = tf.floor((2 * total + 13) / 26)  # round(total / 13): never a tie, never near one
    border = tf.pad(tf.zeros_like(inner, tf.bool), [[1, 1], [1, 1], [0, 0]], constant_values=True)
    return tf.where(border, image, tf.pad(inner, [[1, 1], [1, 1], [0, 0]]))


def sharpness(image, factor):
    """ImageEnhance.Sharpness: blend with the SMOOTH-filtered image."""
    return blend(smooth(image), image, factor)


def affine(image, coeffs, fill, interpolation='BILINEAR'):
    """PIL's Image.transform(size, AFFINE, coeffs, resample, fillcolor), output size = input size.

    Output pixel (x, y) reads input point (a (x + .5) + b (y + .5) + c, d (x + .5) + e (y + .5) + f):
    `fill` (one value per channel) if that point is outside the image, else the image there,
    interpolated between the four nearest pixel centres (edges clamped; BILINEAR) or the pixel
    containing it (NEAREST). PIL truncates its double-precision result to uint8; so do we, after
    adding 1e-4 against float32 error (values PIL computes as nearly whole can still land 1 apart).
    """
    a, b, c, d, e, f = [tf.cast(v, tf.float32) for v in coeffs]
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # In pixel-index coordinates (centres at integers), TF's transform maps (x, y) to
    # (a x + b y + c + (a + b - 1) / 2, ...); edge clamping is TF's fill_mode NEAREST.
    transform = tf.stack([a, b, c + (a + b - 1) / 2, d, e, f + (d + e - 1) / 2, 0.0, 0.0])
    sampled = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=tf.stack([height, width]),
        fill_value=0.0, interpolation=interpolation, fill_mode='NEAREST')[0]
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32) + 0.5,
                         tf.range(width, dtype=tf.float32) + 0.5, indexing='ij')
    x_in, y_in = a * xs + b * ys + c, d * xs + e * ys + f
    inside = ((x_in >= 0) & (x_in < tf.cast(width, tf.float32)) & (y_in >= 0)
              & (y_in < tf.cast(height, tf.float32)))
    return tf.where(inside[..., None], tf.floor(sampled + 1e-4), tf.constant(fill, tf.float32))
