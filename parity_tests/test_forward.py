"""Forward parity against timm's own ResNets: eval and train mode, float32 and float64.

timm runs on torch's GPU when there is one (`DEVICE`); the precision is pinned on both sides by
conftest.py (torch_ref/precision.py).
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch

from jax_ema.convert import to_flax
from jax_ema.models import create_model
from torch_ref.precision import torch_device

DEVICE = torch_device()
NUM_CLASSES = 7
PARITY_MODELS = ('resnet18', 'resnet50')


def _randomise_batchnorms(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """timm zero-inits each block's last BN, which would hide residual-branch mistakes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return model


def _state_dict(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def _images(batch: int, size: int, dtype=np.float32) -> np.ndarray:
    return np.random.RandomState(batch * 1000 + size).randn(batch, size, size, 3).astype(dtype)


def _torch_forward(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """timm's logits of NHWC images `x`, on the device that holds `model`."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(torch.from_numpy(x).to(device).permute(0, 3, 1, 2)).cpu().numpy()


def _max_rel_err(ours, theirs) -> float:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.fixture(
    scope='module', params=[pytest.param(m, marks=pytest.mark.slow) if m == 'resnet50' else m for m in PARITY_MODELS]
)
def pair(request):
    """name, timm models {'timm_init', 'random_bn'} (eval mode), jitted flax eval and train functions."""
    name = request.param
    torch.manual_seed(0)
    timm_init = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES).eval().to(DEVICE)
    models = {'timm_init': timm_init, 'random_bn': _randomise_batchnorms(copy.deepcopy(timm_init), seed=1)}
    flax_model = create_model(name, NUM_CLASSES)
    eval_fn = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))
    train_fn = jax.jit(lambda v, x: flax_model.apply(v, x, train=True, mutable=['batch_stats']))
    return name, models, eval_fn, train_fn


@pytest.mark.parametrize('batch,size', [(4, 64), (2, 224)])
@pytest.mark.parametrize('init', ['timm_init', 'random_bn'])
def test_eval_forward_matches_timm(pair, init, batch, size):
    name, models, eval_fn, _ = pair
    x = _images(batch, size)
    expected = _torch_forward(models[init], x)
    logits = eval_fn(to_flax(name, _state_dict(models[init])), x)
    assert logits.dtype == jnp.float32
    assert _max_rel_err(logits, expected) <= 1e-5


@pytest.mark.float64  # the float32 bound is calibrated on timm's float64 run
def test_train_forward_and_running_stats_match_timm(pair):
    """One train-mode step; float32 roundoff tolerance calibrated on timm's own float32-vs-float64 gap.

    Train-mode BN over few values per channel amplifies float32 roundoff: in resnet50 at 64x64 timm's own
    float32 logits are ~5e-5 (relative) off its float64 ones. So each comparison allows 1e-5 or twice timm's
    own float32 error, and ours must be no further from float64 than timm's float32 is. Exactness of the
    formulas is checked in float64 by test_float64_matches_timm_to_roundoff.
    """
    name, models, _, train_fn = pair
    torch_model = copy.deepcopy(models['random_bn'])
    torch_model64 = copy.deepcopy(torch_model).double().train()
    variables = to_flax(name, _state_dict(torch_model))
    before = jax.tree_util.tree_leaves(variables['batch_stats'])
    x = _images(4, 64)
    expected64 = _torch_forward(torch_model64, x.astype(np.float64))
    torch_model.train()
    expected = _torch_forward(torch_model, x)
    logits, updates = train_fn(variables, x)
    roundoff = _max_rel_err(expected, expected64)
    assert _max_rel_err(logits, expected) <= max(1e-5, 3 * roundoff)
    assert _max_rel_err(logits, expected64) <= max(1e-5, 2 * roundoff)

    got = jax.tree_util.tree_leaves_with_path(updates['batch_stats'])
    want = jax.tree_util.tree_leaves_with_path(to_flax(name, _state_dict(torch_model))['batch_stats'])
    want64 = jax.tree_util.tree_leaves(to_flax(name, _state_dict(torch_model64))['batch_stats'])
    assert [p for p, _ in got] == [p for p, _ in want]
    for (path, ours), (_, theirs), theirs64, old in zip(got, want, want64, before):
        assert not np.array_equal(theirs, old), jax.tree_util.keystr(path)
        roundoff = _max_rel_err(theirs, theirs64)
        assert _max_rel_err(ours, theirs) <= max(1e-5, 3 * roundoff), jax.tree_util.keystr(path)
        assert _max_rel_err(ours, theirs64) <= max(1e-5, 2 * roundoff), jax.tree_util.keystr(path)


@pytest.mark.float64
def test_float64_matches_timm_to_roundoff(pair):
    """In float64 the only differences are summation order: any gap above 1e-10 is a bug."""
    name, models, _, _ = pair
    torch_model = copy.deepcopy(models['random_bn']).double()
    x = _images(2, 64, np.float64)
    with jax.enable_x64(True):
        flax_model = create_model(name, NUM_CLASSES, dtype=jnp.float64)
        variables = to_flax(name, _state_dict(torch_model))
        logits = flax_model.apply(variables, x, train=False)
        assert logits.dtype == jnp.float64
        assert _max_rel_err(logits, _torch_forward(torch_model, x)) <= 1e-10
        train_logits, updates = flax_model.apply(variables, x, train=True, mutable=['batch_stats'])
    torch_model.train()
    assert _max_rel_err(train_logits, _torch_forward(torch_model, x)) <= 1e-10
    expected_stats = to_flax(name, _state_dict(torch_model))['batch_stats']
    for ours, theirs in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected_stats)):
        assert _max_rel_err(ours, theirs) <= 1e-10
