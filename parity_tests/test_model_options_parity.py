"""--gp, --in-chans, --bn-eps and --bn-momentum against timm's own models built with the same kwargs: the pools
(SelectAdaptivePool2d), forwards on timm's weights, BatchNorm running statistics, and the weights' round trip
through our converters into timm's model with those kwargs (strict load, as the export is loaded)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.layers import SelectAdaptivePool2d

from jax_ema.convert import to_flax, to_timm
from jax_ema.device_input import greyscale
from jax_ema.models import create_model
from jax_ema.models.layers import POOL_TYPES, global_pool
from test_forward import _max_rel_err, _randomise_batchnorms, _state_dict


@pytest.mark.parametrize('pool', POOL_TYPES + ('fast', 'fastcatavgmax'))
def test_global_pool_matches_timm_select_adaptive_pool(pool):
    from jax_ema.models.layers import pool_type

    x = np.random.RandomState(0).randn(3, 5, 4, 6)
    theirs = SelectAdaptivePool2d(pool_type=pool, flatten=True)(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    with jax.enable_x64(True):
        ours = np.asarray(global_pool(jnp.asarray(x), pool_type(pool)))
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-15)  # float64 summation order only


CASES = [
    ('resnet18', dict(global_pool='catavgmax', in_chans=1)),
    ('resnet18', dict(global_pool='avgmax')),
    ('mobilenetv3_small_100', dict(global_pool='catavgmax', in_chans=1, bn_eps=1e-3, bn_momentum=0.01)),
    ('efficientnet_b0', dict(global_pool='max', bn_eps=1e-4, bn_momentum=0.3)),
]


@pytest.mark.slow  # float64 op by op: 10 to 50 s per model (the pools alone are checked fast above)
@pytest.mark.float64
@pytest.mark.parametrize('name, kwargs', CASES)
def test_forward_and_running_stats_match_timm_with_the_same_kwargs(name, kwargs):
    """Eval and train-mode logits and the updated running statistics, float64, on timm's weights (random
    BatchNorms) of timm.create_model(name, **kwargs); and the weights back to timm load strictly, unchanged."""
    torch.manual_seed(0)
    theirs = _randomise_batchnorms(timm.create_model(name, num_classes=4, **kwargs), seed=1).double().eval()
    state_dict = {k: v.copy() for k, v in _state_dict(theirs).items()}  # the train forward updates timm's
    arch = {k: v for k, v in kwargs.items() if k in ('global_pool', 'in_chans')}
    variables = to_flax(name, state_dict, arch)
    # 64 px, batch 4: 2x2 final maps (so max differs from avg), and train-mode BatchNorm over enough values
    x = np.random.RandomState(0).randn(4, 64, 64, kwargs.get('in_chans', 3))
    with jax.enable_x64(True):
        model = create_model(name, 4, dtype=jnp.float64, **kwargs)
        ours_eval = model.apply(variables, x, train=False)
        ours_train, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
    nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        theirs_eval = theirs(nchw).numpy()
        theirs_train = theirs.train()(nchw).numpy()
    assert _max_rel_err(ours_eval, theirs_eval) <= 1e-10
    assert _max_rel_err(ours_train, theirs_train) <= 1e-10
    expected = to_flax(name, _state_dict(theirs), arch)['batch_stats']
    for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
        assert _max_rel_err(a, b) <= 1e-10
    back = to_timm(name, variables, arch)
    fresh = timm.create_model(name, num_classes=4, **arch)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    assert all(np.array_equal(back[k], v) for k, v in state_dict.items() if not k.endswith('num_batches_tracked'))


def test_greyscale_is_pil_convert_l():
    """--in-chans 1: timm reads every image with PIL's convert('L'); ours on the device gives the same bytes."""
    rgb = np.random.RandomState(0).randint(0, 256, (3, 17, 19, 3), dtype=np.uint8)
    rgb[0, 0, :4] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [1, 2, 3]]
    ours = np.asarray(greyscale(jnp.asarray(rgb)))
    theirs = np.stack([np.asarray(Image.fromarray(image).convert('L')) for image in rgb])[..., None]
    np.testing.assert_array_equal(ours, theirs)
