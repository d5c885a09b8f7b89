"""The model options' plumbing (JAX side; timm's numbers are in parity_tests/test_model_options.py,
test_resnet_regularisation.py and test_layer_decay.py): flags -> create_model kwargs, refusals, shapes."""

import jax
import numpy as np
import pytest

from jax_ema import layer_decay
from jax_ema.config import parse_args
from jax_ema.convert import to_flax, to_timm
from jax_ema.errors import UserError
from jax_ema.models import arch_kwargs, create_model, model_kwargs
from jax_ema.models.layers import pool_type


def _shapes(name, **kwargs):
    model = create_model(name, 3, **kwargs)
    x = jax.ShapeDtypeStruct((1, 32, 32, model.in_chans), np.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)


def test_flags_become_timm_create_model_kwargs():
    argv = '--gp fastcatavgmax --in-chans 1 --mean 0.5 --std 0.5 --drop-path 0.1 --drop-block 0.2 --drop 0.3'
    kwargs = model_kwargs(parse_args(argv.split()))
    assert kwargs == dict(
        drop_rate=0.3, drop_path_rate=0.1, drop_block_rate=0.2, global_pool='fastcatavgmax', in_chans=1
    )
    assert arch_kwargs(kwargs) == dict(global_pool='fastcatavgmax', in_chans=1)
    assert model_kwargs(parse_args([])) == {}


@pytest.mark.parametrize(
    'name, kwargs, words',
    [
        ('resnet18', dict(bn_eps=1e-3), 'resnet18 does not take --bn-eps'),
        ('resnet18', dict(bn_momentum=0.01), 'resnet18 does not take --bn-momentum'),
        ('efficientnet_b0', dict(drop_block_rate=0.1), 'efficientnet_b0 does not take --drop-block'),
        ('resnet18', dict(global_pool='mean'), "--gp 'mean' is not a global pool"),
        ('resnet18', dict(drop_block_rate=1.0), 'drop_block_rate (--drop-block) must be a number in [0, 1)'),
        ('mobilenetv3_small_100', dict(bn_eps=0.0), 'bn_eps (--bn-eps) must be > 0'),
        ('resnet18', dict(in_chans=0), 'in_chans (--in-chans) must be a positive integer'),
    ],
)
def test_create_model_refuses_in_one_line(name, kwargs, words):
    with pytest.raises(UserError, match=None) as err:
        create_model(name, 3, **kwargs)
    assert words in str(err.value) and '\n' not in str(err.value)


def test_pool_names_as_timm():
    assert [pool_type(p) for p in (None, 'fast', 'FastAvgMax', 'max', 'catavgmax')] == [
        'avg',
        'avg',
        'avgmax',
        'max',
        'catavgmax',
    ]


@pytest.mark.parametrize(
    'name, head',
    [
        ('resnet18', ('fc', 'kernel')),
        pytest.param('efficientnet_b0', ('classifier', 'kernel'), marks=pytest.mark.slow),  # ~8 s of tracing
        pytest.param('mobilenetv3_small_100', None, marks=pytest.mark.slow),
    ],
)
def test_catavgmax_doubles_the_head_input_and_in_chans_the_stem(name, head):
    plain, changed = _shapes(name)['params'], _shapes(name, global_pool='catavgmax', in_chans=1)['params']
    stem = 'conv1' if name.startswith('resnet') else 'conv_stem'
    assert plain[stem]['kernel'].shape[2] == 3 and changed[stem]['kernel'].shape[2] == 1
    first, leaf = head or ('conv_head', 'kernel')
    axis = 0 if head else 2  # Dense (in, out); MobileNetV3's conv_head takes the pooled features
    assert changed[first][leaf].shape[axis] == 2 * plain[first][leaf].shape[axis]


def test_converters_need_the_arch_kwargs():
    arch = dict(global_pool='catavgmax', in_chans=1)
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), _shapes('resnet18', **arch))
    state_dict = to_timm('resnet18', variables, arch)
    assert state_dict['conv1.weight'].shape == (64, 1, 7, 7) and state_dict['fc.weight'].shape == (3, 1024)
    assert jax.tree.structure(to_flax('resnet18', state_dict, arch)) == jax.tree.structure(variables)
    with pytest.raises(UserError, match='shape mismatch'):
        to_flax('resnet18', state_dict)  # without them: a plain resnet18, whose stem takes 3 channels


def test_layer_ids_follow_group_with_matcher():
    """Ordinals sort numerically (block 10 after block 9); a MATCH_PREV_GROUP suffix joins the group before it;
    unmatched names come last."""
    matcher = dict(stem=r'^stem', blocks=[(r'^b\.(\d+)', None), (r'^tail', (99999,))])
    names = ['head.w', 'b.10.w', 'stem.w', 'b.9.w', 'tail.w', 'b.9.v']
    assert layer_decay.layer_ids(names, matcher) == {
        'stem.w': 0,
        'b.9.w': 1,
        'b.9.v': 1,
        'b.10.w': 2,
        'tail.w': 2,
        'head.w': 3,
    }


def test_layer_decay_flags_are_checked():
    with pytest.raises(UserError, match='--layer-decay must be positive'):
        parse_args(['--layer-decay', '0'])
    grey = parse_args(['--in-chans', '1', '--mean', '0.5', '--std', '0.5', '--pretrained'])  # the stem is adapted
    assert (grey.in_chans, grey.pretrained) == (1, True)
