"""Augmentation and regularization parameters."""

from __future__ import annotations

import dataclasses

from jax_ema.errors import UserError
from jax_ema.flags import below_one, flag, non_negative, positive
from jax_ema.mixup import MODES


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


def check(c) -> None:
    below_one(c, 'drop', 'drop_path', 'drop_block')
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
    if not 0.0 <= c.smoothing < 1.0:
        raise UserError(f'--smoothing must be in [0, 1), got {c.smoothing}; timm uses 0.1')
