"""PIL's image operations as RandAugment uses them (timm.data.auto_augment), written with TF ops.

Images are float32 [H, W, 3] holding whole numbers 0..255, as PIL's 8-bit RGB; every op returns
whole numbers again, rounded where PIL rounds and truncated where PIL truncates, so the colour
ops match PIL exactly and the geometric ones to within float rounding (tests/test_augment.py).
Arguments may be tensors (they are drawn per image). Written for the CPU's cost: float32 arithmetic
(vectorised) rather than selects, gathers and convolutions, which TensorFlow's CPU kernels run
element by element; the affine warp is compiled by XLA.
"""

import tensorflow as tf  # already imported, after triton, by jax_ema.data


def invert(image):
    """ImageOps.invert."""
    return 255.0 - image


def posterize(image, bits):
    """ImageOps.posterize: keep the top `bits` bits; bits >= 8 keeps all, bits <= 0 none (black)."""
    step = tf.pow(2.0, tf.cast(8 - tf.clip_by_value(bits, 0, 8), tf.float32))
    return tf.floor(image / step) * step


def _below(image, threshold):
    """1.0 where image < threshold, else 0.0."""
    return tf.cast(image < tf.cast(threshold, tf.float32), tf.float32)


def solarize(image, threshold):
    """ImageOps.solarize: values >= threshold are inverted."""
    return image + (1.0 - _below(image, threshold)) * (255.0 - 2.0 * image)


def solarize_add(image, add, threshold=128):
    """timm's solarize_add: values below threshold get `add` more, capped at 255."""
    added = tf.minimum(image + tf.cast(add, tf.float32), 255.0)
    return image + _below(image, threshold) * (added - image)


def _lookup(image, lut):
    """Per-channel table lookup: lut is [3, 256], as PIL's Image.point with a 768-entry list."""
    return _lookup_xla(image, tf.reshape(tf.cast(lut, tf.float32), [-1]))


@tf.function(jit_compile=True, autograph=False)
def _lookup_xla(image, flat_lut):  # XLA's gather: ~5x faster than TensorFlow's element-wise one
    return tf.gather(flat_lut, tf.cast(image, tf.int32) + tf.constant([0, 256, 512]))


def _histograms(image):
    """[3, 256] int32 pixel counts per channel."""
    index = tf.reshape(tf.cast(image, tf.int32) + tf.constant([0, 256, 512]), [-1])
    return tf.reshape(tf.math.bincount(index, minlength=768, maxlength=768), [3, 256])


def auto_contrast(image):
    """ImageOps.autocontrast (no cutoff): each channel's [min, max] stretched to [0, 255].

    PIL's table is int(i * scale + offset) in double precision; computed here the same way, per pixel
    (cheaper than a table lookup), a channel with max = min left as it is.
    """
    lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float64)
    hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float64)
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
    offset = tf.where(hi > lo, -lo * scale, 0.0)
    stretched = tf.floor(tf.cast(image, tf.float64) * scale + offset)  # floor = int() for >= 0
    return tf.cast(tf.clip_by_value(stretched, 0.0, 255.0), tf.float32)


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
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16, as [H, W, 1]. In float32, exactly:
    every partial sum is a whole number below 2^24, and dividing by 2^16 is exact."""
    r, g, b = image[..., 0:1], image[..., 1:2], image[..., 2:3]
    luma = r * 19595.0 + g * 38470.0 + b * 7471.0  # slices: ~6x faster than reduce_sum over the 3-wide last axis
    return tf.floor((luma + 32768.0) / 65536.0)


def color(image, factor):
    """ImageEnhance.Color: blend with the image's greyscale."""
    return blend(grayscale(image), image, factor)  # [H, W, 1] broadcast in the blend: no copy


def contrast(image, factor):
    """ImageEnhance.Contrast: blend with a flat image of the greyscale mean (rounded)."""
    mean = tf.floor(tf.reduce_mean(tf.cast(grayscale(image), tf.float64)) + 0.5)
    return blend(tf.cast(mean, tf.float32), image, factor)


def brightness(image, factor):
    """ImageEnhance.Brightness: blend with black."""
    return blend(tf.zeros_like(image), image, factor)


def smooth(image):
    """ImageFilter.SMOOTH: 3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13, rounded; border pixels unchanged."""
    rows = image[:-2] + image[1:-1] + image[2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]  # the 3x3 sums, exact in float32
    inner = image[1:-1, 1:-1]
    smoothed = tf.floor((2 * (box + 4 * inner) + 13) / 26)  # round(total / 13): never a tie, never near one
    return image + tf.pad(smoothed - inner, [[1, 1], [1, 1], [0, 0]])


def sharpness(image, factor):
    """ImageEnhance.Sharpness: blend with the SMOOTH-filtered image."""
    return blend(smooth(image), image, factor)


def affine(image, coeffs, fill, interpolation='BILINEAR'):
    """PIL's Image.transform(size, AFFINE, coeffs, resample, fillcolor), output size = input size.

    Output pixel (x, y) reads input point (a (x + .5) + b (y + .5) + c, d (x + .5) + e (y + .5) + f):
    `fill` (one value per channel) if that point is outside the image, else the image there,
    interpolated between the four nearest pixel centres (edges clamped; BILINEAR), by PIL's cubic
    convolution (a = -1) over the 4x4 nearest (edges clamped; BICUBIC), or the pixel containing it
    (NEAREST). PIL truncates its double-precision result to uint8 (BICUBIC: after clipping to 0..255).
    BICUBIC is computed in float64 as PIL's; BILINEAR in float32, adding 1e-4 before truncating against
    float32 error (values PIL computes as nearly whole can still land 1 apart).
    """
    dtype = tf.float64 if interpolation == 'BICUBIC' else tf.float32
    coeffs = tf.stack([tf.cast(v, dtype) for v in coeffs])
    return _affine_xla[interpolation](image, coeffs, tf.constant(fill, tf.float32))


def _affine(image, coeffs, fill, mode: str):
    a, b, c, d, e, f = tf.unstack(coeffs)
    dtype = coeffs.dtype
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    ys, xs = tf.meshgrid(tf.range(height, dtype=dtype) + 0.5, tf.range(width, dtype=dtype) + 0.5, indexing='ij')
    x_in, y_in = a * xs + b * ys + c, d * xs + e * ys + f
    inside = (x_in >= 0) & (x_in < tf.cast(width, dtype)) & (y_in >= 0) & (y_in < tf.cast(height, dtype))
    flat = tf.reshape(tf.cast(image, dtype), [height * width, -1])

    def pixels(y, x):  # the pixels at integer positions, clamped to the image
        y = tf.clip_by_value(tf.cast(y, tf.int32), 0, height - 1)
        x = tf.clip_by_value(tf.cast(x, tf.int32), 0, width - 1)
        return tf.gather(flat, y * width + x)

    if mode == 'NEAREST':
        sampled = pixels(tf.floor(y_in), tf.floor(x_in))
    elif mode == 'BICUBIC':
        x, y = x_in - 0.5, y_in - 0.5
        x0, y0 = tf.floor(x), tf.floor(y)
        dx, dy = (x - x0)[..., None], (y - y0)[..., None]
        rows = [_cubic([pixels(y0 + j, x0 + i) for i in (-1, 0, 1, 2)], dx) for j in (-1, 0, 1, 2)]
        value = _cubic(rows, dy)
        sampled = tf.cast(tf.floor(tf.clip_by_value(value, 0.0, 255.0)), tf.float32)
    else:
        x, y = x_in - 0.5, y_in - 0.5
        x0, y0 = tf.floor(x), tf.floor(y)
        dx, dy = (x - x0)[..., None], (y - y0)[..., None]
        upper = pixels(y0, x0) * (1 - dx) + pixels(y0, x0 + 1) * dx
        lower = pixels(y0 + 1, x0) * (1 - dx) + pixels(y0 + 1, x0 + 1) * dx
        sampled = tf.floor(upper * (1 - dy) + lower * dy + 1e-4)
    return tf.where(inside[..., None], tf.cast(sampled, tf.float32), fill)


def _cubic(values, t):
    """PIL's cubic convolution through four samples at -1, 0, 1, 2, evaluated at t in [0, 1): the a = -1
    kernel, in PIL's Horner form. (Edges: PIL clamps the columns and repeats the last valid row, which is
    the same as clamping both.)"""
    v1, v2, v3, v4 = values
    return v2 + t * ((v3 - v1) + t * ((2 * (v1 - v2) + v3 - v4) + t * (v2 - v1 + v4 - v3)))


# XLA compiles the warp for each image size once: its gathers and arithmetic fused, ~3x faster than
# TensorFlow's ImageProjectiveTransformV3 kernel.
_affine_xla = {
    mode: tf.function(
        lambda image, coeffs, fill, mode=mode: _affine(image, coeffs, fill, mode),
        jit_compile=True,
        autograph=False,
    )
    for mode in ('BILINEAR', 'BICUBIC', 'NEAREST')
}
