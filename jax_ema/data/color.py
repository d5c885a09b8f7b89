"""timm's colour augmentations of the train transform (transforms_imagenet_train), on uint8 images as PIL does.

`color_jitter`: torchvision's ColorJitter on a PIL image (the ops in a random order, each factor uniform in
its range: brightness, contrast and saturation are PIL's ImageEnhance blends (image_ops.py), hue a shift of
PIL's HSV hue), applied with probability `prob` (timm's --color-jitter-prob; always when None).
`random_grayscale`: torchvision's RandomGrayscale (PIL's L, on all three channels). `random_gaussian_blur`:
timm's RandomApply(GaussianBlur(23, sigma ~ U(0.1, 2))), torchvision's float32 convolution with reflected
edges, rounded. Images are float32 [H, W, 3] holding whole numbers 0..255 (as image_ops.py; the jitter,
compiled by XLA, takes uint8 too); every draw is a TF stateless op of the image's key.
"""

import itertools

import tensorflow as tf  # already imported, after triton, by jax_ema.data

from jax_ema.data import image_ops

BLUR_KERNEL = 23  # timm's GaussianBlur(kernel_size=23), "hardcoded for now"
BLUR_SIGMA = (0.1, 2.0)  # torchvision's GaussianBlur default sigma range


def jitter_ranges(color_jitter) -> tuple:
    """timm's --color-jitter (1 value: brightness = contrast = saturation, no hue; 3; or 4 with hue) ->
    torchvision ColorJitter's ranges ((lo, hi) or None when off): [max(0, 1 - v), 1 + v], hue [-v, v]."""
    values = tuple(float(v) for v in color_jitter)
    values = values * 3 if len(values) == 1 else values
    ranges = [None if v == 0 else (max(0.0, 1.0 - v), 1.0 + v) for v in values[:3]]
    hue = values[3] if len(values) == 4 else 0.0
    return tuple(ranges) + (None if hue == 0 else (-hue, hue),)


def _rgb_to_hsv(r, g, b, zero):
    """Pillow's RGB -> HSV (convert.c rgb2hsv) of float32 whole numbers: (h, s, v), float32 whole numbers.
    Its arithmetic, float where its C has float and double where double, regrouped: of the three quotients
    (max - channel) / (max - min) one is 0, one 1, so its hue sum is base +- the third, D, rounded to float."""
    maxc = tf.maximum(r, tf.maximum(g, b))
    minc = tf.minimum(r, tf.minimum(g, b))
    span = maxc - minc
    grey = span == 0.0
    mid = r + g + b - maxc - minc
    d = (maxc - mid) / tf.where(grey, 1.0, span)  # a float quotient
    # Pillow's branches: r max: bc - gc; else g max: 2 + rc - bc; else 4 + gc - rc
    r_max, g_max = r == maxc, g == maxc
    h = tf.where(
        r_max,
        tf.where(g == minc, d - 1.0, 1.0 - d),
        tf.where(g_max, tf.where(r == minc, 3.0 - d, 1.0 + d), tf.where(r == minc, 3.0 + d, 5.0 - d)),
    )
    # fmod(h / 6.0 + 1.0, 1.0) in double (of a positive number: x - floor(x), exact), kept in a float
    h = tf.cast(h, tf.float64) / _runtime(6.0, zero, tf.float64) + 1.0
    h = tf.cast(h - tf.floor(h), tf.float32)
    s = span / tf.where(grey, 1.0, maxc)
    # (int)(x * 255.0) of floats x in double: exact products (24 x 8 bits), truncated
    hue, sat = (tf.cast(tf.floor(tf.cast(x, tf.float64) * 255.0), tf.float32) for x in (h, s))
    return tf.where(grey, 0.0, hue), tf.where(grey, 0.0, sat), maxc


def _hsv_to_rgb(h, s, v, zero):
    """Pillow's HSV -> RGB (convert.c hsv2rgb) of float32 whole numbers: (r, g, b)."""
    return _sector_channels(v, *_hsv_to_rgb_parts(h, s, v, zero))


def _hsv_to_rgb_parts(h, s, v, zero):
    """hsv2rgb's sector (0..6) and the two channels it computes besides v: p and (q or t, the sector's),
    as float32 whole numbers. Its double quotients h * 6 / 255 and s / 255, rounded to float, equal the float
    quotients (no such quotient lies near a rounding boundary of float); its double products, rounded by
    round() (half away from zero), in double, kept apart from any sum (`_apart`). s = 0 needs no branch:
    p = q = t = v."""
    sector = tf.floor(h * 6.0 / _runtime(255.0, zero))
    f = (h * 6.0 - sector * 255.0) / _runtime(255.0, zero)  # whole numbers, exact until the quotient
    fs = s / _runtime(255.0, zero)
    fs64, f64, v64 = (tf.cast(x, tf.float64) for x in (fs, f, v))
    odd = (sector == 1.0) | (sector == 3.0) | (sector == 5.0)  # (floormod would call libm per pixel)
    q = 1.0 - tf.cast(_apart(fs * f, zero), tf.float64)  # a float product, as Pillow's
    t = 1.0 - _apart(fs64 * (1.0 - f64), zero)
    p, qt = (_round_half_away(_apart(v64 * x, zero)) for x in (1.0 - fs64, tf.where(odd, q, t)))
    return sector, p, qt


def _sector_channels(v, sector, p, qt):
    """hsv2rgb's channels by sector (6: h = 255, its i % 6 = 0): (v, t, p) (q, v, p) (p, v, t) (p, q, v)
    (t, p, v) (v, p, q)."""
    red = tf.where((sector == 0.0) | (sector >= 5.0), v, tf.where((sector == 1.0) | (sector == 4.0), qt, p))
    green = tf.where((sector == 1.0) | (sector == 2.0), v, tf.where((sector == 4.0) | (sector >= 5.0), p, qt))
    blue = tf.where((sector == 3.0) | (sector == 4.0), v, tf.where((sector == 2.0) | (sector == 5.0), qt, p))
    return red, green, blue


def _round_half_away(x):
    """C's round() of x >= 0: floor, and up from a fraction of one half (the fraction is exact)."""
    whole = tf.floor(x)
    return tf.cast(whole + tf.cast(x - whole >= 0.5, tf.float64), tf.float32)


def _runtime(constant, zero, dtype=tf.float32):
    """`constant` as a number XLA cannot fold: it would turn a division by it into a product by its
    reciprocal, rounded differently."""
    return constant + tf.cast(zero, dtype)


def hue(image, factor, zero=0):
    """torchvision's adjust_hue on a PIL image (float32 whole numbers): to HSV, hue += int(factor * 255)
    (wrapping in 8 bits), back. `zero`: a runtime 0 (`_apart`, `_runtime`)."""
    return _shift_hue(image, hue_shift(factor), zero)


def hue_shift(factor):
    """adjust_hue's shift of the hue, int(factor * 255) (toward 0), as a float32."""
    return tf.cast(tf.cast(tf.cast(factor, tf.float64) * 255.0, tf.int32), tf.float32)


def _shift_hue(image, shift, zero):
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    h, s, v = _rgb_to_hsv(r, g, b, zero)
    h = h + shift  # in -127..382: wrapped once (floormod would call libm per pixel)
    h = tf.where(h < 0.0, h + 256.0, tf.where(h >= 256.0, h - 256.0, h))
    sector, p, qt = _hsv_to_rgb_parts(h, s, v, zero)
    # Packed into one number, computed once: XLA would fuse the whole computation into each output channel.
    code = _computed_once(p + 256.0 * qt + 65536.0 * sector, zero)
    sector = tf.floor(code / 65536.0)
    qt = tf.floor(code / 256.0) - 256.0 * sector
    p = code - 256.0 * tf.floor(code / 256.0)
    return tf.stack(_sector_channels(tf.maximum(r, tf.maximum(g, b)), sector, p, qt), axis=-1)


def _computed_once(x, zero):
    """`x`, materialised: XLA does not fuse across a conditional (it drops optimisation barriers on CPU)."""
    return tf.cond(tf.equal(zero, 0), lambda: x, lambda: -x)


COMPILED = True  # False: `jitter` runs TensorFlow's kernels op by op (benchmarks/bench_input.py *_kernels)


def jitter(image, order, factors, ranges):
    """torchvision ColorJitter.forward: the ops in `order` (ids 0..3: brightness, contrast, saturation,
    hue) at `factors`; ops whose range is None are skipped. One XLA-compiled call (`_jitter_compiled`, with
    hue `_jitter_hue_compiled`); the image comes back in its dtype (uint8 or float32 whole numbers)."""
    if all(r is None for r in ranges):
        return image
    if not COMPILED:
        pixels = jitter_kernels(tf.cast(image, tf.float32), order, factors, ranges)
        return tf.cast(pixels, image.dtype)
    blends = tf.stack([tf.cast(f if r is not None else 1.0, tf.float32) for f, r in zip(factors[:3], ranges)])
    zero = tf.zeros([], tf.int32)
    if ranges[3] is not None:
        return _jitter_hue_compiled(image, tf.cast(order, tf.int32), blends, hue_shift(factors[3]), zero)
    kept = tf.boolean_mask(order, order < 3)  # the order of brightness, contrast, saturation
    permutation = kept[0] * 2 + tf.cast(kept[1] > kept[2], kept.dtype)  # its rank among the 6: PERMUTATIONS
    return _jitter_compiled(image, tf.cast(permutation, tf.int32), blends, zero)


def jitter_kernels(image, order, factors, ranges):
    """`jitter` with TensorFlow's kernels op by op, on float32 whole numbers: the same arithmetic, not
    compiled (`COMPILED` off; ~1.5x slower, benchmarks/bench_input.py train_hue_kernels)."""
    ops = (image_ops.brightness, image_ops.contrast, image_ops.color, hue)
    branches = [
        (lambda image, i=i, op=op: op(image, factors[i])) if ranges[i] is not None else (lambda image: image)
        for i, op in enumerate(ops)
    ]
    for position in range(4):
        image = tf.switch_case(order[position], [lambda b=b, image=image: b(image) for b in branches])
    return image


PERMUTATIONS = tuple(itertools.permutations(range(3)))  # in lexicographic order


@tf.function(jit_compile=True, autograph=False)
def _jitter_compiled(image, permutation, factors, zero):
    """Brightness (0), contrast (1) and saturation (2) at `factors` in the order PERMUTATIONS[permutation], as
    PIL's ImageEnhance: exactly the float32 arithmetic of image_ops.py, fused by XLA into ~2 passes (~2x
    cheaper than TensorFlow's kernels). `zero` (a runtime 0) keeps each product apart from the sum after it
    (`_apart`)."""
    pixels = tf.cast(image, tf.float32)
    ops = _blend_ops(factors, zero)

    def branch(permutation):
        def run():
            x = pixels
            for op in permutation:
                x = ops[op](x)
            return tf.cast(x, image.dtype)

        return run

    return tf.switch_case(permutation, [branch(p) for p in PERMUTATIONS])


@tf.function(jit_compile=True, autograph=False)
def _jitter_hue_compiled(image, order, factors, shift, zero):
    """The four ops in `order`, the hue shifted by `shift` (`hue`): an XLA loop over the positions, each a
    switch among the ops, so that each op is compiled once (a switch among the 24 orders, or the runs before
    and after the hue, took 4-27 s to compile; this ~2 s)."""
    ops = _blend_ops(factors, zero) + (lambda x: _shift_hue(x, shift, zero),)

    def position(i, x):
        return i + 1, tf.switch_case(tf.gather(order, i), [lambda op=op: op(x) for op in ops])

    pixels = tf.ensure_shape(tf.cast(image, tf.float32), [None, None, 3])
    _, pixels = tf.while_loop(lambda i, x: i < 4, position, (tf.constant(0), pixels))
    return tf.cast(pixels, image.dtype)


def _blend_ops(factors, zero):
    """PIL's ImageEnhance brightness, contrast, saturation at `factors`, as image_ops.py, for XLA."""

    def contrast(x):  # image_ops.contrast: the greyscale's mean (an exact float64 sum), rounded
        count = _runtime(tf.cast(tf.size(x) // 3, tf.float64), zero, tf.float64)  # a constant: 1/count, rounded
        mean = tf.floor(tf.reduce_sum(tf.cast(image_ops.grayscale(x), tf.float64)) / count + 0.5)
        return blend(tf.cast(mean, tf.float32), x, factors[1], zero)

    return (
        lambda x: tf.minimum(tf.floor(factors[0] * x), 255.0),  # blend with black: 0 + factor * x, factor >= 0
        contrast,
        lambda x: blend(image_ops.grayscale(x), x, factors[2], zero),
    )


def blend(degenerate, image, factor, zero):
    """image_ops.blend (PIL's Image.blend) for XLA: the product kept apart from the sum (`_apart`)."""
    product = _apart(factor * (image - degenerate), zero)
    return tf.clip_by_value(tf.floor(degenerate + product), 0.0, 255.0)


def _apart(product, zero):
    """`product` unchanged (its bits xor a runtime 0). XLA lets LLVM fuse a multiply and the add after it into
    one FMA, rounded once, where PIL rounds the product to float32 first: for ~1 factor in 500 that moved up to
    127 of the 65,536 pairs of levels by 1 (tests/test_color.py). Through integer ops it cannot be fused."""
    bits = tf.int32 if product.dtype == tf.float32 else tf.int64
    return tf.bitcast(tf.bitwise.bitwise_xor(tf.bitcast(product, bits), tf.cast(zero, bits)), product.dtype)


def draw_jitter(key, ranges):
    """ColorJitter.get_params from `key`: (order: a uniform random permutation of the 4 op ids, factors:
    each uniform in its range (1 where off), u: uniform in [0, 1) for color_jitter_prob)."""
    order_key, factor_key, apply_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
    order = tf.argsort(tf.random.stateless_uniform([4], order_key))
    draws = tf.random.stateless_uniform([4], factor_key, dtype=tf.float64)
    bounds = [r or (1.0, 1.0) for r in ranges]
    factors = [lo + (hi - lo) * draws[i] for i, (lo, hi) in enumerate(bounds)]
    return order, factors, tf.random.stateless_uniform([], apply_key)


def color_jitter(image, key, ranges, prob=None):
    """ColorJitter(ranges) drawn from `key`, applied with probability `prob` (None: always)."""
    order, factors, u = draw_jitter(key, ranges)
    if prob is None:
        return jitter(image, order, factors, ranges)
    return tf.cond(u < prob, lambda: jitter(image, order, factors, ranges), lambda: image)


def random_grayscale(image, key, prob):
    """torchvision's RandomGrayscale(prob) on a PIL RGB image: PIL's L on all three channels."""
    grey = lambda: tf.broadcast_to(image_ops.grayscale(image), tf.shape(image))  # noqa: E731
    return tf.cond(tf.random.stateless_uniform([], key) < prob, grey, lambda: image)


def gaussian_kernel(sigma, size=BLUR_KERNEL):
    """torchvision's 1-D Gaussian kernel, in float32: exp(-x^2 / (2 sigma^2)) over x = -(size-1)/2 .. (size-1)/2,
    normalised to sum 1."""
    half = (size - 1) * 0.5
    x = tf.linspace(-half, half, size)
    pdf = tf.exp(-0.5 * tf.square(x / tf.cast(sigma, tf.float32)))
    return pdf / tf.reduce_sum(pdf)


def gaussian_blur(image, sigma, size=BLUR_KERNEL):
    """torchvision's gaussian_blur of a uint8 image: reflected edges, float32 convolution, rounded.
    Separable here (two 1-D passes), which equals its 2-D kernel up to float32 rounding."""
    kernel = gaussian_kernel(sigma, size)
    half = size // 2
    padded = tf.pad(image, [[half, half], [half, half], [0, 0]], mode='REFLECT')
    channels = tf.transpose(padded, [2, 0, 1])[..., None]  # [3, H, W, 1]
    rows = tf.nn.conv2d(channels, tf.reshape(kernel, [size, 1, 1, 1]), 1, 'VALID')
    both = tf.nn.conv2d(rows, tf.reshape(kernel, [1, size, 1, 1]), 1, 'VALID')
    blurred = tf.transpose(both[..., 0], [1, 2, 0])
    return tf.clip_by_value(tf.round(blurred), 0.0, 255.0)  # torch.round: half to even, as tf.round


def random_gaussian_blur(image, key, prob):
    """timm's RandomApply([GaussianBlur(23)], p=prob): sigma ~ U(0.1, 2.0) when applied."""
    apply_key, sigma_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    sigma = tf.random.stateless_uniform([], sigma_key, *BLUR_SIGMA)
    apply = tf.random.stateless_uniform([], apply_key) < prob
    return tf.cond(apply, lambda: gaussian_blur(image, sigma), lambda: image)


def jitter_disabled(auto_augment) -> bool:
    """timm drops the colour jitter under --aa unless the policy's name holds '3a' (3-Augment)."""
    return bool(auto_augment) and '3a' not in auto_augment


def train_colors(image, key, cfg):
    """timm's colour stage of the train transform on a uint8 image: ColorJitter (cfg.color_jitter, with
    cfg.color_jitter_prob; none under cfg.auto_augment, see `jitter_disabled`), RandomGrayscale
    (cfg.grayscale_prob), Gaussian blur (cfg.gaussian_blur_prob). Only the enabled ops are in the graph."""
    ranges = jitter_ranges(cfg.color_jitter) if cfg.color_jitter else (None,) * 4
    if jitter_disabled(cfg.auto_augment):
        ranges = (None,) * 4
    jitter_on = any(r is not None for r in ranges)
    if not (jitter_on or cfg.grayscale_prob or cfg.gaussian_blur_prob):
        return image
    jitter_key, grey_key, blur_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
    if jitter_on:  # the compiled jitter takes and gives uint8
        image = color_jitter(image, jitter_key, ranges, cfg.color_jitter_prob)
    if not (cfg.grayscale_prob or cfg.gaussian_blur_prob):
        return image
    pixels = tf.cast(image, tf.float32)
    if cfg.grayscale_prob:
        pixels = random_grayscale(pixels, grey_key, cfg.grayscale_prob)
    if cfg.gaussian_blur_prob:
        pixels = random_gaussian_blur(pixels, blur_key, cfg.gaussian_blur_prob)
    return tf.cast(pixels, tf.uint8)


def config_checks(cfg, interpolations) -> list:
    """(ok, message) for the DataConfig fields of timm's default augmentation (the CLI checks them earlier)."""
    probabilities = (cfg.vflip, cfg.grayscale_prob, cfg.gaussian_blur_prob, cfg.color_jitter_prob or 0.0)
    return [
        (
            all(0 <= p <= 1 for p in probabilities),
            '--vflip, --color-jitter-prob, --grayscale-prob and --gaussian-blur-prob must be probabilities in [0, 1]',
        ),
        (len(cfg.color_jitter) in (0, 1, 3, 4), f'--color-jitter takes 1, 3 or 4 values, got {cfg.color_jitter}'),
        (
            cfg.train_interpolation in (None, '', 'random', *interpolations),
            f'--train-interpolation must be random or one of {"/".join(interpolations)}, '
            f'got {cfg.train_interpolation!r}',
        ),
        (cfg.aug_repeats >= 0, f'--aug-repeats must be >= 0, got {cfg.aug_repeats}'),
    ]
