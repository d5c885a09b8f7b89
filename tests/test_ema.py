"""jax_ema.ema on hand-computed values from timm's ModelEmaV3 formula (JAX only).

t = max(0, step - update_after_step - 1);  t == 0 -> decay 0 (plain copy)
warmup: decay = clip(1 - (1 + t / gamma) ** -power, min_decay, decay)
ema <- decay * ema + (1 - decay) * new
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_ema import ema
from jax_ema.errors import UserError


@pytest.fixture(autouse=True)
def float32_mode():
    """These tests are about the float32 path whatever another module did to the global x64 flag."""
    with jax.enable_x64(False):
        yield


def size(cfg, step):
    return float(ema.step_size(cfg, step))


def test_updates_up_to_update_after_step_plus_one_are_copies():
    cfg = ema.EmaConfig(decay=0.9, update_after_step=3)
    assert [size(cfg, s) for s in range(5)] == [1.0] * 5  # t = max(0, s - 4) == 0
    assert size(cfg, 5) == pytest.approx(0.1, rel=1e-7)
    old, new = {'w': jnp.array([1e6, -3.0])}, {'w': jnp.array([0.1, 7.0])}
    copied, _ = ema.update(cfg, old, {}, new, {}, step=4)
    np.testing.assert_array_equal(copied['w'], new['w'])
    warm = ema.EmaConfig(decay=0.9999, update_after_step=3, use_warmup=True)
    assert size(warm, 4) == 1.0
    assert size(warm, 5) == pytest.approx(2 ** (-2 / 3), rel=1e-6)  # t = 1


def test_average_is_decay_times_old_plus_rest_times_new():
    cfg = ema.EmaConfig(decay=0.9)
    params, _ = ema.update(cfg, {'w': jnp.array([1.0, 2.0])}, {}, {'w': jnp.array([3.0, -2.0])}, {}, step=10)
    np.testing.assert_allclose(params['w'], [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2], rtol=1e-6)


@pytest.mark.parametrize(
    'step, expected',
    [
        (2, 2 ** (-2 / 3)),  # t = 1: 1 - decay = (1 + 1) ** (-2/3) = 0.62996...
        (8, 0.25),  # t = 7: 8 ** (-2/3)
        (27, 1 / 9),  # t = 26: 27 ** (-2/3)
    ],
)
def test_warmup_values(step, expected):
    cfg = ema.EmaConfig(decay=0.9999, use_warmup=True)
    assert size(cfg, step) == pytest.approx(expected, rel=1e-6)


def test_warmup_gamma_and_power():
    cfg = ema.EmaConfig(decay=0.9999, use_warmup=True, warmup_gamma=2.0, warmup_power=1.0)
    assert size(cfg, 7) == pytest.approx(1 / (1 + 6 / 2), rel=1e-6)  # t = 6


def test_min_decay_clamps_early_warmup():
    cfg = ema.EmaConfig(decay=0.9999, use_warmup=True, min_decay=0.5)
    assert size(cfg, 2) == pytest.approx(0.5, rel=1e-7)  # 2 ** (-2/3) = 0.63 > 1 - 0.5
    assert size(cfg, 8) == pytest.approx(0.25, rel=1e-6)  # unclamped
    assert size(cfg, 1) == 1.0  # the first update is still a copy


def test_decay_caps_late_warmup():
    cfg = ema.EmaConfig(decay=0.9, use_warmup=True)
    assert size(cfg, 11) == pytest.approx(11 ** (-2 / 3), rel=1e-6)  # 0.203 > 0.1: not capped
    assert size(cfg, 1001) == pytest.approx(0.1, rel=1e-7)  # 1001 ** (-2/3) = 0.01 < 0.1


def test_step_size_is_accurate_in_float32():
    exact = 1.0 - 0.9998  # float64
    ours = ema.step_size(ema.EmaConfig(decay=0.9998), 10)
    assert ours.dtype == jnp.float32
    assert abs(float(ours) - exact) / exact <= 1e-6
    naive = 1.0 - np.float32(0.9998)  # what 1 - decay costs when decay is a float32
    assert abs(float(naive) - exact) / exact > 1e-5
    warm = ema.step_size(ema.EmaConfig(decay=0.99999, use_warmup=True), 1_000_001)  # t = 1e6
    assert abs(float(warm) - 1_000_001.0 ** (-2 / 3)) / 1_000_001.0 ** (-2 / 3) <= 1e-6


def test_float32_ema_does_not_drift():
    """20,000 float32 updates at 0.9998 stay unbiased vs the float64 EMA (timm's lerp does)."""
    cfg = ema.EmaConfig(decay=0.9998)
    rng = np.random.default_rng(0)
    news = (1.0 + 0.01 * rng.normal(size=(20_000, 256))).astype(np.float32)

    def body(ema_params, xs):
        new, step = xs
        return ema.update(cfg, ema_params, {}, new, {}, step)[0], None

    got, _ = jax.lax.scan(body, ema.init(news[0]), (jnp.asarray(news), jnp.arange(1, len(news) + 1)))
    exact = news[0].astype(np.float64)  # step 1 is a copy
    for new in news[1:].astype(np.float64):
        exact = 0.9998 * exact + (1.0 - 0.9998) * new
    bias = np.mean(np.asarray(ema.tree(got), np.float64) - exact) / np.mean(exact)
    assert abs(bias) <= 1e-6, f'mean relative bias {bias:.3g}'


def test_integer_leaves_are_copied():
    cfg = ema.EmaConfig(decay=0.9)
    _, stats = ema.update(cfg, {}, {'count': jnp.array(5, jnp.int32)}, {}, {'count': jnp.array(17, jnp.int32)}, 50)
    assert stats['count'].dtype == jnp.int32 and int(stats['count']) == 17


@pytest.mark.parametrize('exclude_buffers', [True, False])
def test_exclude_buffers_copies_stats(exclude_buffers):
    cfg = ema.EmaConfig(decay=0.9, exclude_buffers=exclude_buffers)
    params, stats = ema.update(
        cfg,
        {'w': jnp.array([1.0])},
        {'mean': jnp.array([1.0])},
        {'w': jnp.array([3.0])},
        {'mean': jnp.array([3.0])},
        step=50,
    )
    assert float(params['w'][0]) == pytest.approx(1.2, rel=1e-6)
    assert float(stats['mean'][0]) == (3.0 if exclude_buffers else pytest.approx(1.2, rel=1e-6))


def test_ema_stays_float32_for_bfloat16_params():
    params = {'w': jnp.array([1.0, 2.0], jnp.bfloat16)}
    ema_params = ema.init(params)
    assert ema.tree(ema_params)['w'].dtype == jnp.float32
    new = {'w': jnp.array([3.0, -2.0], jnp.bfloat16)}
    ema_params, _ = ema.update(ema.EmaConfig(decay=0.9998), ema_params, {}, new, {}, step=100)
    assert ema.tree(ema_params)['w'].dtype == jnp.float32
    np.testing.assert_allclose(ema.tree(ema_params)['w'], [1 + 2e-4 * (3 - 1), 2 + 2e-4 * (-2 - 2)], rtol=1e-6)


def test_init_is_a_real_copy():
    params = {'w': jnp.arange(4.0), 'n': jnp.arange(3)}
    copy = ema.init(params)
    pointers = {x.unsafe_buffer_pointer() for x in jax.tree.leaves(params)}
    assert not pointers & {x.unsafe_buffer_pointer() for x in jax.tree.leaves(copy)}
    consumed = jax.jit(lambda p: jax.tree.map(lambda x: x + 1, p), donate_argnums=0)(params)
    np.testing.assert_array_equal(ema.tree(copy)['w'], np.arange(4.0))  # still alive after donating params
    np.testing.assert_array_equal(ema.tree(copy)['n'], np.arange(3))
    np.testing.assert_array_equal(consumed['n'], np.arange(1, 4))


@pytest.mark.parametrize('kwargs', [dict(decay=1.5), dict(decay=-0.1), dict(min_decay=1.1)])
def test_config_rejects_decay_outside_unit_interval(kwargs):
    with pytest.raises(UserError, match='outside'):
        ema.EmaConfig(**kwargs)


def test_config_accepts_the_bounds():
    assert ema.EmaConfig(decay=1.0).horizon == float('inf')
    assert ema.EmaConfig(decay=0.0, min_decay=1.0).horizon == 1.0


def test_update_every_k_folds_k_updates_and_keeps_the_horizon():
    cfg = ema.EmaConfig(decay=0.999, update_every=8)
    size8 = float(ema.step_size(cfg, 800, 8))
    assert abs(size8 - (1 - 0.999**8)) <= 1e-6 * size8  # decay ** K
    assert float(ema.step_size(cfg, 800, 0)) == 0.0  # nothing pending: no change
    assert float(ema.step_size(cfg, 1, 8)) == 1.0  # the first update is still a copy
    # a constant signal: after n updates every K the EMA has forgotten the start as decay ** n
    old = ema.init({'w': jnp.zeros(3)})
    for step in range(8, 8 * 51, 8):
        old, _ = ema.update(cfg, old, {}, {'w': jnp.ones(3)}, {}, step, 8)
    np.testing.assert_allclose(ema.tree(old)['w'], 1 - 0.999 ** (8 * 50), rtol=1e-5)


def test_update_every_must_be_positive():
    with pytest.raises(UserError, match='update-every'):
        ema.EmaConfig(update_every=0)


# ---------------------------------------------------------------- several EMAs in one stack

DECAYS = (0.9, 0.999, 0.9998)


@pytest.mark.parametrize(
    'kwargs',
    [dict(), dict(use_warmup=True, update_after_step=3), dict(exclude_buffers=True, min_decay=0.5, use_warmup=True)],
)
@pytest.mark.parametrize('every', [1, 4])
def test_stacked_members_are_bit_identical_to_separate_emas(kwargs, every):
    """3 decays stacked ([3, n], one fused lerp) == 3 separate single EMAs, bit for bit, in float32."""
    rng = np.random.default_rng(1)
    params = [
        {'w': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), 'b': jnp.asarray(rng.normal(size=7), jnp.float32)}
        for _ in range(60)
    ]
    stats = [{'mean': p['b'] * 2, 'n': jnp.array(i, jnp.int32)} for i, p in enumerate(params)]
    stacked_cfg = ema.EmaConfig(decay=DECAYS[0], extra_decays=DECAYS[1:], update_every=every, **kwargs)
    assert stacked_cfg.members == 3 and stacked_cfg.decays == DECAYS
    run = jax.jit(lambda cfg, e, s, p, st, step, gap: ema.update(cfg, e, s, p, st, step, gap), static_argnums=0)
    stack = (ema.init(params[0], members=3), ema.init(stats[0], members=3))
    assert stack[0].flat.shape == (3, 22) and stack[0].members == 3
    alone = [(ema.init(params[0]), ema.init(stats[0])) for _ in DECAYS]
    for step in range(every, len(params), every):
        stack = run(stacked_cfg, *stack, params[step], stats[step], step, every)
        alone = [run(stacked_cfg.single(d), *a, params[step], stats[step], step, every) for d, a in zip(DECAYS, alone)]
    for i, (p, s) in enumerate(alone):
        for got, want in ((ema.tree(stack[0], i), ema.tree(p)), (ema.tree(stack[1], i), ema.tree(s))):
            jax.tree.map(lambda g, w: np.testing.assert_array_equal(np.asarray(g), np.asarray(w)), got, want)
    assert not np.array_equal(ema.tree(stack[0], 0)['w'], ema.tree(stack[0], 2)['w'])  # they did differ


def test_single_decay_keeps_the_plain_buffer_and_scalar_step_size():
    cfg = ema.EmaConfig(decay=0.999)
    assert cfg.members == 1 and ema.step_sizes(cfg, 10).shape == ()
    assert ema.init({'w': jnp.ones(4)}).flat.shape == (4,)
    assert ema.step_sizes(ema.EmaConfig(decay=0.9, extra_decays=[0.99], stds=[0.1]), 10).shape == (3,)


def test_stack_round_trips_through_its_pytree_form():
    """tree(stack) has a leading member axis (what checkpoints store); init_stacked reads it back."""
    stack = ema.init({'w': jnp.arange(6.0).reshape(2, 3), 'k': jnp.array(3)}, members=2)
    stack = ema.average(stack, {'w': jnp.zeros((2, 3)), 'k': jnp.array(4)}, jnp.array([0.5, 1.0]))
    full = ema.tree(stack)
    assert full['w'].shape == (2, 2, 3) and int(full['k']) == 4
    np.testing.assert_array_equal(full['w'][0], np.arange(6.0).reshape(2, 3) / 2)
    np.testing.assert_array_equal(full['w'][1], np.zeros((2, 3)))
    again = ema.init_stacked(full)
    np.testing.assert_array_equal(again.flat, stack.flat)
    np.testing.assert_array_equal(ema.tree(again, 0)['w'], full['w'][0])
    with pytest.raises(IndexError):
        ema.init({'w': jnp.ones(2)}).tree(1)
    restored = jax.device_get(full)  # a checkpoint's stacked pytree (numpy): member i by indexing float leaves
    member = ema.tree(restored, 1)
    np.testing.assert_array_equal(member['w'], np.zeros((2, 3)))
    assert int(member['k']) == 4


def test_config_rejects_bad_extra_decays_and_stds():
    with pytest.raises(UserError, match='outside'):
        ema.EmaConfig(extra_decays=(1.5,))
    with pytest.raises(UserError, match='sigma_rel'):
        ema.EmaConfig(stds=(0.3,))
    with pytest.raises(UserError, match='repeat'):
        ema.EmaConfig(stds=(0.1, 0.05, 0.1))
