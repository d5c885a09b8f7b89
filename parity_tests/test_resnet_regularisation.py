"""ResNet drop path (stochastic depth) and DropBlock against timm's own layers and ResNets, given the same draws.

The draws are injected on both sides: ours come from each random layer's `uniform` method (intercepted and
recorded), timm's `Tensor.bernoulli_(p)` is patched to return those draws < p. So the masks are equal exactly
when timm's p (keep probability, DropBlock's gamma) is ours, which each test also asserts; the rest (block
growth by max pooling, even blocks, the batch-wide rescale, where each layer sits) is compared in float64.
"""

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from timm.layers import DropBlock2d, DropPath
from timm.layers.drop import drop_block_2d, drop_path

from jax_ema.convert import to_flax
from jax_ema.models import create_model
from jax_ema.models.layers import (
    DropBlock as OurDropBlock,
    DropPath as OurDropPath,
    RandomLayer,
    block_gamma,
    drop_block as our_drop_block,
    drop_path as our_drop_path,
)
from test_forward import _max_rel_err, _randomise_batchnorms, _state_dict

pytestmark = pytest.mark.float64


@contextlib.contextmanager
def timm_draws(draws, probabilities):
    """timm's bernoulli_(p) returns the next of `draws` (NHWC, or one value per row) < p; p is recorded."""
    queue = list(draws)
    original = torch.Tensor.bernoulli_

    def bernoulli_(tensor, p=0.5, *args, **kwargs):
        u = np.asarray(queue.pop(0), np.float64)
        if u.ndim == 4:
            u = u.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        assert tuple(u.shape) == tuple(tensor.shape)
        probabilities.append(float(p))
        tensor.copy_(torch.from_numpy((u < p).astype(np.float64)))
        return tensor

    torch.Tensor.bernoulli_ = bernoulli_
    try:
        yield
    finally:
        torch.Tensor.bernoulli_ = original
    assert not queue, 'timm drew fewer times than we did'


@pytest.mark.parametrize(
    'size, block_size, gamma_scale, rate',
    [(14, 5, 0.25, 0.3), (7, 3, 1.0, 0.2), (4, 5, 0.25, 0.5), (2, 3, 1.0, 0.5), (1, 3, 1.0, 0.4), (6, 4, 1.0, 0.3)],
)
def test_drop_block_matches_timm(size, block_size, gamma_scale, rate):
    """drop_block_2d (odd, even and clipped blocks) on the same seeds: equal to float64 roundoff."""
    rng = np.random.RandomState(size * 10 + block_size)
    x = rng.randn(4, size, size, 3)
    u = rng.rand(4, size, size, 1)
    gamma = block_gamma(size, size, rate, block_size, gamma_scale)
    assert (u < gamma).any(), 'the test needs at least one dropped block'
    with jax.enable_x64(True):
        ours = np.asarray(our_drop_block(jnp.asarray(x), rate, block_size, gamma_scale, jnp.asarray(u)))
    probabilities = []
    with timm_draws([u], probabilities):
        theirs = drop_block_2d(torch.from_numpy(x).permute(0, 3, 1, 2), rate, block_size, gamma_scale)
    assert probabilities == [pytest.approx(gamma, rel=1e-15)]
    theirs = theirs.permute(0, 2, 3, 1).numpy()
    assert (theirs == 0).any() and (theirs != 0).any()
    assert np.abs(ours - theirs).max() <= 1e-12 * np.abs(theirs).max()


def test_drop_path_matches_timm():
    rng = np.random.RandomState(0)
    x, u = rng.randn(16, 3, 3, 2), rng.rand(16, 1, 1, 1)
    with jax.enable_x64(True):
        ours = np.asarray(our_drop_path(jnp.asarray(x), 0.4, jnp.asarray(u)))
    probabilities = []
    with timm_draws([u.reshape(16, 1, 1, 1).transpose(0, 2, 3, 1)], probabilities):
        theirs = drop_path(torch.from_numpy(x), 0.4, training=True).numpy()
    assert probabilities == [pytest.approx(0.6, abs=1e-15)]
    assert (theirs == 0).any() and (theirs != 0).any()
    assert np.abs(ours - theirs).max() <= 1e-12 * np.abs(theirs).max()


def _recording():
    """An interceptor recording each random layer's draws and the layer itself, and the list it fills."""
    records = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, RandomLayer) and context.method_name == 'uniform':
            records.append((context.module, np.asarray(out)))
        return out

    return interceptor, records


@pytest.mark.slow  # op by op in float64 (the draws are recorded eagerly): ~25 s for resnet18
@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
def test_train_forward_with_drop_path_and_drop_block_matches_timm(name):
    """A train-mode forward of timm's ResNet with drop_path_rate and drop_block_rate, float64, same draws:
    every random layer in the same place with the same rate, equal logits and running statistics."""
    kwargs = dict(drop_path_rate=0.5, drop_block_rate=0.3)
    torch.manual_seed(0)
    timm_model = _randomise_batchnorms(timm.create_model(name, num_classes=5, **kwargs), seed=1).double()
    variables = to_flax(name, _state_dict(timm_model))
    x = np.random.RandomState(0).randn(4, 64, 64, 3)
    interceptor, records = _recording()
    with jax.enable_x64(True), nn.intercept_methods(interceptor):
        model = create_model(name, 5, dtype=jnp.float64, **kwargs)
        ours, updates = model.apply(
            variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(3)}
        )
    timm_model.train()
    probabilities = []
    with timm_draws([u for _, u in records], probabilities), torch.no_grad():
        theirs = timm_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    # Where the layers are and their rates: timm's modules, in forward order, against the ones that drew here.
    timm_layers = [m for m in timm_model.modules() if isinstance(m, (DropBlock2d, DropPath)) and m.drop_prob]
    assert len(timm_layers) == len(records) == len(probabilities)
    for (layer, u), theirs_layer, p in zip(records, timm_layers, probabilities):
        assert layer.rate == pytest.approx(theirs_layer.drop_prob, abs=1e-15)
        if isinstance(theirs_layer, DropBlock2d):
            assert (layer.block_size, layer.gamma_scale) == (theirs_layer.block_size, theirs_layer.gamma_scale)
            assert p == pytest.approx(
                block_gamma(u.shape[1], u.shape[2], layer.rate, layer.block_size, layer.gamma_scale), rel=1e-15
            )
        else:
            assert p == pytest.approx(1.0 - layer.rate, abs=1e-15)
    assert any((u >= 1.0 - layer.rate).any() for layer, u in records if isinstance(layer, OurDropPath))
    assert _max_rel_err(ours, theirs) <= 1e-10
    expected = to_flax(name, _state_dict(timm_model))['batch_stats']
    for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
        assert _max_rel_err(a, b) <= 1e-10


def test_drops_are_train_only():
    """In eval mode DropBlock and drop path are identities that draw nothing (no 'dropout' rng needed), as timm's
    layers in eval mode; in train mode they drop."""
    x = jnp.asarray(np.random.RandomState(1).randn(8, 6, 6, 3), jnp.float32)
    rngs = {'dropout': jax.random.PRNGKey(0)}
    for layer, theirs in ((OurDropBlock(0.5, 3, 1.0), DropBlock2d(0.5, 3, 1.0)), (OurDropPath(0.5), DropPath(0.5))):
        np.testing.assert_array_equal(layer.apply({}, x, train=False), x)
        assert not np.allclose(layer.apply({}, x, train=True, rngs=rngs), x)
        nchw = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
        assert torch.equal(theirs.eval()(nchw), nchw)
