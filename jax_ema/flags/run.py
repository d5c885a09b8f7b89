"""Miscellaneous parameters: seed, run folder, logging, checkpoints and resume."""

from __future__ import annotations

import dataclasses

from jax_ema.errors import UserError
from jax_ema.flags import flag, non_negative, positive


@dataclasses.dataclass(frozen=True)
class RunFlags:
    device: str = flag(
        'run',
        '',
        "device to compute on, as timm's --device: cpu, cuda (or gpu), tpu (default: JAX picks; GPU/TPU if any)",
        metavar='DEVICE',
    )
    seed: int = flag('run', 42)
    output: str = flag('run', '', 'parent folder of the run folders (default: ./output/train)')
    experiment: str = flag('run', '', 'run folder name')
    log_interval: int = flag('run', 50)
    val_interval: int = flag('run', 1, 'validate and checkpoint every N epochs (and after the last)', metavar='N')
    recovery_interval: int = flag('run', 0, 'save a recovery checkpoint every N updates (0: off)')
    resume: str | None = flag(
        'run',
        None,
        'resume from a run folder, its checkpoints/ folder or one step folder '
        '(weights, optimizer, EMA, update count, data position)',
        metavar='CHECKPOINT',
    )
    no_resume_opt: bool = flag('run', False, 'do not restore the optimizer state when resuming')
    checkpoint_hist: int = flag('run', 10, 'keep this many best checkpoints (and the last)')
    eval_metric: str = flag('run', 'top1', choices=('top1', 'top5', 'loss'))
    # timmrest
    save_images: bool = flag(
        'run',
        False,
        'save each logged training batch (as augmented, before normalising) as a PNG grid in the run folder',
    )
    tta: int = flag(
        'run', 0, "timm's test-time augmentation factor; 0 or 1 (none) only, see docs/usage.md", metavar='N'
    )


def check(c) -> None:
    from jax_ema.device import CHOICES

    if c.device not in ('', *CHOICES):
        if c.device.partition(':')[0] in ('cuda', 'gpu') and c.device.partition(':')[2].isdigit():
            raise UserError(
                f'--device {c.device}: one process uses all the GPUs it sees here; pick GPU '
                f'{c.device.partition(":")[2]} with CUDA_VISIBLE_DEVICES={c.device.partition(":")[2]} and --device cuda'
            )
        raise UserError(f'--device {c.device!r} is not one of {", ".join(CHOICES)}; leave it out to let JAX pick')
    positive(c, 'log_interval', 'val_interval')
    non_negative(c, 'checkpoint_hist', 'recovery_interval')
    if c.tta not in (0, 1):
        raise UserError(
            f"--tta {c.tta} is not built: timm's train.py averages the logits of N neighbouring validation images "
            '(its loader makes no augmented copies); leave --tta out'
        )
