"""validate's evaluation options from timm's validate.py: --test-pool (test_time_pool.py), --retry
(validate_retry.py), --crop-mode and --crop-border-pixels (data/eval_crops.py); their flags and checks."""

from __future__ import annotations

import argparse

from jax_ema.errors import UserError

CROP_MODES = ('center', 'squash', 'border')  # timm's transforms_imagenet_eval crop_mode


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        '--crop-mode',
        default=None,
        metavar='MODE',
        help='center (default: resize the short side, crop), squash (resize both sides, crop) or border (resize the '
        'long side, pad with the mean colour), as timm',
    )
    p.add_argument(
        '--crop-border-pixels', type=int, default=None, metavar='N', help='first trim N pixels off every image edge'
    )
    p.add_argument(
        '--test-pool',
        action='store_true',
        help="timm's test-time pooling where the size is above the model's pretrained default (then crop_pct 1.0)",
    )
    p.add_argument(
        '--retry',
        action='store_true',
        help='on out-of-memory, retry with a smaller batch size, as timm (always on in a bulk validation)',
    )


def crop(mode: str | None, border_pixels: int | None) -> tuple[str, int]:
    """(crop_mode, crop_border_pixels) with timm's defaults (center, none), or a UserError."""
    mode = mode or 'center'
    if mode not in CROP_MODES:
        raise UserError(f'--crop-mode {mode!r} is not one of {", ".join(CROP_MODES)}; pick one of them')
    if border_pixels is not None and (not isinstance(border_pixels, int) or border_pixels < 0):
        raise UserError(f'--crop-border-pixels must be an integer >= 0, got {border_pixels!r}')
    return mode, border_pixels or 0
