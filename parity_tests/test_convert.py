"""Converter tests against timm state_dicts: exact round trip, sizes, errors, and loading exports into timm."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import timm
import torch

from jax_ema.convert import to_flax, to_timm
from jax_ema.errors import UserError
from jax_ema.models import MODEL_NAMES, create_model
from torch_ref.precision import torch_device

NUM_CLASSES = 11


@functools.cache
def _timm_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)


def _state_dict(name: str) -> dict:
    return {k: v.detach().numpy().copy() for k, v in _timm_model(name).state_dict().items()}


def _flax_shapes(name: str):
    model = create_model(name, NUM_CLASSES)
    return jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, train=False), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    )


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_round_trip_is_exact_and_fits_the_flax_model(name):
    state_dict = _state_dict(name)
    variables = to_flax(name, state_dict)
    expected = _flax_shapes(name)
    assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(expected)
    for ours, want in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(expected)):
        assert ours.shape == want.shape and ours.dtype == want.dtype
    back = to_timm(name, variables)
    assert set(back) == set(state_dict)
    for key, value in state_dict.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_variable_counts_match_timm(name):
    """Independent of the converter: flax params == timm parameters, batch_stats == BN running buffers."""
    model, shapes = _timm_model(name), _flax_shapes(name)

    def count(tree):
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))

    assert count(shapes['params']) == sum(p.numel() for p in model.parameters())
    running = sum(b.numel() for n, b in model.named_buffers() if not n.endswith('num_batches_tracked'))
    assert count(shapes['batch_stats']) == running


def test_to_flax_copies_instead_of_aliasing():
    state_dict = _state_dict('resnet18')
    variables = to_flax('resnet18', state_dict)
    state_dict['bn1.running_mean'] += 1
    state_dict['fc.bias'] += 1
    assert not np.array_equal(variables['batch_stats']['bn1']['mean'], state_dict['bn1.running_mean'])
    assert not np.array_equal(variables['params']['fc']['bias'], state_dict['fc.bias'])


def test_to_flax_accepts_missing_num_batches_tracked():
    state_dict = {k: v for k, v in _state_dict('resnet18').items() if not k.endswith('num_batches_tracked')}
    back = to_timm('resnet18', to_flax('resnet18', state_dict))
    assert set(back) - set(state_dict) == {k for k in back if k.endswith('num_batches_tracked')}


def test_to_flax_unknown_key():
    state_dict = _state_dict('resnet18')
    state_dict['layer5.0.conv1.weight'] = np.zeros((3, 3, 3, 3), np.float32)
    with pytest.raises(UserError, match=r"unknown key 'layer5\.0\.conv1\.weight'"):
        to_flax('resnet18', state_dict)


def test_to_flax_missing_key():
    state_dict = _state_dict('resnet18')
    del state_dict['layer3.1.bn2.running_var']
    with pytest.raises(UserError, match=r"missing key 'layer3\.1\.bn2\.running_var'"):
        to_flax('resnet18', state_dict)


def test_to_flax_shape_mismatch():
    state_dict = _state_dict('resnet18')
    state_dict['layer2.0.downsample.0.weight'] = np.zeros((128, 64, 3, 3), np.float32)
    with pytest.raises(UserError, match=r"shape mismatch for 'layer2\.0\.downsample\.0\.weight'"):
        to_flax('resnet18', state_dict)


def test_to_flax_wrong_architecture():
    with pytest.raises(UserError, match=r"missing key 'layer1\.0\.(bn3|conv3)\.[a-z_]+' in the resnet50"):
        to_flax('resnet50', _state_dict('resnet18'))


def test_to_timm_errors_name_the_flax_variable():
    variables = to_flax('resnet18', _state_dict('resnet18'))
    del variables['params']['layer4_1']['conv2']['kernel']
    with pytest.raises(UserError, match='missing flax variable params/layer4_1/conv2/kernel'):
        to_timm('resnet18', variables)
    variables = to_flax('resnet18', _state_dict('resnet18'))
    variables['batch_stats']['bn1']['extra'] = np.zeros(3, np.float32)
    with pytest.raises(UserError, match='unknown flax variable batch_stats/bn1/extra'):
        to_timm('resnet18', variables)
    variables = to_flax('resnet18', _state_dict('resnet18'))
    variables['params']['layer1_0']['conv1']['kernel'] = np.zeros((3, 3, 64, 32), np.float32)
    with pytest.raises(UserError, match='shape mismatch for flax variable params/layer1_0/conv1/kernel'):
        to_timm('resnet18', variables)


def test_timm_loads_exported_safetensors(tmp_path):
    """A flax-side checkpoint (after a train step, so stats are non-trivial) loads strictly into timm."""
    name, num_classes = 'resnet18', 5
    model = create_model(name, num_classes)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
    variables = {'params': variables['params'], 'batch_stats': updates['batch_stats']}
    exported = to_timm(name, variables)
    path = tmp_path / f'{name}.safetensors'
    safetensors.numpy.save_file(exported, str(path))
    loaded = timm.create_model(name, pretrained=False, num_classes=num_classes, checkpoint_path=str(path))
    state_dict = loaded.state_dict()
    assert set(state_dict) == set(exported)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(value.numpy(), exported[key], err_msg=key)
    loaded.eval().to(torch_device())
    with torch.no_grad():
        expected = loaded(torch.from_numpy(np.array(x)).to(torch_device()).permute(0, 3, 1, 2)).cpu().numpy()
    logits = np.asarray(model.apply(variables, x, train=False))
    assert np.abs(logits - expected).max() <= 1e-5 * np.abs(expected).max()
