"""jax_ema.schedule and jax_ema.plateau vs timm's schedulers (create_scheduler_v2 as timm's train.py calls it).

Every lr is compared in float64 to 1e-12 (relative): the lr of each optimizer update for the cycle and step
schedules (cosine, tanh, poly with cycles and k-decay; step, multistep), with warmup, warmup prefix, cooldown,
noise and per-update stepping; the plateau schedule's lr of each epoch under a metric sequence, with skipped
validations (metric None) and a resume from its saved state in the middle.
"""

import itertools
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm.scheduler import create_scheduler_v2

from jax_ema import schedule as schedule_lib
from jax_ema.plateau import PlateauSchedule
from test_scheduler_v2_parity import RTOL, timm_lrs

BASE = dict(lr=0.4, epochs=7, upe=3, warmup_lr=1e-3, min_lr=2e-4, decay_epochs=2, decay_rate=0.5, cooldown_epochs=0)
CYCLES = {  # (lr_cycle_mul, lr_cycle_decay, lr_cycle_limit)
    'one': (1.0, 0.5, 1),
    'restarts': (1.0, 0.5, 3),
    'longer': (1.5, 0.7, 3),
    'shorter': (0.6, 0.9, 2),
}


def _case_id(case):
    return '-'.join(f'{k}={v}' for k, v in case.items())


# Each schedule and cycle setting under three mixes of k-decay, warmup (within or as a prefix), per-epoch or
# per-update stepping and cooldown; multistep under four.
MIXES = [  # (k_decay, warmup_epochs, sched_on_updates, warmup_prefix, cooldown_epochs)
    (1.0, 2, False, False, 2),
    (1.5, 2, True, True, 0),
    (1.5, 0, False, True, 2),
]
CASES = [
    dict(
        sched=s,
        cycles=c,
        k=k if s != 'tanh' else 1.0,
        warmup_epochs=w,
        sched_on_updates=on,
        warmup_prefix=p,
        cooldown_epochs=cd,
    )
    for s, c, (k, w, on, p, cd) in itertools.product(('cosine', 'tanh', 'poly'), CYCLES, MIXES)
] + [
    dict(sched='multistep', milestones=m, warmup_epochs=w, sched_on_updates=on, warmup_prefix=p)
    for m, (w, on, p) in itertools.product(((2, 5), (1, 3, 4, 20)), ((2, False, False), (2, True, True)))
]


def _settings(case, kw):
    """(the arguments ours and timm's share, by name, the cycle settings, the milestones) of a case."""
    args = dict(BASE, cooldown_epochs=case.get('cooldown_epochs', 0), **kw)
    shared = {k: args.pop(k) for k in ('lr', 'epochs', 'warmup_lr', 'min_lr', 'decay_epochs', 'decay_rate')}
    shared.update({k: case[k] for k in ('sched', 'warmup_epochs', 'sched_on_updates', 'warmup_prefix')})
    shared.update(cooldown_epochs=args['cooldown_epochs'])
    return shared, args, CYCLES[case.get('cycles', 'one')], case.get('milestones', (90, 180, 270))


def _ours(case, count, **kw):
    shared, args, (mul, decay, limit), milestones = _settings(case, kw)
    with jax.enable_x64(True):
        schedule, num_epochs = schedule_lib.create_lr_schedule(
            **shared,
            updates_per_epoch=args['upe'],
            noise=args.get('lr_noise'),
            noise_seed=args.get('seed', 42),
            decay_milestones=milestones,
            cycle_mul=mul,
            cycle_decay=decay,
            cycle_limit=limit,
            k_decay=case.get('k', 1.0),
        )
        ours = jax.jit(schedule)(jnp.arange(count, dtype=jnp.int32))
        assert ours.dtype == jnp.float64
        return np.asarray(ours), num_epochs


def _timm(case, **kw):
    shared, args, (mul, decay, limit), milestones = _settings(case, kw)
    return timm_lrs(
        **shared,
        upe=args['upe'],
        lr_noise=args.get('lr_noise'),
        seed=args.get('seed', 42),
        decay_milestones=list(milestones),
        lr_cycle_mul=mul,
        lr_cycle_decay=decay,
        lr_cycle_limit=limit,
        lr_k_decay=case.get('k', 1.0),
    )


@pytest.mark.float64
@pytest.mark.parametrize('case', CASES, ids=_case_id)
def test_lr_of_every_update_matches_timm(case):
    expected, timm_epochs = _timm(case)
    ours, num_epochs = _ours(case, len(expected))
    assert num_epochs == timm_epochs
    np.testing.assert_allclose(ours, expected, rtol=RTOL, atol=0)


NOISE_CASES = [
    dict(sched='tanh', cycles='restarts', warmup_epochs=2, sched_on_updates=False, warmup_prefix=True),
    dict(sched='poly', cycles='longer', k=2.0, warmup_epochs=1, sched_on_updates=True, warmup_prefix=False),
    dict(sched='multistep', milestones=(3, 6), warmup_epochs=0, sched_on_updates=False, warmup_prefix=False),
]


@pytest.mark.float64
@pytest.mark.parametrize('case', NOISE_CASES, ids=_case_id)
def test_noise_on_the_new_schedules_matches_timm(case):
    noise = dict(lr_noise=(0.3, 0.8), seed=7, epochs=12)
    expected, timm_epochs = _timm(case, **noise)
    ours, num_epochs = _ours(case, len(expected), **noise)
    assert num_epochs == timm_epochs
    np.testing.assert_allclose(ours, expected, rtol=RTOL, atol=0)


def test_poly_power_is_decay_rate_and_cycles_really_restart():
    # Assert the cases above exercise what they claim: restarts raise the lr again, poly's power matters.
    case = dict(sched='cosine', cycles='restarts', warmup_epochs=0, sched_on_updates=False, warmup_prefix=False)
    ours, _ = _ours(case, 7 * 3 * 3)
    assert np.sum(np.diff(ours) > 0) == 2  # two restarts
    poly = dict(case, sched='poly', cycles='one')
    assert not np.allclose(_ours(poly, 21, decay_rate=0.5)[0], _ours(poly, 21, decay_rate=2.0)[0])


# --------------------------------------------------------------------------- plateau

METRICS = [50.0, 60.0, 60.001, 59.0, 58.0, 61.0, None, 61.0, 60.0, None, 40.0, 30.0, 20.0, 20.0, 20.0, 19.0]


def _timm_plateau(epochs, warmup, mode, patience, noise=None, min_lr=0.0, decay_rate=0.5, metrics=METRICS):
    """timm's plateau lr of each epoch as train.py steps it: step(epoch + 1, metric) at each epoch end."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))], lr=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # timm deprecates its plateau scheduler
        scheduler, num_epochs = create_scheduler_v2(
            optimizer,
            sched='plateau',
            num_epochs=epochs,
            decay_rate=decay_rate,
            patience_epochs=patience,
            warmup_epochs=warmup,
            warmup_lr=1e-3,
            min_lr=min_lr,
            plateau_mode=mode,
            noise=noise,
            noise_seed=3,
        )
    lrs = []
    for epoch in range(num_epochs):
        lrs.append(optimizer.param_groups[0]['lr'])
        scheduler.step(epoch + 1, metrics[epoch % len(metrics)])
    return lrs, num_epochs


def _plateau(epochs, warmup, mode, patience, noise=None, min_lr=0.0, decay_rate=0.5):
    schedule, num_epochs = schedule_lib.create_lr_schedule(
        'plateau',
        0.3,
        epochs,
        5,
        warmup,
        1e-3,
        min_lr,
        decay_rate=decay_rate,
        noise=noise,
        noise_seed=3,
        patience_epochs=patience,
        plateau_mode=mode,
    )
    assert isinstance(schedule, PlateauSchedule)
    return schedule, num_epochs


PLATEAU_CASES = {
    'max-patience-1': dict(epochs=16, warmup=0, mode='max', patience=1),
    'max-warmup-patience-0': dict(epochs=16, warmup=3, mode='max', patience=0),
    'min-patience-2-floor': dict(epochs=32, warmup=2, mode='min', patience=2, min_lr=0.02),
    'min-noise': dict(epochs=24, warmup=1, mode='min', patience=1, noise=(0.25, 0.75)),
    'max-noise-open-ended-floor': dict(
        epochs=16, warmup=0, mode='max', patience=1, noise=(0.5,), decay_rate=0.0, min_lr=0.05
    ),
}


@pytest.mark.parametrize('name', PLATEAU_CASES)
def test_plateau_lr_of_every_epoch_matches_timm_under_a_metric_sequence(name):
    case = PLATEAU_CASES[name]
    expected, timm_epochs = _timm_plateau(**case)
    schedule, num_epochs = _plateau(**case)
    assert num_epochs == timm_epochs
    ours = []
    for epoch in range(num_epochs):
        ours.append(schedule(epoch * 5 + 2))  # any update of the epoch
        schedule.step(epoch + 1, METRICS[epoch % len(METRICS)])
    np.testing.assert_allclose(ours, expected, rtol=RTOL, atol=0)
    assert len(set(expected)) > 3  # warmup, decays or noise happened


@pytest.mark.parametrize('stop', [3, 7, 11])
def test_plateau_resumed_from_its_saved_state_goes_on_as_timm_uninterrupted(stop):
    case = PLATEAU_CASES['min-noise']
    expected, _ = _timm_plateau(**case)
    first, num_epochs = _plateau(**case)
    for epoch in range(stop):
        first.step(epoch + 1, METRICS[epoch % len(METRICS)])
    saved = json.loads(json.dumps(first.state_dict()))  # as a checkpoint's metadata keeps it
    resumed, _ = _plateau(**case)
    resumed.load_state_dict(saved)
    ours = []
    for epoch in range(stop, num_epochs):
        ours.append(resumed())
        resumed.step(epoch + 1, METRICS[epoch % len(METRICS)])
    np.testing.assert_allclose(ours, expected[stop:], rtol=RTOL, atol=0)
