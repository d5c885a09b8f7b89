"""Dataset parameters."""

from __future__ import annotations

import dataclasses

from jax_ema.flags import flag, non_negative


@dataclasses.dataclass(frozen=True)
class DataFlags:
    data: str | None = flag('data', None, 'dataset folder (omit to use the embedded digits)', ('data',), nargs='?')
    train_split: str = flag('data', 'train')
    val_split: str = flag('data', 'validation')
    val_split_fraction: float = flag('data', 0.2, 'held-out fraction when DATA has class folders but no split folders')
    workers: int | None = flag(
        'data',
        None,
        'threads decoding and augmenting images (default: sized to the host by tf.data)',
        ('-j', '--workers'),
    )
    verify_images: bool = flag(
        'data', False, 'decode every image once before training and stop at a bad one (default: skip it when read)'
    )


def check(c) -> None:
    non_negative(c, 'workers')
