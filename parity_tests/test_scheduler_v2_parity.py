"""jax_ema's lr schedules and lr noise vs timm's own create_scheduler_v2, stepped as timm's train.py steps it,
in float64.

Every float64 check runs inside `with jax.enable_x64(True):`, so x64 never leaks into other tests. timm's
schedulers only do arithmetic on Python floats.
"""

import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

import timm_gaps
from jax_ema import lr_noise, optim

RTOL = 1e-12


# --------------------------------------------------------------------------- schedules


def timm_lrs(
    sched,
    lr,
    epochs,
    upe,
    warmup_epochs,
    warmup_lr,
    min_lr,
    sched_on_updates,
    decay_epochs,
    decay_rate,
    cooldown_epochs,
    warmup_prefix,
    lr_noise=None,
    lr_noise_pct=0.67,
    lr_noise_std=1.0,
    seed=42,
    **extra,
):
    """lr on the optimizer at each update of a timm train.py run, and timm's num_epochs.

    Stepped as train.py does: scheduler built from `scheduler_kwargs(args)` with updates_per_epoch,
    `step_update(num_updates)` after every optimizer update, `step(epoch + 1, metric)` at epoch end.
    `extra`: more of train.py's args (lr_cycle_mul, decay_milestones, ...) over its defaults.
    """
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=lr)
    args = argparse.Namespace(
        sched=sched,
        epochs=epochs,
        decay_epochs=decay_epochs,
        warmup_epochs=warmup_epochs,
        cooldown_epochs=cooldown_epochs,
        decay_rate=decay_rate,
        min_lr=min_lr,
        warmup_lr=warmup_lr,
        warmup_prefix=warmup_prefix,
        sched_on_updates=sched_on_updates,
        lr_noise=lr_noise,
        lr_noise_pct=lr_noise_pct,
        lr_noise_std=lr_noise_std,
        lr_cycle_mul=1.0,
        lr_cycle_decay=0.5,
        lr_cycle_limit=1,
        lr_k_decay=1.0,
        seed=seed,
        eval_metric='top1',
    )
    vars(args).update(extra)
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=upe)
    lrs, num_updates = [], 0
    for epoch in range(num_epochs):
        for _ in range(upe):
            lrs.append(optimizer.param_groups[0]['lr'])  # the lr this update uses
            num_updates += 1
            if scheduler is not None:
                scheduler.step_update(num_updates=num_updates, metric=1.0)
        if scheduler is not None:
            scheduler.step(epoch + 1, 1.0)
    return np.array(lrs, np.float64), num_epochs


SCHEDULE_CASES = [
    dict(sched=s, warmup_epochs=w, sched_on_updates=on, warmup_prefix=p, cooldown_epochs=c, decay_epochs=d)
    for s, w, on, p, c, d in itertools.product(
        ('cosine', 'step', 'constant', 'none'), (0, 2), (False, True), (False, True), (0, 2), (2, 2.5)
    )
    if not (s != 'step' and d == 2.5)  # fractional decay_epochs only matters for 'step'
]


def schedule_vs_timm(case):
    """(ours, timm's, our num_epochs, timm's num_epochs) for one SCHEDULE_CASES case, in float64."""
    kw = dict(lr=0.4, epochs=7, upe=5, warmup_lr=1e-3, min_lr=2e-4, decay_rate=0.5)
    expected, timm_epochs = timm_lrs(
        case['sched'],
        kw['lr'],
        kw['epochs'],
        kw['upe'],
        case['warmup_epochs'],
        kw['warmup_lr'],
        kw['min_lr'],
        case['sched_on_updates'],
        case['decay_epochs'],
        kw['decay_rate'],
        case['cooldown_epochs'],
        case['warmup_prefix'],
    )
    with jax.enable_x64(True):
        schedule, num_epochs = optim.create_lr_schedule(
            case['sched'],
            kw['lr'],
            kw['epochs'],
            kw['upe'],
            case['warmup_epochs'],
            kw['warmup_lr'],
            kw['min_lr'],
            sched_on_updates=case['sched_on_updates'],
            decay_epochs=case['decay_epochs'],
            decay_rate=kw['decay_rate'],
            cooldown_epochs=case['cooldown_epochs'],
            warmup_prefix=case['warmup_prefix'],
        )
        ours = jax.jit(schedule)(jnp.arange(len(expected), dtype=jnp.int32))
    return ours, expected, num_epochs, timm_epochs


@pytest.mark.float64
@pytest.mark.parametrize('case', SCHEDULE_CASES, ids=lambda c: '-'.join(f'{k}={v}' for k, v in c.items()))
def test_schedule_matches_timm_stepped_like_train_py(case):
    if gap := timm_gaps.schedule(case['sched']):
        # only where the installed timm lacks the feature (timm_gaps.py says which, measured); never on timm 1.0.31
        pytest.skip(gap)
    ours, expected, num_epochs, timm_epochs = schedule_vs_timm(case)
    assert ours.dtype == jnp.float64
    assert num_epochs == timm_epochs
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=RTOL, atol=0)


# timm's mobilenetv3_large_100 recipe (--sched step --epochs 600 --decay-epochs 2.4 --decay-rate .973
# --warmup-lr 1e-6 --lr .064 --lr-noise 0.42 0.9, warmup 5 and seed 42 by default), and variants.
RECIPE = dict(
    sched='step',
    lr=0.064,
    epochs=600,
    upe=1,
    warmup_epochs=5,
    warmup_lr=1e-6,
    min_lr=0.0,
    sched_on_updates=False,
    decay_epochs=2.4,
    decay_rate=0.973,
    cooldown_epochs=0,
    warmup_prefix=False,
    lr_noise=(0.42, 0.9),
    lr_noise_pct=0.67,
    lr_noise_std=1.0,
    seed=42,
)
NOISE_CASES = {
    'mobilenetv3-recipe': {},
    'recipe-per-update': dict(epochs=60, upe=7, sched_on_updates=True),  # decay_t 16.8 updates
    'recipe-prefix-seed-pct-std': dict(warmup_prefix=True, seed=3, lr_noise_pct=0.2, lr_noise_std=0.5),
    'cosine-open-ended-per-update': dict(
        sched='cosine', epochs=30, upe=5, sched_on_updates=True, min_lr=1e-5, lr_noise=(0.5,), cooldown_epochs=2
    ),
    'constant-noise-from-0': dict(sched='constant', epochs=50, lr_noise=(0.0, 0.3), seed=-5),
}


def our_lrs(case, count, x64=True):
    with jax.enable_x64(x64):
        schedule, num_epochs = optim.create_lr_schedule(
            case['sched'],
            case['lr'],
            case['epochs'],
            case['upe'],
            case['warmup_epochs'],
            case['warmup_lr'],
            case['min_lr'],
            case['sched_on_updates'],
            case['decay_epochs'],
            case['decay_rate'],
            case['cooldown_epochs'],
            case['warmup_prefix'],
            case['lr_noise'],
            case['lr_noise_pct'],
            case['lr_noise_std'],
            case['seed'],
        )
        ours = jax.jit(schedule)(jnp.arange(count, dtype=jnp.int32))
        assert ours.dtype == (jnp.float64 if x64 else jnp.float32)
        return np.asarray(ours, np.float64), num_epochs


@pytest.mark.float64
@pytest.mark.parametrize('name', NOISE_CASES)
def test_step_schedule_and_lr_noise_match_timm(name):
    case = {**RECIPE, **NOISE_CASES[name]}
    if gap := timm_gaps.schedule(case['sched']) or (case['lr_noise_std'] != 1.0 and timm_gaps.noise_std()):
        # only where the installed timm lacks the feature (timm_gaps.py says which, measured); never on timm 1.0.31
        pytest.skip(gap)
    expected, timm_epochs = timm_lrs(**case)
    ours, num_epochs = our_lrs(case, len(expected))
    assert num_epochs == timm_epochs
    np.testing.assert_allclose(ours, expected, rtol=RTOL, atol=0)
    # float32 training: each epoch gets timm's lr (rounded), no decay step lands an epoch early or late.
    ours32, _ = our_lrs(case, len(expected), x64=False)
    np.testing.assert_allclose(ours32, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize('pct', [0.05, 0.002])
def test_noise_draws_match_timm_calculate_noise_including_long_redraws(pct):
    # pct 0.05: about half the t keep one of their first 16 draws; 0.002: ~1 draw in 600 is kept, so each
    # t runs through several Mersenne Twister regenerations.
    if gap := timm_gaps.noise_std():
        # only where the installed timm lacks the feature (timm_gaps.py says which, measured); never on timm 1.0.31
        pytest.skip(gap)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, _ = create_scheduler_v2(  # any scheduler: the draws are the base class's
        optimizer, sched='step', num_epochs=10, noise=(0.0, 1.0), noise_pct=pct, noise_std=1.5, noise_seed=123
    )
    ts = np.arange(0, 2000, 97)
    expected = [scheduler._calculate_noise(int(t)) for t in ts]
    np.testing.assert_array_equal(lr_noise.noise(ts, 123, pct, 1.5), expected)
