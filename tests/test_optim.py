"""jax_ema.optim in float32: schedule shape, weight-decay mask, dtypes, loss, errors (timm parity: parity_tests/)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_ema import losses, lr_noise, optim
from jax_ema.config import parse_args
from jax_ema.errors import UserError
from jax_ema.optim import create_optimizer_and_schedule


def _params():
    return {
        'conv': {'kernel': jnp.full((3, 3, 2, 4), 0.5, jnp.float32)},
        'bn': {'scale': jnp.full((4,), 0.5, jnp.float32), 'bias': jnp.full((4,), 0.5, jnp.float32)},
        'fc': {'kernel': jnp.full((4, 3), 0.5, jnp.float32), 'bias': jnp.full((3,), 0.5, jnp.float32)},
    }


def _const(lr):
    return lambda count: jnp.asarray(lr, jnp.float32)


# --------------------------------------------------------------------------- schedules


def test_cosine_per_epoch_values_follow_timm_formula():
    lr, warmup_lr, min_lr, epochs, upe, warmup = 0.4, 1e-3, 1e-5, 10, 3, 2
    schedule, num_epochs = optim.create_lr_schedule('cosine', lr, epochs, upe, warmup, warmup_lr, min_lr)
    assert num_epochs == epochs
    got = np.asarray(jax.jit(schedule)(jnp.arange(epochs * upe)))
    assert got.dtype == np.float32
    # Constant within each epoch.
    np.testing.assert_array_equal(got.reshape(epochs, upe), np.repeat(got[::upe, None], upe, axis=1))
    per_epoch = got[::upe]
    step = (lr - warmup_lr) / warmup
    expected = [
        warmup_lr + e * step if e < warmup else min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * e / epochs))
        for e in range(epochs)
    ]
    np.testing.assert_allclose(per_epoch, expected, rtol=2e-6)


def test_cosine_per_update_cooldown_and_prefix():
    lr, min_lr, epochs, upe = 0.1, 1e-4, 4, 5
    schedule, num_epochs = optim.create_lr_schedule(
        'cosine', lr, epochs, upe, 1, 1e-5, min_lr, sched_on_updates=True, cooldown_epochs=2, warmup_prefix=True
    )
    assert num_epochs == epochs + 1 + 2  # warmup prefix + cooldown included
    got = np.asarray(schedule(jnp.arange(num_epochs * upe)))
    assert len(set(got[:upe].tolist())) == upe  # changes every update during warmup
    assert got[upe] == pytest.approx(lr, rel=1e-6)  # cosine starts after the prefix at full lr
    np.testing.assert_allclose(got[(1 + epochs) * upe :], min_lr, rtol=1e-6)  # cooldown at min_lr
    assert got[(1 + epochs) * upe - 1] > min_lr


def test_step_schedule_decays_every_decay_epochs():
    schedule, num_epochs = optim.create_lr_schedule('step', 1.0, 9, 2, 0, 0.0, 0.0, decay_epochs=3, decay_rate=0.5)
    assert num_epochs == 9
    got = np.asarray(schedule(jnp.arange(18)))[::2]
    np.testing.assert_allclose(got, [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25], rtol=1e-7)


def test_none_and_constant():
    none, n = optim.create_lr_schedule('none', 0.3, 5, 2, 2, 1e-4, 0.0)
    assert n == 5
    np.testing.assert_allclose(np.asarray(none(jnp.arange(10))), 0.3, rtol=1e-7)
    const, _ = optim.create_lr_schedule('constant', 0.3, 5, 2, 2, 1e-4, 0.0)
    got = np.asarray(const(jnp.arange(10)))
    assert got[0] == pytest.approx(1e-4, rel=1e-6)  # warmup applies
    np.testing.assert_allclose(got[4:], 0.3, rtol=1e-7)


def test_step_schedule_fractional_decay_epochs_in_float32():
    # timm: lr * rate ** (epoch // 2.4) in float64; float32(2.4) > 2.4 would put epochs 12, 24, ... a step late.
    schedule, _ = optim.create_lr_schedule('step', 1.0, 60, 1, 0, 0.0, 0.0, decay_epochs=2.4, decay_rate=0.5)
    got = np.asarray(jax.jit(schedule)(jnp.arange(60)))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, 0.5 ** (np.arange(60) // 2.4))


def test_lr_noise_window_and_bounds():
    lr, epochs, upe = 0.1, 20, 3
    plain, _ = optim.create_lr_schedule('step', lr, epochs, upe, 0, 0.0, 0.0, decay_epochs=100)
    noisy, _ = optim.create_lr_schedule(
        'step', lr, epochs, upe, 0, 0.0, 0.0, decay_epochs=100, noise=(0.25, 0.5), noise_pct=0.3, noise_seed=7
    )
    ratio = np.asarray(noisy(jnp.arange(epochs * upe))) / np.asarray(plain(jnp.arange(epochs * upe)))
    per_epoch = ratio.reshape(epochs, upe)
    np.testing.assert_array_equal(per_epoch, per_epoch[:, :1].repeat(upe, 1))  # one draw per epoch
    noise = per_epoch[:, 0] - 1
    assert np.all(noise[:5] == 0) and np.all(noise[10:] == 0)  # epochs 5..9 = [0.25, 0.5) x 20
    assert np.all(noise[5:10] != 0) and np.all(np.abs(noise[5:10]) < 0.3)
    assert len(set(noise[5:10].tolist())) == 5
    other_seed, _ = optim.create_lr_schedule(
        'step', lr, epochs, upe, 0, 0.0, 0.0, decay_epochs=100, noise=(0.25, 0.5), noise_pct=0.3, noise_seed=8
    )
    assert float(other_seed(5 * upe)) != float(noisy(5 * upe))


@pytest.mark.parametrize(
    'kwargs,match',
    [
        (dict(noise=(0.9, 0.42)), 'would never be on'),
        (dict(noise=(0.1, 0.2, 0.3)), 'one or two fractions'),
        (dict(noise=(-0.1,)), 'one or two fractions'),
        (dict(noise=(0.5,), noise_pct=0.0), 'lr-noise-pct'),
        (dict(noise=(0.5,), noise_std=-1.0), 'lr-noise-std'),
        (dict(sched='sgdr'), 'cosine, tanh, poly, step, multistep, constant, plateau, none'),
        (dict(cycle_mul=0.0), 'lr-cycle-mul'),
        (dict(cycle_limit=0), 'lr-cycle-limit'),
        (dict(k_decay=-1.0), 'lr-k-decay'),
        (dict(sched='multistep', decay_milestones=(30, 10)), 'increasing'),
        (dict(sched='plateau', sched_on_updates=True), 'once per epoch'),
        (dict(sched='plateau', decay_rate=1.0), r'\[0, 1\)'),
        (dict(sched='plateau', patience_epochs=-1), 'patience-epochs'),
        (dict(updates_per_epoch=0), 'updates_per_epoch'),
        (dict(epochs=0), 'epochs'),
        (dict(min_lr=-1.0), 'min_lr'),
    ],
)
def test_schedule_bad_input(kwargs, match):
    args = dict(sched='cosine', lr=0.1, epochs=3, updates_per_epoch=2, warmup_epochs=1, warmup_lr=1e-5, min_lr=0.0)
    args.update(kwargs)
    with pytest.raises(UserError, match=match):
        optim.create_lr_schedule(**args)


# --------------------------------------------------------------------------- optimizers


def test_weight_decay_mask_follows_timm_groups():
    params = _params()
    params['head'] = {'bias': jnp.zeros((2, 3))}  # timm also excludes names ending in '.bias'
    mask = optim.weight_decay_mask(params)
    assert mask == {
        'conv': {'kernel': True},
        'bn': {'scale': False, 'bias': False},
        'fc': {'kernel': True, 'bias': False},
        'head': {'bias': False},
    }


@pytest.mark.parametrize('opt', optim.OPTIMIZER_NAMES)
def test_zero_grad_1d_leaves_unchanged_nd_leaves_decay(opt):
    params = _params()
    tx = optim.create_optimizer(opt, _const(0.1), weight_decay=0.1)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(3):
        updates, state = tx.update(zeros, state, params)
        params = optax.apply_updates(params, updates)
    for leaf in (params['bn']['scale'], params['bn']['bias'], params['fc']['bias']):
        np.testing.assert_array_equal(leaf, 0.5)
    for leaf in (params['conv']['kernel'], params['fc']['kernel']):
        assert np.all(np.asarray(leaf) < 0.5)


@pytest.mark.parametrize('opt', optim.OPTIMIZER_NAMES)
def test_state_stays_float32_and_current_lr_is_last_update_lr(opt):
    schedule, _ = optim.create_lr_schedule('cosine', 0.1, 3, 2, 1, 1e-3, 0.0, sched_on_updates=True)
    tx = optim.create_optimizer(opt, schedule, weight_decay=1e-4)
    params = _params()
    state = tx.init(params)
    assert float(optim.current_lr(state)) == pytest.approx(float(schedule(0)))
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.25), params)
    for u in range(4):
        updates, state = step(params, state, grads)
        params = optax.apply_updates(params, updates)
        assert float(optim.current_lr(state)) == float(schedule(u))
    for leaf in jax.tree.leaves(state) + jax.tree.leaves(params):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype


def test_nesterov_alias_is_sgd_and_differs_from_momentum():
    params, grads = _params(), jax.tree.map(lambda x: jnp.full_like(x, 0.3), _params())

    def run(opt):
        tx = optim.create_optimizer(opt, _const(0.1), weight_decay=0.0)
        state, p = tx.init(params), params
        for _ in range(2):
            updates, state = tx.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        return p['fc']['kernel']

    np.testing.assert_array_equal(run('nesterov'), run('sgd'))
    # two steps of lr 0.1 on grad g: momentum moves 0.1 g (1 + 1.9), nesterov 0.1 g (1.9 + 2.71).
    np.testing.assert_allclose(run('momentum'), 0.5 - 0.1 * 0.3 * 2.9, rtol=1e-6)
    np.testing.assert_allclose(run('sgd'), 0.5 - 0.1 * 0.3 * 4.61, rtol=1e-6)


@pytest.mark.parametrize(
    'kwargs,match',
    [
        (dict(opt='lars'), 'sgd, nesterov, momentum, adam, adamw, rmsproptf, rmsproptfw, lamb'),
        (dict(opt='rmsproptf', opt_eps=-1e-3), 'opt_eps'),
        (dict(opt='sgd', momentum=0.0), 'momentum > 0'),
        (dict(opt='adamw', opt_betas=(0.9,)), 'two values'),
        (dict(opt='sgd', weight_decay=-1.0), 'weight_decay'),
    ],
)
def test_optimizer_bad_input(kwargs, match):
    args = dict(lr_schedule=_const(0.1), weight_decay=1e-4)
    args.update(kwargs)
    with pytest.raises(UserError, match=match):
        optim.create_optimizer(**args)


def test_resolve_lr_bad_scale():
    with pytest.raises(UserError, match='lr_base_scale'):
        optim.resolve_lr(None, 0.1, 256, 'log', 256, 'sgd')


# --------------------------------------------------------------------------- loss


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_cross_entropy_float32_matches_numpy(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(8, 5))
    labels = rng.integers(0, 5, size=8)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    expected = np.mean((1 - smoothing) * -logp[np.arange(8), labels] + smoothing * -logp.mean(-1))
    for dtype in (jnp.float32, jnp.bfloat16):
        loss = losses.cross_entropy(jnp.asarray(logits, dtype), jnp.asarray(labels), smoothing)
        assert loss.dtype == jnp.float32
        tol = 1e-6 if dtype == jnp.float32 else 2e-2
        assert float(loss) == pytest.approx(expected, rel=tol)


def test_cross_entropy_bad_smoothing():
    with pytest.raises(UserError, match='smoothing'):
        losses.cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), smoothing=1.0)


# --------------------------------------------------------------------------- command line


MOBILENETV3_FLAGS = (
    '-b 512 --sched step --epochs 600 --decay-epochs 2.4 --decay-rate .973 --opt rmsproptf '
    '--opt-eps .001 --warmup-lr 1e-6 --weight-decay 1e-5 --lr .064 --lr-noise 0.42 0.9'
).split()


def test_mobilenetv3_recipe_optimizer_and_schedule_flags_parse_as_timm():
    config = parse_args(['data', *MOBILENETV3_FLAGS])
    assert (config.opt, config.opt_eps, config.weight_decay, config.lr) == ('rmsproptf', 1e-3, 1e-5, 0.064)
    assert (config.sched, config.epochs, config.decay_epochs, config.decay_rate) == ('step', 600, 2.4, 0.973)
    assert (config.warmup_lr, config.warmup_epochs, config.seed) == (1e-6, 5, 42)
    assert (config.lr_noise, config.lr_noise_pct, config.lr_noise_std) == ((0.42, 0.9), 0.67, 1.0)
    assert parse_args(['data', '--dr', '0.5', '--lr-noise', '0.3']).decay_rate == 0.5


def test_trainer_builds_optimizer_and_noisy_step_schedule_from_flags():
    config = parse_args(
        [
            'data',
            '--epochs',
            '2',
            '--warmup-epochs',
            '0',
            '--lr',
            '0.01',
            '--opt',
            'rmsproptf',
            '--opt-eps',
            '.001',
            '--weight-decay',
            '1e-5',
            '--sched',
            'step',
            '--decay-epochs',
            '0.5',
            '--dr',
            '0.5',
            '--lr-noise',
            '0.5',
            '--lr-noise-pct',
            '0.3',
            '--seed',
            '3',
        ]
    )
    lr, schedule, num_epochs, tx = create_optimizer_and_schedule(config, updates_per_epoch=5, batch_size=4)
    (noise,) = lr_noise.noise([1], 3, 0.3, 1.0)  # epoch 1 = 0.5 x 2 epochs: the noise is on from there
    assert (lr, num_epochs) == (0.01, 2) and noise != 0
    expected = [0.01] * 5 + [0.01 * 0.5**2 * (1 + noise)] * 5
    np.testing.assert_allclose(np.asarray(schedule(jnp.arange(10))), expected, rtol=1e-6)
    same = optim.create_optimizer('rmsproptf', schedule, 1e-5, 0.9, opt_eps=1e-3)
    params, grads = _params(), jax.tree.map(lambda x: jnp.full_like(x, 0.3), _params())
    ours, theirs = tx.update(grads, tx.init(params), params), same.update(grads, same.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    other_eps = optim.create_optimizer('rmsproptf', schedule, 1e-5, 0.9)
    assert not np.array_equal(
        other_eps.update(grads, other_eps.init(params), params)[0]['fc']['kernel'], ours[0]['fc']['kernel']
    )
