"""Learning rate schedule parameters (schedule.py, lr_noise.py)."""

from __future__ import annotations

import dataclasses

from jax_ema import lr_noise
from jax_ema.flags import flag, non_negative, positive


@dataclasses.dataclass(frozen=True)
class ScheduleFlags:
    sched: str = flag('schedule', 'cosine')
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
    warmup_lr: float = flag('schedule', 1e-5)
    min_lr: float = flag('schedule', 0.0)
    epochs: int | None = flag('schedule', None)
    decay_epochs: float = flag('schedule', 90)
    warmup_epochs: int | None = flag('schedule', None)
    cooldown_epochs: int = flag('schedule', 0)
    warmup_prefix: bool = flag('schedule', False)
    decay_rate: float = flag('schedule', 0.1, flags=('--decay-rate', '--dr'))


def check(c) -> None:
    positive(c, 'epochs')
    non_negative(c, 'lr', 'lr_base', 'warmup_lr', 'min_lr', 'warmup_epochs', 'cooldown_epochs')
    lr_noise.check(c.lr_noise, c.lr_noise_pct, c.lr_noise_std)
