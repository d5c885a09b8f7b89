"""jax_ema.ema against timm's own ModelEmaV3: the decay schedule and 1,000-step EMA trajectories.

timm's EMA runs on torch's GPU when there is one (torch_ref.precision.torch_device).

float64 runs use `with jax.enable_x64(True)` and float32 runs `with jax.enable_x64(False)`, so the
results do not depend on the process-global x64 flag another test module may have set.
"""

import functools

import jax
import numpy as np
import pytest
import torch
from timm.utils import ModelEmaV3
from torch import nn

from jax_ema import ema, host_ema
from torch_ref.precision import torch_device

NUM_STEPS = 1000
CHECK_AT = (1, 2, 11, 12, 13, 100, 500, NUM_STEPS)  # steps where the two EMAs are compared

# (decay, EmaConfig/ModelEmaV3 keyword arguments)
TRAJECTORY_CONFIGS = {
    'plain': (0.9998, {}),
    'warmup': (0.9998, dict(use_warmup=True)),
    'after10': (0.99, dict(update_after_step=10)),
    'warmup_after10_min': (0.99, dict(use_warmup=True, update_after_step=10, min_decay=0.5)),
    'exclude_buffers': (0.9998, dict(use_warmup=True, exclude_buffers=True)),
    'exclude_buffers_d99': (0.99, dict(exclude_buffers=True)),
}
TOLERANCE = {'float64': 1e-12, 'float32': 2e-5}  # max |ours - timm| / max |timm EMA|, per tensor
DTYPES = [pytest.param('float64', marks=pytest.mark.float64), 'float32']


def torch_module():
    """Parameters, float BatchNorm buffers and the int64 num_batches_tracked buffer."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(6, 2))


def random_state(rng, module, dtype):
    """New random values for every state_dict entry (positive running_var, random int counter)."""
    state = {}
    for name, value in module.state_dict().items():
        if value.is_floating_point():
            draw = rng.normal(1.0, 1.0, size=tuple(value.shape))
            state[name] = np.abs(draw).astype(dtype) if name.endswith('running_var') else draw.astype(dtype)
        else:
            state[name] = np.asarray(rng.integers(0, 10_000), dtype=np.int64)
    return state


def split(module, state):
    """(params, stats) pytrees: flat dicts keyed by the torch names."""
    param_names = {name for name, _ in module.named_parameters()}
    params = {k: v for k, v in state.items() if k in param_names}
    stats = {k: v for k, v in state.items() if k not in param_names}
    return params, stats


def load(module, state):
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})


def assert_close(timm_ema, ema_params, ema_stats, dtype, step):
    ours = {**ema.tree(ema_params), **ema.tree(ema_stats)}
    for name, ref in timm_ema.module.state_dict().items():
        ref = ref.cpu().numpy()
        got = np.asarray(ours[name])
        if not np.issubdtype(ref.dtype, np.floating):
            assert got == ref, f'{name} at step {step}: int buffer {got} != {ref}'
            continue
        assert got.dtype == ref.dtype == np.dtype(dtype), name
        err = np.max(np.abs(got.astype(np.float64) - ref)) / np.max(np.abs(ref))
        assert err <= TOLERANCE[dtype], f'{name} at step {step}: relative error {err:.3g}'


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('name', list(TRAJECTORY_CONFIGS))
def test_trajectory_matches_model_ema_v3(name, dtype):
    decay, kwargs = TRAJECTORY_CONFIGS[name]
    cfg = ema.EmaConfig(decay=decay, **kwargs)
    rng = np.random.default_rng(0)
    module = torch_module().to(torch_device(), getattr(torch, dtype))
    with jax.enable_x64(dtype == 'float64'):
        state = random_state(rng, module, dtype)
        load(module, state)
        timm_ema = ModelEmaV3(module, decay=decay, **kwargs)
        params, stats = split(module, state)
        ema_params, ema_stats = ema.init(params), ema.init(stats)
        update = jax.jit(functools.partial(ema.update, cfg))
        for step in range(1, NUM_STEPS + 1):
            state = random_state(rng, module, dtype)
            load(module, state)
            timm_ema.update(module, step=step)
            ema_params, ema_stats = update(ema_params, ema_stats, *split(module, state), step)
            if step in CHECK_AT:
                assert_close(timm_ema, ema_params, ema_stats, dtype, step)
        assert update._cache_size() == 1  # one compilation per config: step is traced


# (decay, kwargs) for the schedule; decay <= 0.9999 keeps timm's own float64 rounding of
# 1 - (1 - w) below 2**-54 / 1e-4 ~ 6e-13 relative, inside the 1e-12 tolerance.
SCHEDULE_CONFIGS = {
    'plain': (0.9998, {}),
    'plain_after5': (0.9998, dict(update_after_step=5)),
    'warmup': (0.9998, dict(use_warmup=True)),
    'warmup_power34': (0.9999, dict(use_warmup=True, warmup_power=3 / 4)),
    'warmup_gamma10_power1': (0.9999, dict(use_warmup=True, warmup_gamma=10.0, warmup_power=1.0)),
    'warmup_after100': (0.9998, dict(use_warmup=True, update_after_step=100)),
    'warmup_min_decay': (0.9998, dict(use_warmup=True, min_decay=0.9)),
}
STEPS = np.unique(np.concatenate([np.arange(2001), np.geomspace(2000, 1e6, 300).astype(np.int64)]))


@pytest.mark.float64
@pytest.mark.parametrize('name', list(SCHEDULE_CONFIGS))
def test_step_size_matches_get_decay(name):
    decay, kwargs = SCHEDULE_CONFIGS[name]
    cfg = ema.EmaConfig(decay=decay, **kwargs)
    timm_ema = ModelEmaV3(nn.Linear(1, 1), decay=decay, **kwargs)
    expected = np.array([1.0 - timm_ema.get_decay(int(s)) for s in STEPS])
    step_size = jax.jit(functools.partial(ema.step_size, cfg))

    with jax.enable_x64(True):
        got64 = np.asarray(step_size(STEPS))
    assert got64.dtype == np.float64
    err64 = np.max(np.abs(got64 - expected) / expected)
    assert err64 <= 1e-12, f'float64 relative error {err64:.3g}'

    with jax.enable_x64(False):
        got32 = np.asarray(step_size(STEPS.astype(np.int32)))
    assert got32.dtype == np.float32
    err32 = np.max(np.abs(got32.astype(np.float64) - expected) / expected)
    assert err32 <= 1e-6, f'float32 relative error {err32:.3g}'


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('every,warmup', [(4, False), (4, True), (16, True)])
def test_update_every_k_matches_timm_applied_every_k_with_decay_to_the_k(every, warmup, dtype):
    """--model-ema-update-every K: timm's EMA applied every K updates with get_decay(step) ** K."""
    decay = 0.999
    cfg = ema.EmaConfig(decay=decay, use_warmup=warmup, update_every=every)
    rng = np.random.default_rng(1)
    module = torch_module().to(torch_device(), getattr(torch, dtype))
    with jax.enable_x64(dtype == 'float64'):
        state = random_state(rng, module, dtype)
        load(module, state)
        timm_ema = ModelEmaV3(module, decay=decay, use_warmup=warmup)
        params, stats = split(module, state)
        ema_params, ema_stats = ema.init(params), ema.init(stats)
        update = jax.jit(functools.partial(ema.update, cfg))
        for step in range(1, 401):
            state = random_state(rng, module, dtype)
            if step % every:
                continue  # the weights moved on; neither EMA looks at them
            load(module, state)
            timm_ema.apply_update_(module, timm_ema.get_decay(step) ** every)
            ema_params, ema_stats = update(ema_params, ema_stats, *split(module, state), step, every)
        assert_close(timm_ema, ema_params, ema_stats, dtype, step)


@pytest.mark.parametrize('name', ['plain', 'warmup', 'exclude_buffers_d99'])
def test_host_averager_matches_model_ema_v3_on_the_cpu(name):
    """--model-ema-force-cpu: our host EMA (host_ema.Averager: ema.update jitted for the CPU) against timm's
    ModelEmaV3(device='cpu'), float32, over the trajectory: bit for bit where the step size is a constant
    (the warmup's is formed in float32 here, in float64 by timm); and bit for bit the jitted `ema.update`'s."""
    decay, kwargs = TRAJECTORY_CONFIGS[name]
    cfg = ema.EmaConfig(decay=decay, **kwargs)
    rng = np.random.default_rng(2)
    module = torch_module()
    with jax.enable_x64(False):
        state = random_state(rng, module, 'float32')
        load(module, state)
        timm_ema = ModelEmaV3(module, decay=decay, device='cpu', **kwargs)
        params, stats = split(module, state)
        ema_params, ema_stats = ema.init(params), ema.init(stats)
        host = host_ema.Averager(cfg, ema_params, ema_stats)
        update = jax.jit(functools.partial(ema.update, cfg))
        for step in range(1, 301):
            state = random_state(rng, module, 'float32')
            load(module, state)
            timm_ema.update(module, step=step)
            params, stats = split(module, state)
            packed = [t.pack(tree) for t, tree in zip((ema_params, ema_stats), (params, stats))]
            host.update([np.asarray(flat) for flat, _ in packed], [others for _, others in packed], step, 1)
            ema_params, ema_stats = update(ema_params, ema_stats, params, stats, step)
            if step in CHECK_AT:
                assert_close(timm_ema, *host.trees(), 'float32', step)
        for ours, jitted in zip(host.trees(), (ema_params, ema_stats)):
            assert np.array_equal(ours.flat, np.asarray(jitted.flat))
        if not cfg.use_warmup:
            ours = {**ema.tree(host.trees()[0]), **ema.tree(host.trees()[1])}
            for key, ref in timm_ema.module.state_dict().items():
                assert np.array_equal(np.asarray(ours[key]), ref.numpy()), key
