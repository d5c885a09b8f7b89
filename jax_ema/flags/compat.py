"""timm train.py options that mean nothing in JAX: accepted, so that a pasted timm command runs, and each one
given is named in one line at the start (`notes`) with what it maps to here or why it has no effect.

Only options that cannot change the numbers are here (checked against timm's train.py): layout, loader,
compiler, launcher and logging switches, and the BatchNorm synchronisation that the global-batch step already
does. Options that would change results and are not built stay refused (argparse: unknown option).
"""

from __future__ import annotations

import dataclasses

from jax_ema.flags import flag

_NO_RESULTS = 'results are the same either way'
_NO_WANDB = 'wandb logging is not built (summary.csv, TensorBoard and results.json hold the metrics)'


@dataclasses.dataclass(frozen=True)
class CompatFlags:
    channels_last: bool = flag('compat', False, 'no effect: the models here are NHWC (channels last) already')
    pin_mem: bool = flag('compat', False, 'no effect: tf.data feeds the device (no torch DataLoader)')
    no_prefetcher: bool = flag(
        'compat', False, 'maps to: random erasing before mixup, as timm without its prefetcher (default: after it)'
    )
    use_multi_epochs_loader: bool = flag('compat', False, 'no effect: the tf.data pipeline persists across epochs')
    torchscript: bool = flag('compat', False, 'no effect: XLA compiles the step (jax.jit)')
    torchcompile: str | None = flag(
        'compat', None, 'no effect: XLA compiles the step (jax.jit)', nargs='?', const='inductor', metavar='BACKEND'
    )
    torchcompile_mode: str | None = flag('compat', None, 'no effect: XLA compiles the step', metavar='MODE')
    fuser: str = flag('compat', '', 'no effect: XLA fuses the step')
    sync_bn: bool = flag(
        'compat', False, 'what happens here anyway: BatchNorm statistics are over the global batch (all devices)'
    )
    dist_bn: str = flag(
        'compat', 'reduce', 'no effect: BatchNorm running statistics are the same on every device (global batch)'
    )
    no_ddp_bb: bool = flag('compat', False, 'no effect: no DDP buffers to broadcast (one global-batch step)')
    synchronize_step: bool = flag('compat', False, f'no effect: a device sync per step ({_NO_RESULTS})')
    local_rank: int = flag(
        'compat',
        0,
        'no effect: the process comes from --process-id or the environment',
        ('--local_rank', '--local-rank'),
    )
    device_modules: tuple | None = flag(
        'compat', None, 'no effect: JAX finds its backends', nargs='+', metavar='MODULE'
    )
    log_wandb: bool = flag('compat', False, f'no effect: {_NO_WANDB}')
    wandb_project: str | None = flag('compat', None, f'no effect: {_NO_WANDB}')
    wandb_tags: tuple = flag('compat', (), f'no effect: {_NO_WANDB}', nargs='+')
    wandb_resume_id: str = flag('compat', '', f'no effect: {_NO_WANDB}')


def notes(c) -> list[str]:
    """One note per compat option set away from its default: '--flag: what it means here'."""
    lines = []
    for field in dataclasses.fields(CompatFlags):
        if getattr(c, field.name) != field.default:
            name = (field.metadata['flags'] or (f'--{field.name.replace("_", "-")}',))[0]
            lines.append(f'{name}: {field.metadata["help"]}')
    return lines


def check(c) -> None:
    del c  # any value is accepted: none changes the results
