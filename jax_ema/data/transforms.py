"""Per-example transforms to uint8 [img_size, img_size, 3]: timm's train (crop, flips, RandAugment, colours) and eval.

Only the pixels used are decoded: the random-resized-crop window in training, the window under the
centre crop in evaluation (`tf.io.decode_and_crop_jpeg`; PNG is decoded whole and sliced). Normalising
and random erasing happen on the device, in the jitted steps (jax_ema/device_input.py), as after timm's
prefetcher. Resizing is PIL's (antialiased when shrinking), which torchvision calls on timm's behalf.
"""

import dataclasses
import math

import tensorflow as tf  # already imported, after triton, by jax_ema.data

from jax_ema.data import box_resize, color, crop_modes, rand_augment as rand_augment_lib
from jax_ema.device_input import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: F401  (re-exported)


def augment_fill(mean) -> tuple:
    """timm's RandAugment fill colour (aa img_mean): the data config's normalisation mean in 0..255."""
    return tuple(min(255, round(255 * m)) for m in mean)


AUGMENT_FILL = augment_fill(IMAGENET_DEFAULT_MEAN)  # that of the ImageNet mean
# timm's interpolation names -> (ScaleAndTranslate's kernel, its radius = PIL's filter support; box: PIL's own).
KERNELS = {
    'bilinear': ('triangle', 1.0),
    'bicubic': ('keyscubic', 2.0),
    'lanczos': ('lanczos3', 3.0),
    'box': ('box', 0.5),
}


def _pillow_major() -> int:
    """The installed Pillow's major version (timm's resize is its): 13 (the newest behaviour) if none."""
    try:
        import PIL  # pylint: disable=g-import-not-at-top

        return int(PIL.__version__.split('.')[0])
    except (ImportError, ValueError):
        return 13


# Pillow >= 13 resamples the height first where it shrinks by more than twice as many pixels as the width
# (python-pillow/Pillow#9549), before that always the width first (measured: tests/test_data_transforms.py).
HEIGHT_FIRST_WHEN_SHRUNK_MORE = _pillow_major() >= 13
_MARGIN = 1  # decode_and_crop_jpeg upsamples chroma differently at the window's edges: decode 1 px more


def decode_window(data, window_fn):
    """(pixels, (top, left), (height, width)): the window `window_fn(height, width) -> (top, left, h, w)`
    of the encoded image `data` as uint8 RGB, where it lies, and the image's size. JPEG: only the window is
    decoded (accurate DCT, bit-identical to PIL); others (PNG): all, then sliced. Grey, RGBA and palette images
    become RGB."""

    def jpeg():
        shape = tf.io.extract_jpeg_shape(data)
        top, left, h, w = window_fn(shape[0], shape[1])
        top0, left0 = tf.maximum(top - _MARGIN, 0), tf.maximum(left - _MARGIN, 0)
        bottom, right = tf.minimum(top + h + _MARGIN, shape[0]), tf.minimum(left + w + _MARGIN, shape[1])
        wide = tf.io.decode_and_crop_jpeg(
            data, tf.stack([top0, left0, bottom - top0, right - left0]), channels=3, dct_method='INTEGER_ACCURATE'
        )
        return wide[top - top0 : top - top0 + h, left - left0 : left - left0 + w], tf.stack([top, left]), shape[:2]

    def other():  # PNG, and what PIL also reads under a .png/.jpg name: BMP, WebP, GIF (its first frame)
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        return crop_window(tf.ensure_shape(image, [None, None, 3]), window_fn)

    return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def crop_window(image, window_fn):
    """decode_window for an already decoded [H, W, 3] image."""
    shape = tf.shape(image)
    top, left, h, w = window_fn(shape[0], shape[1])
    return image[top : top + h, left : left + w], tf.stack([top, left]), shape[:2]


def to_luma(image):
    """PIL's convert('L') of a uint8 RGB image, exactly: (19595 R + 38470 G + 7471 B + 2^15) >> 16, [H, W, 1]."""
    rgb = tf.cast(image, tf.int32)
    weighted = rgb[..., 0:1] * 19595 + rgb[..., 1:2] * 38470 + rgb[..., 2:3] * 7471 + 0x8000
    return tf.cast(tf.bitwise.right_shift(weighted, 16), tf.uint8)


def to_mode(image, cfg):
    """The decoded RGB image in --input-img-mode (cfg.channels: 3 RGB, 1 L), as timm's reader converts it."""
    return to_luma(image) if getattr(cfg, 'channels', 3) == 1 else image


def round_to_uint8(averaged):
    """Rounds to uint8 an image of weighted averages of 0..255 (weights >= 0, summing to 1: no over- or
    undershoot beyond float error): one add and a truncating cast, as exact as floor(x + 0.5) + clipping
    here and cheaper (two fewer passes over the image)."""
    return tf.cast(averaged + 0.5, tf.uint8)


def resize_region(window, offset, in_size, out_size, start, size, interpolation):
    """Rows start[0]..+size[0] and columns start[1]..+size[1] of PIL's resize of an `in_size` image to
    `out_size`, computed from `window`, that image's pixels from `offset` on (see `resize_support`).

    PIL resamples one axis, rounds to uint8 (clipping), then the other (`pillow_height_first`), each with its filter
    widened by the shrink factor (antialiasing). For bilinear (no negative lobes) the float32 2-D resampling of
    TensorFlow's ScaleAndTranslate (the height first), rounded once, lands within one level of that; bicubic and
    lanczos overshoot, so they take PIL's two passes in PIL's order and its clipping between them. Each pass is one
    1-D call (`_resample_rows`), the other axis moved outwards by a transpose. Box is PIL's own (box_resize.py)."""
    if interpolation == 'box':
        height_first = pillow_height_first(in_size, out_size) if HEIGHT_FIRST_WHEN_SHRUNK_MORE else False
        return box_resize.resize_region(window, offset, in_size, out_size, start, size, height_first)
    kernel, _ = KERNELS[interpolation]
    scale = tf.cast(out_size, tf.float32) / tf.cast(in_size, tf.float32)
    offset, start = tf.cast(offset, tf.float32), tf.cast(start, tf.float32)
    translation = offset * scale - start
    size = tf.cast(size, tf.int32)
    if kernel == 'triangle':  # the 2-D op's arithmetic: the same floats, so the same pixels
        tall = _resample_rows(window, size[0], scale[0], translation[0], kernel)  # [out H, W, C]
        wide = _resample_rows(tf.transpose(tall, [1, 2, 0]), size[1], scale[1], translation[1], kernel)
        return tf.transpose(round_to_uint8(wide), [2, 0, 1])  # [out W, C, out H] -> [out H, out W, C]
    passes = lambda first: _two_passes(window, size, scale, translation, kernel, first)  # noqa: E731
    if not HEIGHT_FIRST_WHEN_SHRUNK_MORE:
        return passes(height_first=False)
    return tf.cond(pillow_height_first(in_size, out_size), lambda: passes(True), lambda: passes(False))


def pillow_height_first(in_size, out_size):
    """Whether Pillow (>= 13) resamples the height first: where it shrinks by more than twice as many pixels
    as the width (the width may grow)."""
    in_size, out_size = tf.cast(in_size, tf.int32), tf.cast(out_size, tf.int32)
    shrunk = in_size - out_size
    return (shrunk[0] > 0) & (shrunk[0] > 2 * shrunk[1])


def _two_passes(window, size, scale, translation, kernel, height_first):
    """PIL's two passes, each rounded and clipped to uint8: the width then the height, or the reverse."""
    if height_first:
        tall = _clip_to_uint8(_resample_rows(window, size[0], scale[0], translation[0], kernel))  # [out H, W, C]
        wide = _clip_to_uint8(_resample_rows(tf.transpose(tall, [1, 2, 0]), size[1], scale[1], translation[1], kernel))
        return tf.transpose(wide, [2, 0, 1])
    wide = _clip_to_uint8(_resample_rows(tf.transpose(window, [1, 2, 0]), size[1], scale[1], translation[1], kernel))
    return _clip_to_uint8(_resample_rows(tf.transpose(wide, [2, 0, 1]), size[0], scale[0], translation[0], kernel))


def _clip_to_uint8(resized):
    """PIL's rounding between and after its passes: to the nearest whole number, clipped to 0..255. Clipping
    x + 0.5 to [0, 255.5] and truncating is floor(x + 0.5) clipped, with one pass over the image fewer."""
    return tf.cast(tf.clip_by_value(resized + 0.5, 0.0, 255.5), tf.uint8)


def _resample_rows(image, length, scale, translation, kernel):
    """ScaleAndTranslate's resampling of axis 0 of an [N, ...] image to `length`, float32 [length, ...].

    The op resamples both axes of an [H, W, C] image, the width scalar per channel: that pass alone was ~2/3 of
    a bilinear resize, and cost as much as a real one where it changes nothing (scale 1). As a
    [1, N, 1, everything else] image the width is one pixel (a copy) and the height one vectorised pass over
    whole rows: the same sums in the same order, so the same floats. For the width, the caller transposes
    [H, W, C] -> [W, C, H] (channels moved too: TensorFlow's transpose costs ~1/3 of [W, H, C]'s in float32)."""
    shape = tf.shape(image)
    resized = tf.raw_ops.ScaleAndTranslate(
        images=tf.reshape(image, [1, shape[0], 1, -1]),
        size=tf.stack([length, 1]),
        scale=tf.stack([scale, 1.0]),
        translation=tf.stack([translation, 0.0]),
        kernel_type=kernel,
        antialias=True,
    )
    return tf.reshape(resized, tf.concat([[length], shape[1:]], 0))


def resize_support(in_size, out_size, start, size, interpolation):
    """(first, end): the input pixels along one axis that outputs start..start+size-1 of a resize from
    in_size to out_size read (one spare on each side), clipped to the image."""
    _, radius = KERNELS[interpolation]
    in_size = tf.cast(in_size, tf.float64)
    per_output = in_size / tf.cast(out_size, tf.float64)
    support = radius * tf.maximum(per_output, 1.0)
    start = tf.cast(start, tf.float64)
    first = tf.maximum(tf.floor((start + 0.5) * per_output - support) - 1, 0)
    end = tf.minimum(tf.math.ceil((start + size - 0.5) * per_output + support) + 1, in_size)
    return tf.cast(first, tf.int32), tf.cast(end, tf.int32)


def resize(image, size, interpolation='bilinear'):
    """The whole of PIL's resize of a decoded [H, W, 3] uint8 image to `size` = (height, width)."""
    shape = tf.shape(image)[:2]
    return resize_region(image, (0, 0), shape, size, (0, 0), size, interpolation)


def _resize_crop(crop, size, interpolation):
    """The crop resized to `size`. Enlarging with PIL's bilinear filter is plain bilinear interpolation
    (the filter is not widened), which TensorFlow's ResizeBilinear computes at a third of the cost."""
    shape = tf.shape(crop)[:2]
    general = lambda: resize_region(crop, (0, 0), shape, size, (0, 0), size, interpolation)  # noqa: E731
    if interpolation != 'bilinear':
        return general()

    def enlarge():
        return round_to_uint8(tf.image.resize(crop, size, method='bilinear', antialias=False))

    return tf.cond(tf.reduce_all(shape <= size), enlarge, general)


def random_resized_crop_box(key, height, width, scale, ratio):
    """(top, left, crop_height, crop_width) by timm's RandomResizedCropAndInterpolation.get_params.

    Ten tries of area ~ U(scale) * H * W and log aspect ~ U(log ratio); the first crop that fits wins,
    at a uniform offset. If none fits: a centre crop clamped to the ratio range. `key` seeds TF's
    stateless random ops, so the box is a pure function of it.
    """
    keys = tf.random.experimental.stateless_split(key, 3)
    h_img, w_img = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    area = tf.random.stateless_uniform([10], keys[0], scale[0], scale[1], tf.float64) * h_img * w_img
    aspect = tf.exp(tf.random.stateless_uniform([10], keys[1], math.log(ratio[0]), math.log(ratio[1]), tf.float64))
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


def train_transform(source, key, cfg, policy=None, decoded=False):
    """timm's train order on encoded bytes (or a `decoded` image): random-resized crop to img_size (at
    cfg.train_interpolation; 'random': bilinear or bicubic, evenly), horizontal and vertical flips
    (cfg.hflip, cfg.vflip), RandAugment `policy` (if any), then the colour ops (color.py: jitter, grayscale,
    blur). cfg.no_aug: timm's no-aug train transform instead (resize the short side, centre crop). uint8 out."""
    if cfg.no_aug:
        return eval_transform(source, dataclasses.replace(cfg, crop_pct=1.0), decoded)
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    augment_key = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(key, 1), 2)[
        0
    ]  # crop and flip draw as before
    interp_key, vflip_key, color_key = tf.unstack(  # draws added later: a key of their own
        tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(key, 2), 3)
    )

    def window_fn(height, width):
        return random_resized_crop_box(crop_key, height, width, cfg.scale, cfg.ratio)

    size = (cfg.img_size, cfg.img_size)
    interpolation = train_interpolation(cfg)

    def resize_to(image, out_size):  # 'random': timm's RandomResizedCropAndInterpolation, random.choice per image
        if interpolation != 'random':
            return resize_fn(image, out_size, interpolation)
        bicubic = tf.random.stateless_uniform([], interp_key) < 0.5
        return tf.cond(
            bicubic, lambda: resize_fn(image, out_size, 'bicubic'), lambda: resize_fn(image, out_size, 'bilinear')
        )

    if getattr(cfg, 'train_crop_mode', 'rrc') != 'rrc':  # --train-crop-mode rkrc / rkrr: the whole image
        image, _, _ = (crop_window if decoded else decode_window)(source, lambda h, w: (0, 0, h, w))
        image = to_mode(image, cfg)
        shape = tf.shape(image)
        new_size = crop_modes.keep_ratio_size(crop_key, shape[0], shape[1], cfg.img_size, cfg.scale, cfg.ratio)
        resize_fn = resize
        image = resize_to(image, tf.stack(new_size))
        image = crop_modes.crop_or_pad(
            image, tf.random.experimental.stateless_fold_in(crop_key, 1), cfg.img_size, cfg.train_crop_mode
        )
    else:
        crop, _, _ = (crop_window if decoded else decode_window)(source, window_fn)
        resize_fn = _resize_crop
        image = resize_to(to_mode(crop, cfg), size)
    flip = tf.random.stateless_uniform([], flip_key) < cfg.hflip
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    if cfg.vflip > 0:
        vflip = tf.random.stateless_uniform([], vflip_key) < cfg.vflip
        image = tf.cond(vflip, lambda: tf.reverse(image, [0]), lambda: image)
    if policy is not None:
        image = rand_augment_lib.rand_augment(image, augment_key, policy, augment_fill(cfg.mean), interpolation)
    channels = getattr(cfg, 'channels', 3)
    if channels == 1:  # an L image: the colour ops on its grey RGB copy give the same grey (exact), then back
        image = color.train_colors(tf.tile(image, [1, 1, 3]), color_key, cfg)[..., :1]
    else:
        image = color.train_colors(image, color_key, cfg)
    return tf.ensure_shape(image, (cfg.img_size, cfg.img_size, channels))


def train_interpolation(cfg) -> str:
    """The train crop's filter: cfg.train_interpolation, or (when empty or None) the data config's."""
    return cfg.train_interpolation or cfg.interpolation


def eval_geometry(height, width, img_size, crop_pct):
    """torchvision's Resize(floor(img_size / crop_pct)) + CenterCrop(img_size), as timm's eval: the
    resized (height, width) and the crop's (top, left) in it (round half to even, as torchvision)."""
    short_target = math.floor(img_size / crop_pct)
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    short = tf.minimum(h, w)
    # Resize(int): the short side -> target, the long side -> int(target * long / short).
    new_h = tf.where(height <= width, short_target, tf.cast(tf.floor(short_target * h / short), tf.int32))
    new_w = tf.where(width < height, short_target, tf.cast(tf.floor(short_target * w / short), tf.int32))
    top = tf.cast(tf.round(tf.cast(new_h - img_size, tf.float64) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - img_size, tf.float64) / 2), tf.int32)
    return tf.stack([new_h, new_w]), tf.stack([top, left])


def eval_transform(source, cfg, decoded=False):
    """timm's eval transform, uint8 out, decoding and resizing only the window under the centre crop.

    Each output pixel of PIL's resize reads only the input pixels under its filter, so resizing that
    window, placed where it lies, gives the very pixels of resizing the whole image and then cropping.
    """

    def geometry(height, width):
        new_size, crop_start = eval_geometry(height, width, cfg.img_size, cfg.crop_pct)
        return (
            new_size,
            crop_start,
            [
                resize_support((height, width)[a], new_size[a], crop_start[a], cfg.img_size, cfg.interpolation)
                for a in (0, 1)
            ],
        )

    def window_fn(height, width):
        (top, bottom), (left, right) = geometry(height, width)[2]
        return top, left, bottom - top, right - left

    window, offset, shape = (crop_window if decoded else decode_window)(source, window_fn)
    new_size, crop_start, _ = geometry(shape[0], shape[1])
    size = (cfg.img_size, cfg.img_size)
    image = resize_region(to_mode(window, cfg), offset, shape, new_size, crop_start, size, cfg.interpolation)
    return tf.ensure_shape(image, (cfg.img_size, cfg.img_size, getattr(cfg, 'channels', 3)))
