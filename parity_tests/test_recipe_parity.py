"""Issue 18's pieces against timm's own code, float64, given the same draws:
timm's Mixup (batch / pair / elem; mixup, cutmix, cutmix-minmax, both) fed our random numbers through a
stand-in for numpy's random module, timm's BinaryCrossEntropy and SoftTargetCrossEntropy, and
dispatch_clip_grad (norm, value, agc with the head left out as train.py leaves it) on timm's resnet18."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm.data.mixup as timm_mixup
import torch
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy
from timm.utils import dispatch_clip_grad

from jax_ema import clip_grad, losses, mixup
from jax_ema.convert import to_flax, to_timm
from torch_ref import trainer

pytestmark = pytest.mark.float64
ROWS, H, W, CLASSES = 8, 12, 10, 5


class InjectedRandom:
    """numpy.random's rand / beta / randint for timm.data.mixup, answering with given numbers: rand from a
    queue, beta by its alpha, randint from a queue (checked against the bounds timm asks for)."""

    def __init__(self, rand, beta, randint):
        self.rand_q, self.beta_by_alpha, self.randint_q = list(rand), beta, list(randint)

    def rand(self, size=None):
        value = self.rand_q.pop(0)
        return value if size is None else np.asarray(value)

    def beta(self, a, b, size=None):
        value = self.beta_by_alpha[a]
        return value[0] if size is None else np.asarray(value)

    def randint(self, low, high, size=None):
        value = int(self.randint_q.pop(0))
        assert low <= value < high, (low, value, high)
        return value


def timm_mixup_with(cfg: mixup.MixupConfig, raw: mixup.Raw, x, labels):
    """timm's Mixup(x, labels) taking `raw`'s numbers (in the order timm's code draws them)."""
    raw = mixup.Raw(*(np.asarray(a) for a in raw))
    both = cfg.mixup_alpha > 0 and cfg.cutmix_on
    if cfg.mode == 'batch':
        rand = [float(raw.apply_u[0])] + ([float(raw.switch_u[0])] if both else [])
    else:
        rand = ([raw.switch_u] if both else []) + [raw.apply_u]
    lam, cut = (np.asarray(a) for a in mixup.params(cfg, mixup.Raw(*(jnp.asarray(a) for a in raw))))
    boxes = []
    for i in np.flatnonzero(cut):
        if cfg.cutmix_minmax is None:
            boxes += [raw.cy[i], raw.cx[i]]
        else:
            boxes += [raw.cut_h[i], raw.cut_w[i], raw.top[i], raw.left[i]]
    beta = {cfg.mixup_alpha: raw.lam_mix.astype(np.float64), cfg.beta_cutmix: raw.lam_cut.astype(np.float64)}
    fake_np = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith('__')})
    fake_np.random = InjectedRandom(rand, beta, boxes)
    module_np = timm_mixup.np
    timm_mixup.np = fake_np
    try:
        fn = timm_mixup.Mixup(
            mixup_alpha=cfg.mixup_alpha,
            cutmix_alpha=cfg.cutmix_alpha,
            cutmix_minmax=cfg.cutmix_minmax,
            prob=cfg.prob,
            switch_prob=cfg.switch_prob,
            mode=cfg.mode,
            label_smoothing=cfg.label_smoothing,
            num_classes=cfg.num_classes,
        )
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        mixed, target = fn(xt, torch.from_numpy(labels))
    finally:
        timm_mixup.np = module_np
    assert not fake_np.random.randint_q  # every box number was taken
    return mixed.numpy().transpose(0, 2, 3, 1), target.numpy()


CONFIGS = {
    'mixup': dict(mixup_alpha=0.8),
    'cutmix': dict(cutmix_alpha=1.0),
    'both': dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8),
    'minmax': dict(mixup_alpha=0.4, cutmix_minmax=(0.2, 0.8), switch_prob=0.7),
}


@pytest.mark.parametrize('mode', mixup.MODES)
@pytest.mark.parametrize('name', CONFIGS)
def test_mixup_matches_timm_given_the_same_draws(name, mode):
    cfg = mixup.MixupConfig(**CONFIGS[name], mode=mode, label_smoothing=0.1, num_classes=CLASSES)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, H, W, 3))
    labels = rng.integers(0, CLASSES, ROWS)
    for seed in range(2):
        with jax.enable_x64(True):
            raw = mixup.random_draws(cfg, jax.random.PRNGKey(seed), mixup.draw_count(cfg, ROWS), H, W)
            draws = mixup.from_raw(cfg, raw, ROWS, H, W)
            ours = np.asarray(mixup.mix_images(jnp.asarray(x), draws))
            dtype = jnp.float32 if mode == 'batch' else jnp.float64
            targets = np.asarray(mixup.mix_targets(jnp.asarray(labels), draws.lam, CLASSES, 0.1, dtype))
        theirs, their_targets = timm_mixup_with(cfg, raw, x.copy(), labels)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
        assert targets.dtype == their_targets.dtype
        np.testing.assert_allclose(targets, their_targets, rtol=0, atol=1e-12)
        assert not np.array_equal(ours, x) or not np.any(np.asarray(draws.lam) < 1)


def _logits_and_targets(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(6, CLASSES)) * 3
    targets = rng.dirichlet(np.ones(CLASSES) * 0.3, size=6)
    return logits, targets, rng.integers(0, CLASSES, 6)


@pytest.mark.parametrize('thresh', [None, 0.2])
@pytest.mark.parametrize('sum_classes', [False, True])
@pytest.mark.parametrize('pos_weight', [None, 2.5])
def test_binary_cross_entropy_matches_timm(thresh, sum_classes, pos_weight):
    logits, targets, labels = _logits_and_targets()
    fn = BinaryCrossEntropy(target_threshold=thresh, sum_classes=sum_classes, pos_weight=pos_weight)
    fn_smooth = BinaryCrossEntropy(
        smoothing=0.1, target_threshold=thresh, sum_classes=sum_classes, pos_weight=pos_weight
    )
    cfg = losses.LossConfig('bce', 0.1, thresh, sum_classes, pos_weight)
    with jax.enable_x64(True):
        dense = float(losses.loss(cfg, jnp.asarray(logits), targets=jnp.asarray(targets)))
        hard = float(losses.loss(cfg, jnp.asarray(logits), jnp.asarray(labels)))
    assert dense == pytest.approx(fn(torch.from_numpy(logits), torch.from_numpy(targets)).item(), rel=1e-13)
    assert hard == pytest.approx(fn_smooth(torch.from_numpy(logits), torch.from_numpy(labels)).item(), rel=1e-13)


def test_soft_target_cross_entropy_matches_timm():
    logits, targets, _ = _logits_and_targets(1)
    with jax.enable_x64(True):
        ours = float(losses.soft_target_cross_entropy(jnp.asarray(logits), jnp.asarray(targets)))
    theirs = SoftTargetCrossEntropy()(torch.from_numpy(logits), torch.from_numpy(targets)).item()
    assert ours == pytest.approx(theirs, rel=1e-13)


@pytest.mark.parametrize('mode, value', [('norm', 0.5), ('norm', 1e6), ('value', 0.01), ('agc', 0.01)])
def test_clip_grad_matches_timm_dispatch_clip_grad(mode, value):
    """timm's resnet18 with random gradients: dispatch_clip_grad on train.py's clip parameters (all, or all but
    the head's two for agc) against clip_grad.clip on the same gradients in our layout."""
    model = trainer.create_model('resnet18', 10, dtype='float64', seed=0)
    rng = np.random.default_rng(0)
    for p in model.parameters():
        p.grad = torch.from_numpy(rng.normal(size=tuple(p.shape)) * 0.05)
    state = trainer.to_numpy(model.state_dict())
    grads_sd = dict(state, **{k: p.grad.numpy().copy() for k, p in model.named_parameters()})
    parameters = list(model.parameters())
    dispatch_clip_grad(parameters[:-2] if mode == 'agc' else parameters, value=value, mode=mode)
    with jax.enable_x64(True):
        params = to_flax('resnet18', state)['params']
        grads = to_flax('resnet18', grads_sd)['params']
        clipped = clip_grad.clip(clip_grad.ClipConfig(value, mode), grads, params)
        ours = to_timm('resnet18', {'params': clipped, 'batch_stats': to_flax('resnet18', state)['batch_stats']})
    changed = 0
    for k, p in model.named_parameters():
        np.testing.assert_allclose(ours[k], p.grad.numpy(), rtol=1e-12, atol=1e-15, err_msg=k)
        changed += not np.allclose(p.grad.numpy(), grads_sd[k])
    assert changed > 0 if value < 1 else changed == 0  # the cases clip something (the huge norm nothing)
