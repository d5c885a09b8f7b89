"""The parity report's rows of EMA math (test_ema_parity), lr schedules, optimizers and the loss
(test_optim_parity), each measured as the tests assert it."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.utils import ModelEmaV3

from jax_ema import ema, losses
from parity_tests import test_ema_parity, test_optim_parity

# --------------------------------------------------------------------------- EMA (test_ema_parity)


def ema_rows(num_steps: int | None = None):
    """EMA math rows; `num_steps` (default the tests' 1,000) shortens the trajectories (gpu_check --quick)."""
    t = test_ema_parity
    num_steps = num_steps or t.NUM_STEPS
    check_at = sorted({s for s in t.CHECK_AT if s < num_steps} | {num_steps})
    rows = []
    worst = {'float64': (0.0, ''), 'float32': (0.0, '')}
    for name, (decay, kwargs) in t.SCHEDULE_CONFIGS.items():
        cfg = ema.EmaConfig(decay=decay, **kwargs)
        timm_ema = ModelEmaV3(torch.nn.Linear(1, 1), decay=decay, **kwargs)
        expected = np.array([1.0 - timm_ema.get_decay(int(s)) for s in t.STEPS])
        step_size = jax.jit(functools.partial(ema.step_size, cfg))
        for dtype in ('float64', 'float32'):
            with jax.enable_x64(dtype == 'float64'):
                got = np.asarray(step_size(t.STEPS if dtype == 'float64' else t.STEPS.astype(np.int32)))
            err = float(np.max(np.abs(got.astype(np.float64) - expected) / expected))
            worst[dtype] = max(worst[dtype], (err, name))
    for dtype, bound in (('float64', 1e-12), ('float32', 1e-6)):
        err, name = worst[dtype]
        rows.append(
            (
                f'EMA step size 1 - decay(step) vs ModelEmaV3.get_decay, {len(t.SCHEDULE_CONFIGS)} '
                f'configs x {len(t.STEPS)} steps up to 1e6, {dtype}',
                bound,
                err,
                name,
            )
        )

    for dtype in ('float64', 'float32'):
        err_max, where = 0.0, ''
        for name, (decay, kwargs) in t.TRAJECTORY_CONFIGS.items():
            cfg = ema.EmaConfig(decay=decay, **kwargs)
            rng = np.random.default_rng(0)
            module = t.torch_module().to(t.torch_device(), getattr(torch, dtype))
            with jax.enable_x64(dtype == 'float64'):
                state = t.random_state(rng, module, dtype)
                t.load(module, state)
                timm_ema = ModelEmaV3(module, decay=decay, **kwargs)
                params, stats = t.split(module, state)
                ema_params, ema_stats = ema.init(params), ema.init(stats)
                update = jax.jit(functools.partial(ema.update, cfg))
                for step in range(1, num_steps + 1):
                    state = t.random_state(rng, module, dtype)
                    t.load(module, state)
                    timm_ema.update(module, step=step)
                    ema_params, ema_stats = update(ema_params, ema_stats, *t.split(module, state), step)
                    if step not in check_at:
                        continue
                    ours = {**ema.tree(ema_params), **ema.tree(ema_stats)}
                    for key, ref in timm_ema.module.state_dict().items():
                        ref, got = ref.cpu().numpy(), np.asarray(ours[key])
                        if np.issubdtype(ref.dtype, np.floating):
                            err = float(np.max(np.abs(got.astype(np.float64) - ref)) / np.max(np.abs(ref)))
                        else:
                            err = 0.0 if got == ref else float('inf')
                        if err > err_max:
                            err_max, where = err, f'{name}, {key}, step {step}'
        rows.append(
            (
                f'EMA of params + BN buffers vs ModelEmaV3, {len(t.TRAJECTORY_CONFIGS)} configs x '
                f'{num_steps} steps, {dtype} (x max|timm EMA| per tensor)',
                t.TOLERANCE[dtype],
                err_max,
                where,
            )
        )
    return rows


# --------------------------------------------------------------------------- optim (test_optim_parity)


def optim_rows():
    t = test_optim_parity
    rows = []
    err_max, where, epoch_mismatch = 0.0, '', 0
    for case in t.SCHEDULE_CASES:
        ours, expected, num_epochs, timm_epochs = t.schedule_vs_timm(case)
        ours = np.asarray(ours)
        epoch_mismatch += num_epochs != timm_epochs
        err = float(np.max(np.abs(ours - expected) / np.abs(expected)))
        if err > err_max:
            err_max, where = err, '-'.join(f'{k}={v}' for k, v in case.items())
    rows.append(
        (
            f'lr schedules vs timm scheduler stepped as train.py, {len(t.SCHEDULE_CASES)} configs, float64 (relative)',
            t.RTOL,
            err_max,
            where,
        )
    )
    rows.append(("lr schedules: num_epochs different from timm's (count)", 0, float(epoch_mismatch), ''))

    worst = {True: (0.0, ''), False: (0.0, '')}
    for name, changes in t.NOISE_CASES.items():
        case = {**t.RECIPE, **changes}
        expected, _ = t.timm_lrs(**case)
        for x64 in (True, False):
            ours, _ = t.our_lrs(case, len(expected), x64=x64)
            worst[x64] = max(worst[x64], (float(np.max(np.abs(ours - expected) / expected)), name))
    for x64, bound in ((True, t.RTOL), (False, 1e-6)):
        rows.append(
            (
                f'step schedule + lr noise (--lr-noise, --seed) vs timm stepped as train.py, '
                f'{len(t.NOISE_CASES)} configs incl. the mobilenetv3_large_100 recipe (600 epochs), '
                f'{"float64" if x64 else "float32"} (relative)',
                bound,
                *worst[x64],
            )
        )

    err_max, where = 0.0, ''
    for opt, lr, extra in t.OPT_CASES:
        err, step = optimizer_error(opt, lr, extra)
        if err > err_max:
            err_max, where = err, f'{opt} {extra or ""} step {step}'.replace('  ', ' ')
    rows.append(
        (
            f'optimizers vs timm create_optimizer_v2 ({", ".join(dict.fromkeys(o for o, _, _ in t.OPT_CASES))}; '
            f'{len(t.OPT_CASES)} configs), 20 '
            'steps + cosine warmup, float64 (|d| / (|timm| + 1e-3), i.e. rtol 1e-12 atol 1e-15)',
            t.RTOL,
            err_max,
            where,
        )
    )

    rng = np.random.default_rng(1)
    logits, labels = rng.normal(scale=3.0, size=(16, 10)), rng.integers(0, 10, size=16)
    err_max = 0.0
    for smoothing in (0.0, 0.1, 0.35):
        timm_loss = LabelSmoothingCrossEntropy(smoothing=smoothing)(
            torch.from_numpy(logits), torch.from_numpy(labels)
        ).item()
        with jax.enable_x64(True):
            ours = float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing=smoothing))
        err_max = max(err_max, abs(ours - timm_loss) / abs(timm_loss))
    rows.append(('label-smoothing cross entropy vs timm, smoothing 0 / 0.1 / 0.35, float64', t.RTOL, err_max, ''))
    return rows


def optimizer_error(opt, lr, extra):
    """test_optim_parity's optimizer check as a measurement: (largest error, its step)."""
    err_max, at = 0.0, 0
    for num_updates, our_lr, timm_lr, params, expected in test_optim_parity.optimizer_steps(opt, lr, extra):
        errs = [abs(our_lr - timm_lr) / timm_lr]
        for path, ours in jax.tree_util.tree_leaves_with_path(params):
            theirs = np.asarray(expected[path[0].key][path[1].key])
            errs.append(float(np.max(np.abs(np.asarray(ours) - theirs) / (np.abs(theirs) + 1e-3))))
        if max(errs) > err_max:
            err_max, at = max(errs), num_updates
    return err_max, at
