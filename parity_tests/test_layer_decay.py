"""--layer-decay against timm's own: the per-parameter layer ids and lr scales of `param_groups_layer_decay`
(each model's group_matcher), and a float64 trajectory of timm's optimizer + scheduler with layer decay."""

import jax
import numpy as np
import optax
import pytest
import timm
import torch
from timm.optim import create_optimizer_v2, param_groups_layer_decay
from timm.scheduler import create_scheduler_v2

from jax_ema import layer_decay, optim
from jax_ema.convert import timm_param_name, to_flax
from jax_ema.models import create_model

MODELS = ('resnet18', 'resnet50', 'efficientnet_b0', 'tf_efficientnet_b0', 'mobilenetv3_large_100', 'mnasnet_100')


def _our_scales(name, **kwargs) -> dict:
    """{timm name: our lr scale} of `name`'s params."""
    model = create_model(name, 10)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)['params']
    scales = layer_decay.lr_scales(name, params, **kwargs)
    return {timm_param_name(tuple(k.key for k in p)): s for p, s in jax.tree_util.tree_flatten_with_path(scales)[0]}


def _timm_scales(model, **kwargs) -> dict:
    """{name: lr_scale} from timm's param groups; 0.0 for the parameters it leaves out (no_opt_scale)."""
    by_id = {id(p): g['lr_scale'] for g in param_groups_layer_decay(model, **kwargs) for p in g['params']}
    return {n: by_id.get(id(p), 0.0) for n, p in model.named_parameters()}


@pytest.mark.parametrize('name', MODELS)
def test_lr_scales_equal_timm_param_groups(name):
    model = timm.create_model(name, num_classes=10)
    theirs = _timm_scales(model, weight_decay=0.0, layer_decay=0.7)
    ours = _our_scales(name, layer_decay=0.7)
    assert ours.keys() == theirs.keys()
    assert all(ours[k] == pytest.approx(theirs[k], rel=1e-15) for k in theirs)
    assert len(set(theirs.values())) > 5  # several layers, not one group


def test_min_scale_and_no_opt_scale_as_timm():
    model = timm.create_model('resnet18', num_classes=10)
    theirs = _timm_scales(model, weight_decay=0.0, layer_decay=0.5, min_scale=0.01, no_opt_scale=0.03)
    ours = _our_scales('resnet18', layer_decay=0.5, min_scale=0.01, no_opt_scale=0.03)
    assert ours == pytest.approx(theirs, rel=1e-15)
    assert 0.0 in ours.values() and min(v for v in ours.values() if v) == pytest.approx(0.03125)


def test_lr_scales_ignored_without_scheduler():
    """timm applies lr_scale from its scheduler: --sched none (no scheduler) trains every layer at --lr."""
    assert set(_our_scales('resnet18', layer_decay=0.5, sched='none').values()) == {1.0}


@pytest.mark.slow  # ~30 s each: resnet18's 11M float64 parameters through both optimizers
@pytest.mark.float64
@pytest.mark.parametrize('opt', ['sgd', 'adamw', 'lambw', 'rmsproptf'])
def test_layer_decay_trajectory_matches_timm(opt):
    """timm's create_optimizer_v2(layer_decay=0.6) + a per-update cosine scheduler with warmup vs ours, on the
    same random gradients of resnet18's parameters: every parameter after 4 updates, float64."""
    lr, weight_decay, upe = 0.05, 0.05, 2
    torch.manual_seed(0)
    net = timm.create_model('resnet18', num_classes=3).double()
    optimizer = create_optimizer_v2(net, opt=opt, lr=lr, weight_decay=weight_decay, layer_decay=0.6)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched='cosine',
        num_epochs=2,
        warmup_epochs=1,
        warmup_lr=1e-3,
        step_on_epochs=False,
        updates_per_epoch=upe,
    )
    buffers = {n: b.numpy() for n, b in net.named_buffers()}
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = to_flax('resnet18', {**buffers, **{n: p.detach().numpy() for n, p in net.named_parameters()}})
        params = jax.tree.map(np.asarray, params['params'])
        schedule, _ = optim.create_lr_schedule('cosine', lr, 2, upe, 1, 1e-3, 0.0, sched_on_updates=True)
        scales = layer_decay.lr_scales('resnet18', params, 0.6)
        tx = optim.create_optimizer(opt, schedule, weight_decay, lr_scales=scales)
        state = tx.init(params)

        @jax.jit
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        for num_updates in range(1, 2 * upe + 1):
            grads = {n: rng.normal(size=tuple(p.shape)) for n, p in net.named_parameters()}
            for n, p in net.named_parameters():
                p.grad = torch.from_numpy(grads[n].copy())
            optimizer.step()
            scheduler.step_update(num_updates=num_updates)
            params, state = step(params, state, to_flax('resnet18', {**buffers, **grads})['params'])
        expected = to_flax('resnet18', {**buffers, **{n: p.detach().numpy() for n, p in net.named_parameters()}})
        for (path, ours), theirs in zip(
            jax.tree_util.tree_flatten_with_path(params)[0], jax.tree_util.tree_leaves(expected['params'])
        ):
            np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-11, atol=1e-14, err_msg=str(path))
