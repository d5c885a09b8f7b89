"""jax_ema.optim vs timm's own optimizer factory, schedulers and loss, in float64.

Every float64 check runs inside `with jax.enable_x64(True):`, so x64 never leaks into other tests.
timm's optimizers and loss run on torch's GPU when there is one (torch_ref.precision.torch_device);
its schedulers only do arithmetic on Python floats.
"""

import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

import timm_gaps
from jax_ema import losses, lr_noise, optim
from torch_ref.precision import torch_device

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
        pytest.skip(gap)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, _ = create_scheduler_v2(  # any scheduler: the draws are the base class's
        optimizer, sched='step', num_epochs=10, noise=(0.0, 1.0), noise_pct=pct, noise_std=1.5, noise_seed=123
    )
    ts = np.arange(0, 2000, 97)
    expected = [scheduler._calculate_noise(int(t)) for t in ts]
    np.testing.assert_array_equal(lr_noise.noise(ts, 123, pct, 1.5), expected)


# --------------------------------------------------------------------------- optimizers


class SmallNet(torch.nn.Module):
    """Params of every rank: conv 4-D, bn 1-D, linear 2-D weight + 1-D bias."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 5)


# torch name -> (flax path, torch layout -> flax layout)
NAME_MAP = {
    'conv.weight': (('conv', 'kernel'), lambda a: a.transpose(2, 3, 1, 0)),
    'bn.weight': (('bn', 'scale'), lambda a: a),
    'bn.bias': (('bn', 'bias'), lambda a: a),
    'fc.weight': (('fc', 'kernel'), lambda a: a.T),
    'fc.bias': (('fc', 'bias'), lambda a: a),
}


def to_flax_tree(named_arrays):
    tree = {}
    for name, array in named_arrays.items():
        (module, leaf), to_flax = NAME_MAP[name]
        # Copy: jnp.asarray may alias numpy memory, which torch then updates in place.
        tree.setdefault(module, {})[leaf] = jnp.asarray(to_flax(np.array(array, np.float64, copy=True)))
    return tree


OPT_CASES = [
    ('sgd', 0.3, {}),
    ('momentum', 0.3, {}),
    ('adam', 0.02, {}),
    ('adamw', 0.02, {}),
    ('adamw', 0.02, {'opt_eps': 1e-6, 'opt_betas': (0.8, 0.99)}),
    ('rmsproptf', 0.064, {'opt_eps': 1e-3}),  # the mobilenetv3 recipe's --opt rmsproptf --opt-eps .001
    ('rmsproptf', 0.01, {}),
    ('rmsproptf', 0.01, {'momentum': 0.0}),
    ('rmsproptfw', 0.064, {'opt_eps': 1e-3}),
    ('lamb', 0.02, {}),
    ('lamb', 0.02, {'opt_eps': 1e-4, 'opt_betas': (0.8, 0.99), 'grad_scale': 0.01}),  # no clipping
    ('lambc', 0.02, {}),
    ('lambw', 0.02, {}),
    ('lambcw', 0.02, {}),
]
TIMM_KWARGS = {'opt_eps': 'eps', 'opt_betas': 'betas', 'momentum': 'momentum'}


def optimizer_steps(opt, lr, extra):
    """Both optimizers on identical random gradients (times extra's 'grad_scale'), 20 updates under a
    per-update cosine schedule with warmup; yields (update count, our lr, timm's lr, our params, timm's
    params) after each. extra's opt_eps / opt_betas / momentum go to both optimizers."""
    epochs, upe, weight_decay = 4, 5, 0.05
    extra = {'momentum': 0.9, **extra}
    grad_scale = extra.pop('grad_scale', 1.0)
    torch.manual_seed(0)
    net = SmallNet().double().to(torch_device())
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape))))
    timm_kwargs = {TIMM_KWARGS[k]: v for k, v in extra.items()}
    optimizer = create_optimizer_v2(net, opt=opt, lr=lr, weight_decay=weight_decay, **timm_kwargs)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched='cosine',
        num_epochs=epochs,
        warmup_epochs=1,
        warmup_lr=1e-3,
        min_lr=1e-4,
        step_on_epochs=False,
        updates_per_epoch=upe,
    )

    with jax.enable_x64(True):
        params = to_flax_tree({n: p.detach().cpu().numpy() for n, p in net.named_parameters()})
        schedule, _ = optim.create_lr_schedule('cosine', lr, epochs, upe, 1, 1e-3, 1e-4, sched_on_updates=True)
        tx = optim.create_optimizer(opt, schedule, weight_decay, **extra)
        state = tx.init(params)

        @jax.jit
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        for num_updates in range(1, epochs * upe + 1):
            grads = {n: grad_scale * rng.normal(size=tuple(p.shape)) for n, p in net.named_parameters()}
            timm_lr = optimizer.param_groups[0]['lr']
            for n, p in net.named_parameters():
                p.grad = torch.from_numpy(grads[n].copy()).to(p.device)  # torch may update grads in place
            optimizer.step()
            scheduler.step_update(num_updates=num_updates)
            params, state = step(params, state, to_flax_tree(grads))
            expected = to_flax_tree({n: p.detach().cpu().numpy() for n, p in net.named_parameters()})
            yield num_updates, float(optim.current_lr(state)), timm_lr, params, expected


@pytest.mark.float64
@pytest.mark.parametrize('opt,lr,extra', OPT_CASES, ids=[f'{o}-{"-".join(e)}' if e else o for o, _, e in OPT_CASES])
def test_optimizer_matches_timm_create_optimizer_v2(opt, lr, extra):
    if gap := timm_gaps.optimizer(opt):
        pytest.skip(gap)
    for num_updates, our_lr, timm_lr, params, expected in optimizer_steps(opt, lr, extra):
        assert our_lr == pytest.approx(timm_lr, rel=RTOL)
        for path, ours in jax.tree_util.tree_leaves_with_path(params):
            theirs = expected[path[0].key][path[1].key]
            np.testing.assert_allclose(
                np.asarray(ours),
                np.asarray(theirs),
                rtol=RTOL,
                atol=1e-15,
                err_msg=f'{opt} step {num_updates} {jax.tree_util.keystr(path)}',
            )


# --------------------------------------------------------------------------- loss


@pytest.mark.float64
@pytest.mark.parametrize('smoothing', [0.0, 0.1, 0.35])
def test_cross_entropy_matches_timm_and_torch(smoothing):
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(16, 10))
    labels = rng.integers(0, 10, size=16)
    t_logits, t_labels = torch.from_numpy(logits).to(torch_device()), torch.from_numpy(labels).to(torch_device())
    timm_loss = LabelSmoothingCrossEntropy(smoothing=smoothing)(t_logits, t_labels).item()
    torch_loss = F.cross_entropy(t_logits, t_labels, label_smoothing=smoothing).item()
    with jax.enable_x64(True):
        ours = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing=smoothing)
        assert ours.dtype == jnp.float64
        ours = float(ours)
    assert ours == pytest.approx(timm_loss, rel=RTOL)
    assert ours == pytest.approx(torch_loss, rel=RTOL)


# --------------------------------------------------------------------------- lr scaling


def test_resolve_lr_follows_train_py_rule():
    # timm train.py (main):
    #   if not args.lr:
    #       global_batch_size = args.batch_size * args.world_size * args.grad_accum_steps
    #       batch_ratio = global_batch_size / args.lr_base_size
    #       if not args.lr_base_scale:
    #           on = args.opt.lower()
    #           args.lr_base_scale = 'sqrt' if any([o in on for o in ('ada', 'lamb')]) else 'linear'
    #       if args.lr_base_scale == 'sqrt':
    #           batch_ratio = batch_ratio ** 0.5
    #       args.lr = args.lr_base * batch_ratio
    global_batch = 96 * 2 * 3  # batch_size * world_size * grad_accum_steps
    ratio = global_batch / 256
    assert optim.resolve_lr(None, 0.1, 256, '', global_batch, 'sgd') == 0.1 * ratio
    assert optim.resolve_lr(None, 0.1, 256, '', global_batch, 'momentum') == 0.1 * ratio
    assert optim.resolve_lr(None, 0.1, 256, '', global_batch, 'AdamW') == 0.1 * ratio**0.5
    assert optim.resolve_lr(None, 0.1, 256, '', global_batch, 'adam') == 0.1 * ratio**0.5
    assert optim.resolve_lr(None, 0.1, 256, '', global_batch, 'lamb') == 0.1 * ratio**0.5
    assert optim.resolve_lr(None, 0.1, 256, 'sqrt', global_batch, 'sgd') == 0.1 * ratio**0.5
    assert optim.resolve_lr(None, 0.1, 256, 'linear', global_batch, 'adamw') == 0.1 * ratio
    assert optim.resolve_lr(None, 0.5, 128, '', 512, 'sgd') == 0.5 * (512 / 128)
    # `if not args.lr`: an explicit lr wins, 0 counts as unset.
    assert optim.resolve_lr(0.05, 0.1, 256, '', global_batch, 'adamw') == 0.05
    assert optim.resolve_lr(0.0, 0.1, 256, '', global_batch, 'sgd') == 0.1 * ratio


def test_x64_does_not_leak():
    with jax.enable_x64(True):
        assert jnp.asarray(1.0).dtype == jnp.float64
    assert jnp.asarray(1.0).dtype == jnp.float32
    schedule, _ = optim.create_lr_schedule('cosine', 0.1, 3, 2, 1, 1e-5, 0.0)
    assert jax.jit(schedule)(jnp.int32(3)).dtype == jnp.float32
