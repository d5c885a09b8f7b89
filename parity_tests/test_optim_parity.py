"""jax_ema.optim vs timm's own optimizer factory and loss, in float64 (the schedules: test_scheduler_v2_parity.py).

Every float64 check runs inside `with jax.enable_x64(True):`, so x64 never leaks into other tests.
timm's optimizers and loss run on torch's GPU when there is one (torch_ref.precision.torch_device);
its schedulers only do arithmetic on Python floats.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

import timm_gaps
from jax_ema import losses, optim
from torch_ref.precision import torch_device

RTOL = 1e-12


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
        # only where the installed timm lacks the feature (timm_gaps.py says which, measured); never on timm 1.0.31
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
