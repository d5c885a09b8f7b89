"""Augmentation and regularization parameters."""

from __future__ import annotations

import dataclasses

from jax_ema.errors import UserError
from jax_ema.flags import below_one, flag, flag_name, non_negative

_PROBABILITIES = ('vflip', 'color_jitter_prob', 'grayscale_prob', 'gaussian_blur_prob')


@dataclasses.dataclass(frozen=True)
class AugmentFlags:
    no_aug: bool = flag(
        'augment', False, "train on resize + centre crop only (timm's no-aug transform): overrides the train aug flags"
    )
    scale: tuple | None = flag('augment', None, nargs=2, type=float)
    ratio: tuple = flag('augment', (3 / 4, 4 / 3), nargs=2, type=float)
    hflip: float | None = flag('augment', None)
    vflip: float = flag('augment', 0.0, 'vertical flip probability', metavar='PCT')
    color_jitter: tuple | None = flag(
        'augment',
        None,
        'ColorJitter factors: one (brightness = contrast = saturation), three, or four (+ hue); '
        'off under --aa, as in timm',
        nargs='+',
        type=float,
        metavar='PCT',
    )
    color_jitter_prob: float | None = flag(
        'augment', None, 'probability of applying the colour jitter (default: always)', metavar='PCT'
    )
    grayscale_prob: float | None = flag('augment', None, 'probability of random greyscale', metavar='PCT')
    gaussian_blur_prob: float | None = flag(
        'augment', None, 'probability of a Gaussian blur (kernel 23, sigma 0.1 to 2)', metavar='PCT'
    )
    aa: str | None = flag('augment', None, "RandAugment as timm's, e.g. rand-m9-mstd0.5", metavar='NAME')
    aug_repeats: float = flag(
        'augment',
        0.0,
        "repeated augmentation: each image N times per epoch, copies on different devices (timm's)",
        metavar='N',
    )
    reprob: float = flag('augment', 0.0, 'random erasing probability', metavar='PCT')
    remode: str = flag('augment', 'pixel', 'random erasing fill: const, rand or pixel')
    recount: int = flag('augment', 1, 'random erasing: at most this many boxes per image')
    smoothing: float = flag('augment', 0.1, 'label smoothing')
    train_interpolation: str | None = flag(
        'augment',
        None,
        "the train crop's filter: random (bilinear or bicubic per image), bilinear, bicubic, lanczos or box; "
        "'' for --interpolation's",
    )
    drop: float = flag('augment', 0.0, 'dropout rate before the classifier', metavar='PCT')
    drop_path: float | None = flag('augment', None, 'drop path (stochastic depth) rate', metavar='PCT')


def check(c) -> None:
    from jax_ema.data_config import INTERPOLATIONS

    below_one(c, 'drop', 'drop_path')
    if not 0.0 <= c.smoothing < 1.0:
        raise UserError(f'--smoothing must be in [0, 1), got {c.smoothing}; timm uses 0.1')
    for key in _PROBABILITIES:
        value = getattr(c, key)
        if value is not None and not 0.0 <= value <= 1.0:
            raise UserError(f'{flag_name(key)} must be a probability in [0, 1], got {value}')
    jitter = c.color_jitter if isinstance(c.color_jitter, (tuple, list)) else (c.color_jitter,)  # timm: a float
    jitter = () if jitter == (None,) else tuple(jitter)
    if len(jitter) not in (0, 1, 3, 4) or not all(v >= 0 for v in jitter):
        raise UserError(
            f'--color-jitter takes 1, 3 or 4 factors >= 0 (brightness, contrast, saturation, hue), got {jitter}'
        )
    if len(jitter) == 4 and jitter[3] > 0.5:
        raise UserError(f'--color-jitter: the hue factor must be in [0, 0.5], got {jitter[3]}')
    if c.train_interpolation not in (None, '', 'random', *INTERPOLATIONS):
        raise UserError(
            f'--train-interpolation {c.train_interpolation!r} is not supported; use random, '
            f"{', '.join(INTERPOLATIONS)} or '' (the data config's)"
        )
    non_negative(c, 'aug_repeats')
    if c.gaussian_blur_prob and c.img_size < 12:
        raise UserError(f'--gaussian-blur-prob needs --img-size >= 12 (its kernel is 23 px), got {c.img_size}')
