"""timm's eval crop modes (validate.py --crop-mode, --crop-border-pixels; transforms_imagenet_eval), evaluation
only. With scale = floor(img_size / crop_pct):

- center (the default): resize the short side to scale, centre crop img_size (transforms.eval_transform);
- squash: resize both sides to scale (the aspect ratio is not kept), centre crop img_size;
- border: resize the long side to scale (ResizeKeepRatio longest=1), then CenterCropOrPad to img_size, padding
  with the mean colour (round(255 * mean), one value per channel);
- crop_border_pixels N: first trim N pixels off every edge (TrimBorder). Where an image is not larger than 2N,
  timm fails on it; here the middle pixel(s) along that side stay.

Without a border and in centre mode `eval_image` is transforms.eval_transform itself, which decodes and resizes only
the window under the crop; the others decode and resize the (trimmed) image whole, then crop, as timm.
"""

import math

import tensorflow as tf  # already imported, after triton, by jax_ema.data

from jax_ema.data import transforms
from jax_ema.validate_options import CROP_MODES


def config_checks(cfg) -> list:
    """(ok, message) pairs for check_config."""
    mode, border = getattr(cfg, 'crop_mode', 'center'), getattr(cfg, 'crop_border_pixels', 0)
    return [
        (mode in CROP_MODES, f'--crop-mode must be one of {", ".join(CROP_MODES)}, got {mode!r}'),
        (isinstance(border, int) and border >= 0, f'--crop-border-pixels must be an integer >= 0, got {border!r}'),
    ]


def eval_image(source, cfg, decoded=False):
    """cfg's eval transform (cfg.crop_mode, cfg.crop_border_pixels) of encoded bytes or a `decoded` image."""
    mode, border = getattr(cfg, 'crop_mode', 'center'), getattr(cfg, 'crop_border_pixels', 0)
    if mode == 'center' and not border:
        return transforms.eval_transform(source, cfg, decoded)

    def trim(height, width):  # TrimBorder's box (at least the middle pixel kept)
        top, left = tf.minimum(border, (height - 1) // 2), tf.minimum(border, (width - 1) // 2)
        return top, left, height - 2 * top, width - 2 * left

    window, _, _ = (transforms.crop_window if decoded else transforms.decode_window)(source, trim)
    image = transforms.to_mode(window, cfg)
    shape = tf.shape(image)[:2]
    target, scale = cfg.img_size, math.floor(cfg.img_size / cfg.crop_pct)
    if mode == 'center':
        new_size, start = transforms.eval_geometry(shape[0], shape[1], target, cfg.crop_pct)
    elif mode == 'squash':
        new_size = tf.constant([scale, scale])
        start = tf.fill([2], int(round((scale - target) / 2.0)))  # torchvision's CenterCrop
    else:
        sides = tf.cast(shape, tf.float64)
        ratio = tf.reduce_max(sides / scale)
        new_size = tf.cast(tf.round(sides / ratio), tf.int32)  # round half to even, as Python's
        start = tf.cast(tf.round(tf.cast(tf.maximum(new_size - target, 0), tf.float64) / 2.0), tf.int32)
    size = tf.minimum(new_size, target)  # border mode: a side shorter than img_size is padded
    image = transforms.resize(
        image, new_size, cfg.interpolation
    )[  # whole, in Pillow's pass order
        start[0] : start[0] + size[0], start[1] : start[1] + size[1]
    ]
    if mode == 'border':
        image = _pad_to(image, target, size, [round(255 * m) for m in cfg.mean], getattr(cfg, 'channels', 3))
    return tf.ensure_shape(image, (target, target, getattr(cfg, 'channels', 3)))


def _pad_to(image, target, size, fill, channels):
    """CenterCropOrPad's padding of an image of `size` (each side <= target) to target x target: (target - n) // 2
    before, the rest after, filled with `fill` (one value per RGB channel; their mean for a grey image)."""
    before = (target - size) // 2
    paddings = tf.stack([before, target - size - before], axis=1)
    fill = fill if channels == len(fill) else [round(sum(fill) / len(fill))] * channels
    return tf.stack(
        [tf.pad(image[..., c], paddings, constant_values=tf.cast(fill[c], image.dtype)) for c in range(channels)], -1
    )
