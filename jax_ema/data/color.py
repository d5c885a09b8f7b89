"""timm's colour augmentations of the train transform (transforms_imagenet_train), on uint8 images as PIL does.

`color_jitter`: torchvision's ColorJitter on a PIL image (the ops in a random order, each factor uniform in
its range: brightness, contrast and saturation are PIL's ImageEnhance blends (image_ops.py), hue a shift of
PIL's HSV hue), applied with probability `prob` (timm's --color-jitter-prob; always when None).
`random_grayscale`: torchvision's RandomGrayscale (PIL's L, on all three channels). `random_gaussian_blur`:
timm's RandomApply(GaussianBlur(23, sigma ~ U(0.1, 2))), torchvision's float32 convolution with reflected
edges, rounded. Images are float32 [H, W, 3] holding whole numbers 0..255 (as image_ops.py; the jitter without
hue, compiled by XLA, takes uint8 too); every draw is a TF stateless op of the image's key.
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


def _rgb_to_hsv(image):
    """Pillow's RGB -> HSV (convert.c rgb2hsv): float32 ratios, hue and saturation truncated to 0..255."""
    r, g, b = tf.unstack(image, axis=-1)
    maxc = tf.reduce_max(image, axis=-1)
    minc = tf.reduce_min(image, axis=-1)
    grey = maxc == minc
    span = tf.where(grey, 1.0, maxc - minc)
    rc, gc, bc = (maxc - r) / span, (maxc - g) / span, (maxc - b) / span
    # Pillow's C: float ratios; `4.0 + gc - rc` in double, kept in a float h; fmod(h / 6.0 + 1.0, 1.0) in
    # double, kept in a float again. (Bit-exact over all 2^24 colours, both ways; docs/input.md.)
    rc, gc, bc = (tf.cast(c, tf.float64) for c in (rc, gc, bc))
    h = tf.where(r == maxc, bc - gc, tf.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = tf.cast(tf.cast(h, tf.float32), tf.float64)
    h = tf.math.floormod(h / 6.0 + 1.0, 1.0)
    h = tf.cast(tf.cast(h, tf.float32), tf.float64)
    s = tf.cast(span / tf.where(grey, 1.0, maxc), tf.float64)
    hue = tf.where(grey, 0.0, tf.minimum(tf.floor(h * 255.0), 255.0))
    sat = tf.where(grey, 0.0, tf.minimum(tf.floor(s * 255.0), 255.0))
    return hue, sat, tf.cast(maxc, tf.float64)


def _round_half_away(x):
    return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


def _hsv_to_rgb(h, s, v):
    """Pillow's HSV -> RGB (convert.c hsv2rgb), float64 where its C uses double, float32 where float."""
    sector = tf.floor(h * 6.0 / 255.0)
    f = tf.cast(tf.cast(h * 6.0 / 255.0 - sector, tf.float32), tf.float64)
    fs32 = tf.cast(s / 255.0, tf.float32)
    fs = tf.cast(fs32, tf.float64)
    p = _round_half_away(v * (1.0 - fs))
    q = _round_half_away(v * (1.0 - tf.cast(fs32 * tf.cast(f, tf.float32), tf.float64)))
    t = _round_half_away(v * (1.0 - fs * (1.0 - f)))
    sector = tf.cast(sector, tf.int32) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = [tf.zeros_like(v)] * 3
    for i, channels in enumerate(choices):
        rgb = [tf.where(sector == i, c, acc) for c, acc in zip(channels, rgb)]
    rgb = tf.stack(rgb, axis=-1)
    return tf.cast(tf.where((s == 0)[..., None], v[..., None], tf.clip_by_value(rgb, 0.0, 255.0)), tf.float32)


def hue(image, factor):
    """torchvision's adjust_hue on a PIL image: to HSV, hue += int(factor * 255) (wrapping in 8 bits), back."""
    h, s, v = _rgb_to_hsv(image)
    shift = tf.cast(tf.cast(tf.cast(factor, tf.float64) * 255.0, tf.int32), tf.float64)  # truncated toward 0
    return _hsv_to_rgb(tf.math.floormod(h + shift, 256.0), s, v)


def jitter(image, order, factors, ranges):
    """torchvision ColorJitter.forward: the ops in `order` (ids 0..3: brightness, contrast, saturation,
    hue) at `factors`; ops whose range is None are skipped. Without hue (timm's default): one XLA-compiled
    call (`_jitter_compiled`); the image comes back in its dtype (uint8 or float32 whole numbers)."""
    if all(r is None for r in ranges):
        return image
    if ranges[3] is None:
        factors = tf.stack([tf.cast(f if r is not None else 1.0, tf.float32) for f, r in zip(factors[:3], ranges)])
        kept = tf.boolean_mask(order, order < 3)  # the order of brightness, contrast, saturation
        permutation = kept[0] * 2 + tf.cast(kept[1] > kept[2], kept.dtype)  # its rank among the 6: PERMUTATIONS
        return _jitter_compiled(image, tf.cast(permutation, tf.int32), factors, tf.zeros([], tf.int32))
    return jitter_kernels(image, order, factors, ranges)


def jitter_kernels(image, order, factors, ranges):
    """`jitter` with TensorFlow's kernels (hue included), on float32 whole numbers."""
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
    PIL's ImageEnhance: exactly the float32 arithmetic of image_ops.py, fused by XLA into ~2 passes (~2x cheaper
    than TensorFlow's kernels). `zero` (a runtime 0) keeps each product apart from the sum after it (`_apart`)."""
    pixels = tf.cast(image, tf.float32)
    count = tf.cast(tf.size(pixels) // 3, tf.float64)

    def contrast(x):  # image_ops.contrast: the greyscale's mean (an exact float64 sum), rounded
        mean = tf.floor(tf.reduce_sum(tf.cast(image_ops.grayscale(x), tf.float64)) / count + 0.5)
        return blend(tf.cast(mean, tf.float32), x, factors[1], zero)

    ops = (
        lambda x: tf.minimum(tf.floor(factors[0] * x), 255.0),  # blend with black: 0 + factor * x, factor >= 0
        contrast,
        lambda x: blend(image_ops.grayscale(x), x, factors[2], zero),
    )

    def branch(permutation):
        def run():
            x = pixels
            for op in permutation:
                x = ops[op](x)
            return tf.cast(x, image.dtype)

        return run

    return tf.switch_case(permutation, [branch(p) for p in PERMUTATIONS])


def blend(degenerate, image, factor, zero):
    """image_ops.blend (PIL's Image.blend) for XLA: the product kept apart from the sum (`_apart`)."""
    product = _apart(factor * (image - degenerate), zero)
    return tf.clip_by_value(tf.floor(degenerate + product), 0.0, 255.0)


def _apart(product, zero):
    """`product` unchanged (its bits xor a runtime 0). XLA lets LLVM fuse a multiply and the add after it into
    one FMA, rounded once, where PIL rounds the product to float32 first: for ~1 factor in 500 that moved up to
    127 of the 65,536 pairs of levels by 1 (tests/test_color.py). Through integer ops it cannot be fused."""
    return tf.bitcast(tf.bitwise.bitwise_xor(tf.bitcast(product, tf.int32), zero), tf.float32)


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
    if jitter_on and ranges[3] is None:  # the compiled jitter takes and gives uint8
        image = color_jitter(image, jitter_key, ranges, cfg.color_jitter_prob)
        jitter_on = False
    if not (jitter_on or cfg.grayscale_prob or cfg.gaussian_blur_prob):
        return image
    pixels = tf.cast(image, tf.float32)
    if jitter_on:
        pixels = color_jitter(pixels, jitter_key, ranges, cfg.color_jitter_prob)
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
