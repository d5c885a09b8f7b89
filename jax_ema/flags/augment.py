"""Augmentation and regularization parameters."""

from __future__ import annotations

import dataclasses

from jax_ema.errors import UserError
from jax_ema.flags import below_one, flag, flag_name, non_negative, positive
from jax_ema.mixup import MODES

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
    drop_block: float | None = flag('augment', None, 'DropBlock rate (ResNets: stages 3 and 4, as timm)', metavar='PCT')
    mixup: float = flag('augment', 0.0, 'mixup alpha, mixup on if > 0 (mixup.py: on the device, in the step)')
    cutmix: float = flag('augment', 0.0, 'cutmix alpha, cutmix on if > 0')
    cutmix_minmax: tuple | None = flag(
        'augment', None, 'cutmix min/max box ratio, overrides --cutmix and turns cutmix on', nargs='+', type=float
    )
    mixup_prob: float = flag('augment', 1.0, 'probability of mixup or cutmix per batch, pair or row')
    mixup_switch_prob: float = flag('augment', 0.5, 'probability of cutmix rather than mixup when both are on')
    mixup_mode: str = flag('augment', 'batch', 'one draw per batch, pair or row (elem)', choices=MODES)
    mixup_off_epoch: int = flag('augment', 0, 'no mixing from this epoch on (0: never off)', metavar='N')
    bce_loss: bool = flag('augment', False, 'binary cross entropy loss (losses.py, as timm picks it)')
    bce_sum: bool = flag('augment', False, 'BCE: sum over the classes, then mean over the batch')
    bce_target_thresh: float | None = flag('augment', None, 'BCE: binarise the soft targets at this threshold')
    bce_pos_weight: float | None = flag('augment', None, 'BCE: weight of the positive term')
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
    from jax_ema.data_config import INTERPOLATIONS

    below_one(c, 'drop', 'drop_path', 'drop_block', 'drop_connect')
    non_negative(c, 'mixup', 'cutmix', 'mixup_off_epoch')
    positive(c, 'bce_pos_weight')
    for key in ('mixup_prob', 'mixup_switch_prob'):
        if not 0.0 <= getattr(c, key) <= 1.0:
            raise UserError(f'--{key.replace("_", "-")} must be in [0, 1], got {getattr(c, key)}')
    if c.cutmix_minmax is not None and not (
        len(c.cutmix_minmax) == 2 and 0.0 < c.cutmix_minmax[0] < c.cutmix_minmax[1] <= 1.0
    ):
        raise UserError(f'--cutmix-minmax takes MIN MAX with 0 < MIN < MAX <= 1, got {list(c.cutmix_minmax)}')
    mixing = c.mixup > 0 or c.cutmix > 0 or c.cutmix_minmax is not None
    if mixing and c.batch_size % 2:
        raise UserError(f'mixup/cutmix mix row i with row n-1-i of each batch: -b must be even, got {c.batch_size}')
    if c.train_crop_mode not in (None, '', 'rrc', 'rkrc', 'rkrr'):
        raise UserError(f"--train-crop-mode {c.train_crop_mode!r} is not one of rrc, rkrc, rkrr (timm's)")
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
    if c.aug_repeats and (c.epoch_repeats or c.train_batches_per_epoch):
        raise UserError(
            '--aug-repeats with --epoch-repeats or --train-batches-per-epoch is not built (timm builds one sampler '
            'or the other); give one of them'
        )
    if c.gaussian_blur_prob and c.img_size < 12:
        raise UserError(f'--gaussian-blur-prob needs --img-size >= 12 (its kernel is 23 px), got {c.img_size}')
