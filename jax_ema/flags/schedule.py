"""Learning rate schedule parameters (schedule.py, plateau.py, lr_noise.py)."""

from __future__ import annotations

import dataclasses

from jax_ema import lr_noise, plateau, schedule
from jax_ema.errors import UserError
from jax_ema.flags import flag, non_negative, positive


@dataclasses.dataclass(frozen=True)
class ScheduleFlags:
    sched: str = flag('schedule', 'cosine', f'one of {", ".join(schedule.SCHEDULE_NAMES)}', metavar='SCHEDULER')
    sched_on_updates: bool = flag('schedule', False)
    lr: float | None = flag('schedule', None, 'default: --lr-base scaled by the global batch (timm)')
    lr_base: float = flag('schedule', 0.1)
    lr_base_size: int = flag('schedule', 256)
    lr_base_scale: str = flag('schedule', '')
    lr_noise: tuple | None = flag(
        'schedule',
        None,
        'lr noise on (and off) points as fractions of --epochs, e.g. 0.42 0.9 (seeded by --seed)',
        nargs='+',
        type=float,
        metavar='PCT',
    )
    lr_noise_pct: float = flag('schedule', 0.67, 'lr noise limit (|noise| < PCT)')
    lr_noise_std: float = flag('schedule', 1.0, 'lr noise std-dev')
    lr_cycle_mul: float = flag('schedule', 1.0, 'cycle length multiplier (cosine, tanh, poly)', metavar='MULT')
    lr_cycle_decay: float = flag('schedule', 0.5, 'peak lr factor per cycle (cosine, tanh, poly)', metavar='MULT')
    lr_cycle_limit: int = flag('schedule', 1, 'number of cycles, restarts if > 1 (cosine, tanh, poly)', metavar='N')
    lr_k_decay: float = flag('schedule', 1.0, 'k-decay (cosine, poly)')
    warmup_lr: float = flag('schedule', 1e-5)
    min_lr: float = flag('schedule', 0.0)
    epochs: int | None = flag('schedule', None)
    start_epoch: int | None = flag(
        'schedule', None, "start at this epoch (its update count, lr and EMA step); overrides a resume's", metavar='N'
    )
    decay_milestones: tuple = flag(
        'schedule',
        (90, 180, 270),
        'epochs the multistep schedule decays at, increasing',
        nargs='+',
        type=int,
        metavar='MILESTONES',
    )
    decay_epochs: float = flag('schedule', 90)
    warmup_epochs: int | None = flag('schedule', None)
    cooldown_epochs: int = flag('schedule', 0)
    patience_epochs: int = flag('schedule', 10, 'epochs without improvement before the plateau schedule decays')
    warmup_prefix: bool = flag('schedule', False)
    # timmrest: the epoch's length
    epoch_repeats: float = flag(
        'schedule', 0.0, 'passes over the training set per epoch, fractional allowed (0 or 1: one)', metavar='N'
    )
    train_batches_per_epoch: int | None = flag(
        'schedule',
        None,
        'loader batches (of -b per device, before --grad-accum-steps) per epoch, the data wrapping around into '
        'the next pass (default: one pass)',
        flags=('--train-batches-per-epoch', '--train-steps-per-epoch'),
        metavar='N',
    )
    decay_rate: float = flag(
        'schedule', 0.1, 'step/multistep/plateau lr factor; poly: the power', flags=('--decay-rate', '--dr')
    )


def check(c) -> None:
    positive(c, 'epochs', 'train_batches_per_epoch')
    non_negative(c, 'epoch_repeats')
    if c.train_batches_per_epoch and c.train_batches_per_epoch % c.grad_accum_steps:
        raise UserError(
            f'--train-batches-per-epoch {c.train_batches_per_epoch} is not a multiple of --grad-accum-steps '
            f'{c.grad_accum_steps}; pass a multiple so that each epoch ends on a whole update'
        )
    non_negative(c, 'lr', 'lr_base', 'warmup_lr', 'min_lr', 'warmup_epochs', 'cooldown_epochs', 'start_epoch')
    if c.sched not in schedule.SCHEDULE_NAMES:
        raise UserError(f'unknown lr schedule {c.sched!r}; known: {", ".join(schedule.SCHEDULE_NAMES)}')
    schedule.check_cycles(c.lr_cycle_mul, c.lr_cycle_decay, c.lr_cycle_limit, c.lr_k_decay)
    schedule.check_milestones(c.decay_milestones)
    if c.sched == 'plateau':
        plateau.check(c.decay_rate, c.patience_epochs, c.sched_on_updates)
    else:
        non_negative(c, 'patience_epochs')
    lr_noise.check(c.lr_noise, c.lr_noise_pct, c.lr_noise_std)
