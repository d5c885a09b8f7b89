"""Augmentation and regularization parameters."""

from __future__ import annotations

import dataclasses

from jax_ema.errors import UserError
from jax_ema.flags import below_one, flag


@dataclasses.dataclass(frozen=True)
class AugmentFlags:
    scale: tuple | None = flag('augment', None, nargs=2, type=float)
    ratio: tuple = flag('augment', (3 / 4, 4 / 3), nargs=2, type=float)
    hflip: float | None = flag('augment', None)
    aa: str | None = flag('augment', None, "RandAugment as timm's, e.g. rand-m9-mstd0.5", metavar='NAME')
    reprob: float = flag('augment', 0.0, 'random erasing probability', metavar='PCT')
    remode: str = flag('augment', 'pixel', 'random erasing fill: const, rand or pixel')
    recount: int = flag('augment', 1, 'random erasing: at most this many boxes per image')
    smoothing: float = flag('augment', 0.1, 'label smoothing')
    drop: float = flag('augment', 0.0, 'dropout rate before the classifier', metavar='PCT')
    drop_path: float | None = flag('augment', None, 'drop path (stochastic depth) rate', metavar='PCT')
    # timmrest: timm's train crop mode and its deprecated drop connect
    train_crop_mode: str | None = flag(
        'augment',
        None,
        'train crop: rrc (RandomResizedCrop), rkrc/rkrr (ResizeKeepRatio + center/random crop or pad) (default: rrc)',
        metavar='MODE',
    )
    drop_connect: float | None = flag(
        'augment',
        None,
        'deprecated in timm, whose train.py no longer reads it: no effect; use --drop-path',
        metavar='PCT',
    )


def check(c) -> None:
    below_one(c, 'drop', 'drop_path', 'drop_connect')
    if c.train_crop_mode not in (None, '', 'rrc', 'rkrc', 'rkrr'):
        raise UserError(f"--train-crop-mode {c.train_crop_mode!r} is not one of rrc, rkrc, rkrr (timm's)")
    if not 0.0 <= c.smoothing < 1.0:
        raise UserError(f'--smoothing must be in [0, 1), got {c.smoothing}; timm uses 0.1')
