"""The parity report's rows of whole training trajectories (test_trajectory) and its calibration rows: how
far timm is from itself."""

from parity_tests import test_trajectory
from parity_tests.report_format import log

QUANTITIES = {
    'loss': 'loss every step (relative)',
    'lr': 'lr of every update (relative)',
    'params': 'final params',
    'ema_params': 'final EMA params',
    'stats': 'final BN running stats',
    'ema_stats': 'final EMA BN running stats',
}


def cases_legend() -> str:
    """Markdown list of the trajectory cases (ResNet-18, 32x32, batch 8, 10 classes, label smoothing 0.1)."""
    lines = []
    for name, c in test_trajectory.CASES.items():
        sched = 'per-update' if c.sched_on_updates else 'per-epoch'
        eps = f', eps {c.opt_eps:g}' if c.opt_eps is not None else ''
        model = '' if c.model == test_trajectory.MODEL else f'{c.model}, '
        lines.append(
            f'- `{name}`: {model}{c.dtype}, {c.opt} lr {c.lr:g} weight decay {c.weight_decay:g}{eps}, EMA decay '
            f'{c.ema_decay:g}{" with warmup" if c.ema_warmup else ""}, {sched} cosine ({c.epochs} epochs x '
            f'{c.updates_per_epoch} updates, warmup {c.warmup_epochs} epoch), {c.steps} steps'
        )
    return '\n'.join(lines)


def trajectory_rows():
    rows = []
    for name, case in test_trajectory.CASES.items():
        log(f'  trajectory {name}')
        per_tensor = case.dtype == 'float64' if case.per_tensor is None else case.per_tensor
        scale = 'x max|tensor|' if per_tensor else 'x max|group|'
        for q, (err, where, bound) in test_trajectory.measure(name).items():
            what = QUANTITIES[q] + ('' if q in ('loss', 'lr') else f' ({scale})')
            rows.append((f'train_step trajectory `{name}`: {what}', bound, err, where))
    return rows


def calibration_rows():
    t = test_trajectory
    rows = []
    log('  timm roundoff floor adamw_f64')
    floor = t.timm_roundoff_floor('adamw_f64')
    rows.append(
        (
            '(timm vs timm) `adamw_f64` run, model in channels_last vs not: final params (x max|tensor|)',
            '-',
            *floor['params'],
        )
    )
    for label, name, changes in (
        ('`sgd_f32`', 'sgd_f32', {}),
        ('`adamw_f32` (eps 1e-4, 5 steps)', 'adamw_f32', {}),
        ('AdamW default eps, 1 step', 'adamw_f32', dict(opt_eps=None, steps=1)),
        ('AdamW default eps, 20 steps', 'adamw_f32', dict(opt_eps=None, steps=20)),
        ('AdamW eps 1e-4, 20 steps', 'adamw_f32', dict(steps=20)),
    ):
        log(f'  timm float32 gap: {label}')
        gap = t.timm_float32_gap(name, **changes)
        rows.append((f'(timm vs timm) float32 vs float64, {label}: final params (x max|group|)', '-', *gap['params']))
    return rows
