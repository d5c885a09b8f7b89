"""JAX-only model tests: names, shapes, init, torch BatchNorm semantics, padding, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_ema.convert import to_flax, to_timm
from jax_ema.errors import UserError
from jax_ema.models import MODEL_NAMES, create_model
from jax_ema.models.layers import BatchNorm, conv, max_pool

NUM_CLASSES = 10


@pytest.fixture(scope='module')
def resnet18():
    """(model, variables, jitted eval apply, jitted train apply) for resnet18 at 32x32."""
    model = create_model('resnet18', NUM_CLASSES)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    eval_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    train_fn = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
    return model, variables, eval_fn, train_fn


def _images(n, size=32, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, size, size, 3), jnp.float32)


def test_model_names():
    assert MODEL_NAMES == (
        'resnet18',
        'resnet34',
        'resnet50',
        'resnet101',
        'resnet152',
        'efficientnet_b0',
        'efficientnet_b1',
        'efficientnet_b2',
        'efficientnet_b3',
        'tf_efficientnet_b0',
        'mnasnet_100',
        'mobilenetv3_large_100',
        'mobilenetv3_small_100',
    )


def test_unknown_model_name_lists_known_names():
    with pytest.raises(UserError, match='resnet18.*resnet152') as info:
        create_model('resnet19', NUM_CLASSES)
    assert 'resnet19' in str(info.value)


def test_bad_num_classes():
    with pytest.raises(UserError, match='num_classes'):
        create_model('resnet18', 0)


def test_logits_shape_and_dtype(resnet18):
    _, variables, eval_fn, _ = resnet18
    logits = eval_fn(variables, _images(2))
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize('name', [n for n in MODEL_NAMES if n.startswith('resnet')])
def test_variable_tree_mirrors_timm_modules(name):
    model = create_model(name, NUM_CLASSES)
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, train=False), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    )
    params, stats = shapes['params'], shapes['batch_stats']
    blocks = [k for k in params if k.startswith('layer')]
    depth = {
        'resnet18': (2, 2, 2, 2),
        'resnet34': (3, 4, 6, 3),
        'resnet50': (3, 4, 6, 3),
        'resnet101': (3, 4, 23, 3),
        'resnet152': (3, 8, 36, 3),
    }[name]
    assert sorted(blocks) == sorted(f'layer{s + 1}_{b}' for s, n in enumerate(depth) for b in range(n))
    assert set(params) == set(blocks) | {'conv1', 'bn1', 'fc'}
    assert params['conv1']['kernel'].shape == (7, 7, 3, 64)
    expansion = 1 if name in ('resnet18', 'resnet34') else 4
    assert params['fc']['kernel'].shape == (512 * expansion, NUM_CLASSES)
    # downsample only where timm has one: first block of a stage when stride or width changes
    with_down = {k for k in blocks if 'downsample_conv' in params[k]}
    expected = {'layer2_0', 'layer3_0', 'layer4_0'} | ({'layer1_0'} if expansion == 4 else set())
    assert with_down == expected
    for k in with_down:
        assert set(params[k]['downsample_bn']) == {'scale', 'bias'}
        assert set(stats[k]['downsample_bn']) == {'mean', 'var'}
    last_bn = 'bn2' if expansion == 1 else 'bn3'
    assert last_bn in params['layer1_0'] and 'bias' not in params['layer1_0']['conv1']


def test_init_matches_timm_defaults(resnet18):
    _, variables, _, _ = resnet18
    params, stats = variables['params'], variables['batch_stats']
    for block in (k for k in params if k.startswith('layer')):
        np.testing.assert_array_equal(params[block]['bn2']['scale'], 0.0)  # zero_init_last
        np.testing.assert_array_equal(params[block]['bn1']['scale'], 1.0)
        np.testing.assert_array_equal(params[block]['bn2']['bias'], 0.0)
        np.testing.assert_array_equal(stats[block]['bn1']['mean'], 0.0)
        np.testing.assert_array_equal(stats[block]['bn1']['var'], 1.0)
    np.testing.assert_array_equal(params['bn1']['scale'], 1.0)
    # kaiming normal, fan_out, relu gain: std = sqrt(2 / (3 * 3 * 512))
    kernel = np.asarray(params['layer4_0']['conv2']['kernel'])
    np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (3 * 3 * 512)), rtol=0.02)
    assert abs(kernel.mean()) < 0.01 * kernel.std()
    # torch Linear default: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1 / np.sqrt(512)
    for leaf in (params['fc']['kernel'], params['fc']['bias']):
        leaf = np.asarray(leaf)
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.5 * bound


def test_batchnorm_follows_torch_formulas():
    x = np.asarray(_images(4, size=5, seed=1)) * 3 + 1
    rng = np.random.RandomState(0)
    variables = {
        'params': {'scale': rng.uniform(0.5, 1.5, 3).astype(np.float32), 'bias': rng.randn(3).astype(np.float32)},
        'batch_stats': {'mean': rng.randn(3).astype(np.float32), 'var': rng.uniform(0.5, 1.5, 3).astype(np.float32)},
    }
    bn = BatchNorm()
    y, new = bn.apply(variables, x, train=True, mutable=['batch_stats'])
    x64 = x.astype(np.float64).reshape(-1, 3)
    scale, bias = variables['params']['scale'], variables['params']['bias']
    mean0, var0 = variables['batch_stats']['mean'], variables['batch_stats']['var']
    expected = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5) * scale + bias
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 3), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new['batch_stats']['mean'], 0.9 * mean0 + 0.1 * x64.mean(0), rtol=1e-5)
    np.testing.assert_allclose(new['batch_stats']['var'], 0.9 * var0 + 0.1 * x64.var(0, ddof=1), rtol=1e-5)
    y_eval = bn.apply(variables, x, train=False)
    expected_eval = (x64 - mean0) / np.sqrt(var0 + 1e-5) * scale + bias
    np.testing.assert_allclose(np.asarray(y_eval).reshape(-1, 3), expected_eval, rtol=1e-5, atol=1e-5)


def test_batchnorm_train_needs_more_than_one_value_per_channel():
    bn = BatchNorm()
    x = jnp.ones((1, 1, 1, 3))
    variables = bn.init(jax.random.PRNGKey(0), x, train=False)
    with pytest.raises(UserError, match='more than 1 value per channel'):
        bn.apply(variables, x, train=True, mutable=['batch_stats'])


def test_train_mode_updates_every_batch_stat_and_no_param(resnet18):
    _, variables, eval_fn, train_fn = resnet18
    x = _images(4)
    logits, updates = train_fn(variables, x)
    assert set(updates) == {'batch_stats'} and logits.dtype == jnp.float32
    old = jax.tree_util.tree_leaves_with_path(variables['batch_stats'])
    new = jax.tree_util.tree_leaves(updates['batch_stats'])
    assert len(old) == len(new)
    for (path, a), b in zip(old, new):
        assert b.dtype == jnp.float32
        assert not np.allclose(a, b), jax.tree_util.keystr(path)
    # train mode normalises with batch statistics, so it differs from eval mode at init
    assert not np.allclose(logits, eval_fn(variables, x), atol=1e-3)


def test_eval_mode_is_deterministic_and_per_example(resnet18):
    _, variables, eval_fn, train_fn = resnet18
    _, updates = train_fn(variables, _images(4, seed=3))
    variables = {'params': variables['params'], 'batch_stats': updates['batch_stats']}
    x = _images(3)
    batch = np.asarray(eval_fn(variables, x))
    np.testing.assert_array_equal(batch, np.asarray(eval_fn(variables, x)))
    single = np.asarray(eval_fn(variables, x[1:2]))
    np.testing.assert_allclose(single[0], batch[1], rtol=1e-5, atol=1e-5 * np.abs(batch).max())


def test_bfloat16_compute_keeps_float32_params_stats_and_logits(resnet18):
    _, variables_f32, eval_fn, _ = resnet18
    model = create_model('resnet18', NUM_CLASSES, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, train=False), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    )
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}

    x = _images(4)
    train_logits, updates = model.apply(variables_f32, x, train=True, mutable=['batch_stats'])
    logits = model.apply(variables_f32, x, train=False)
    assert train_logits.dtype == jnp.float32 and logits.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(updates)} == {jnp.dtype(jnp.float32)}
    reference = np.asarray(eval_fn(variables_f32, x))
    assert np.abs(np.asarray(logits) - reference).max() <= 0.05 * np.abs(reference).max()
    assert not np.array_equal(np.asarray(logits), reference)  # really computed in bfloat16


def test_conv_pads_symmetrically_like_torch():
    layer = conv(1, 3, 2, dtype=jnp.float32, name='c')
    x = jnp.ones((1, 4, 4, 1))
    variables = {'params': {'kernel': jnp.ones((3, 3, 1, 1))}}
    y = np.asarray(layer.apply(variables, x))[0, :, :, 0]
    # torch Conv2d(3, stride=2, padding=1) on 4x4 ones: windows at rows/cols -1..1 and 1..3
    np.testing.assert_array_equal(y, [[4.0, 6.0], [6.0, 9.0]])


def test_max_pool_pads_with_minus_inf():
    x = -1.0 - jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
    y = np.asarray(max_pool(x, 3, 2, 1))[0, :, :, 0]
    xn = np.asarray(x)[0, :, :, 0]
    expected = [
        [xn[max(0, 2 * i - 1) : 2 * i + 2, max(0, 2 * j - 1) : 2 * j + 2].max() for j in range(2)] for i in range(2)
    ]
    np.testing.assert_array_equal(y, expected)
    assert (y < 0).all()


def test_timm_names_round_trip_without_torch(resnet18):
    _, variables, _, _ = resnet18
    state_dict = to_timm('resnet18', variables)
    assert state_dict['layer1.0.conv1.weight'].shape == (64, 64, 3, 3)
    assert state_dict['layer2.0.downsample.0.weight'].shape == (128, 64, 1, 1)
    assert state_dict['layer2.0.downsample.1.running_var'].shape == (128,)
    assert state_dict['fc.weight'].shape == (NUM_CLASSES, 512)
    assert state_dict['bn1.num_batches_tracked'].dtype == np.int64
    np.testing.assert_array_equal(
        state_dict['conv1.weight'][5, 2, 1, 4], variables['params']['conv1']['kernel'][1, 4, 2, 5]
    )
    back = to_flax('resnet18', state_dict)
    flat_a = jax.tree_util.tree_leaves_with_path(variables)
    flat_b = jax.tree_util.tree_leaves_with_path(back)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (_, a), (_, b) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(a, b)
